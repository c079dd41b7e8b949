package kms

// LocalError is localError, for tests that meet a refusal the in-process service gives
// outside the volume.KeyService methods (rotate, delete, policies, ...).
var LocalError = localError
