package ident

import (
	"errors"
	"fmt"
	"strings"
)

// The fixed parts of crkvol's own CRNs.
const (
	// CName is the cloud name of every CRN crkvol makes: it is not IBM Cloud ("bluemix").
	CName = "local"
	// DefaultLocation is the location (region) of crkvol's CRNs unless configured.
	DefaultLocation = "local"
	// DefaultAccount is the account of crkvol's CRNs unless configured; the scope is
	// "a/" followed by it.
	DefaultAccount = "crkvol"
	// MaxCRNLen is the longest CRN accepted, as Key Protect's registrations do.
	MaxCRNLen = 512
)

// ErrInvalidCRN is wrapped by every error of [ParseCRN].
var ErrInvalidCRN = errors.New("not a CRN")

// CRN is a cloud resource name split into its segments. The zero value of a segment is an
// empty segment, which is allowed everywhere but in CType, Service and ResourceType.
type CRN struct {
	CName        string // cloud name, such as "bluemix", or CName
	CType        string // "public", "dedicated" or "local"
	Service      string // service name, such as "kms" or "is"
	Location     string // region or zone
	Scope        string // "a/" + account id, or empty
	Instance     string // service instance id
	ResourceType string // such as "key" or "volume"
	Resource     string // resource id
}

// KeyCRN returns the CRN of a key in a Key Protect-style service instance.
func KeyCRN(location, account, instance, keyID string) CRN {
	return CRN{CName: CName, CType: "public", Service: "kms", Location: location, Scope: "a/" + account,
		Instance: instance, ResourceType: "key", Resource: keyID}
}

// VolumeCRN returns the CRN crkvol gives the volume whose LUKS2 header has UUID uuid.
func VolumeCRN(uuid string) CRN {
	return CRN{CName: CName, CType: "public", Service: "is", Location: DefaultLocation, Scope: "a/" + DefaultAccount,
		ResourceType: "volume", Resource: uuid}
}

// ImageCRN returns the CRN crkvol gives the image catalog entry with id uuid (random, made
// when the image is imported): the VPC shape of a custom image, resource type "image".
func ImageCRN(uuid string) CRN {
	return CRN{CName: CName, CType: "public", Service: "is", Location: DefaultLocation, Scope: "a/" + DefaultAccount,
		ResourceType: "image", Resource: uuid}
}

// IsImageCRN reports whether crn is the CRN of a catalog image (resource type "image", as
// [ImageCRN] makes).
func IsImageCRN(crn string) bool {
	c, err := ParseCRN(crn)
	return err == nil && c.ResourceType == "image"
}

// String returns the CRN as text.
func (c CRN) String() string {
	return strings.Join([]string{"crn", "v1", c.CName, c.CType, c.Service, c.Location, c.Scope, c.Instance, c.ResourceType, c.Resource}, ":")
}

// ParseCRN splits a CRN into its segments. It must start with "crn:v1:", have exactly ten
// segments (the resource, the last, may not contain ':'), name a ctype, service and resource
// type, be at most MaxCRNLen bytes and hold no control character.
func ParseCRN(s string) (CRN, error) {
	if len(s) > MaxCRNLen {
		return CRN{}, fmt.Errorf("%w: %d bytes, at most %d allowed", ErrInvalidCRN, len(s), MaxCRNLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return CRN{}, fmt.Errorf("%w: control character at byte %d", ErrInvalidCRN, i)
		}
	}
	f := strings.Split(s, ":")
	if len(f) != 10 || f[0] != "crn" || f[1] != "v1" {
		return CRN{}, fmt.Errorf("%w: want crn:v1: and ten colon-separated segments", ErrInvalidCRN)
	}
	c := CRN{CName: f[2], CType: f[3], Service: f[4], Location: f[5], Scope: f[6], Instance: f[7], ResourceType: f[8], Resource: f[9]}
	if c.CType == "" || c.Service == "" || c.ResourceType == "" {
		return CRN{}, fmt.Errorf("%w: empty ctype, service or resource type", ErrInvalidCRN)
	}
	return c, nil
}
