// Package kpapi serves the crk key service over HTTP with the Key Protect API v2: the paths,
// JSON bodies, status codes, error envelope and reason codes that the official
// keyprotect-go-client (v0.15.1) sends and expects, so storage prototypes can test their Key
// Protect code offline against real key semantics.
//
// Every request needs a bearer token and a bluemix-instance header naming a service instance;
// instances are isolated tenants, each with its own crk store. API keys are exchanged for
// short-lived tokens at POST /identity/token (and /oidc/token), as IAM does. The crk core never
// imports net/http; this package is the only HTTP layer.
package kpapi
