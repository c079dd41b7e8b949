// Package ident makes and checks the identifiers crkvol uses: UUIDs (LUKS2 header UUIDs, key,
// version and instance ids) and CRNs (cloud resource names of keys and volumes). It is a leaf:
// it imports nothing of crkvol's, so keyslot, crk and volume can all use it.
//
// # UUIDs
//
// [NewUUID] makes random (version 4) UUIDs and [FormatUUID] writes them in the canonical
// 8-4-4-4-12 form with lower-case hex digits, as RFC 9562, LUKS2 and cryptsetup do.
// [ParseUUID] reads the canonical form only — 36 characters, no "urn:uuid:" prefix, no braces
// — but accepts hex digits of either case, as RFC 9562 asks of readers and as cryptsetup's
// --uuid does (it stores what it read in lower case: [CanonicalUUID] does the same).
//
// A UUID read from an existing LUKS2 header is not this package's to judge: cryptsetup opens
// a header whose UUID is upper case and reports it verbatim, and the volume layer binds the
// header UUID, byte for byte, into the wrapped passphrase. Readers of headers therefore keep
// the UUID exactly as stored.
//
// # CRNs
//
// A [CRN] has the ten colon-separated segments of IBM Cloud resource names:
//
//	crn:v1:<cname>:<ctype>:<service>:<location>:<scope>:<instance>:<resource type>:<resource>
//
// crkvol's own CRNs use the cloud name [CName] ("local") and, unless configured otherwise,
// the location [DefaultLocation] and the account [DefaultAccount].
package ident
