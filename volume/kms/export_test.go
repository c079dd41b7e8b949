package kms

// LocalError is localError, for tests that meet a refusal the in-process service gives
// outside the volume.KeyService methods (rotate, delete, policies, ...).
var LocalError = localError

// ExpireBatchAbsence forgets that r's service answered it has no batch calls, as
// batchRetryAfter passing would.
func ExpireBatchAbsence(r *Remote) {
	r.noRewrapBatch.until.Store(0)
	r.noRegBatch.until.Store(0)
}
