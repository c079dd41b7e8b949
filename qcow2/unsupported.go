package qcow2

import "fmt"

// Feature names a qcow2 feature this package refuses; an [UnsupportedError] carries one so
// callers can tell the refusals apart without reading the message.
type Feature string

// The features [Open] and the readers refuse.
const (
	FeatureVersion             Feature = "version"                      // a qcow2 version other than 2 or 3
	FeatureBackingFile         Feature = "backing file"                 // the image depends on a backing image
	FeatureExternalDataFile    Feature = "external data file"           // the guest data is in another file
	FeatureExtendedL2          Feature = "extended L2 entries"          // subclusters
	FeatureDirty               Feature = "dirty"                        // lazy refcounts left stale
	FeatureUnknownIncompatible Feature = "unknown incompatible feature" // an incompatible feature bit this package does not know
	FeatureCompressionType     Feature = "compression type"             // a compression type other than zlib
	FeatureLegacyAES           Feature = "legacy AES encryption"        // crypt_method 1
	FeatureCryptMethod         Feature = "crypt method"                 // an unknown crypt_method
	FeatureEncryptedCompressed Feature = "compressed cluster in an encrypted image"
)

// UnsupportedError is the error about a well-formed image that uses a feature this package
// does not read. It wraps [ErrUnsupported]; use errors.As to learn the [Feature].
type UnsupportedError struct {
	Feature Feature // which feature
	Detail  string  // the message after "qcow2: unsupported feature: ", naming the feature
}

// Error returns "qcow2: unsupported feature: " followed by the detail.
func (e *UnsupportedError) Error() string { return ErrUnsupported.Error() + ": " + e.Detail }

// Unwrap returns [ErrUnsupported].
func (e *UnsupportedError) Unwrap() error { return ErrUnsupported }

// unsupported returns an *UnsupportedError for feature f with a formatted detail.
func unsupported(f Feature, format string, args ...any) error {
	return &UnsupportedError{Feature: f, Detail: fmt.Sprintf(format, args...)}
}
