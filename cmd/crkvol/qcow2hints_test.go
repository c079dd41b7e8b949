package main

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"crkvol/qcow2"
)

// TestQcow2Hints checks that the hint follows the refused feature, not words in the message:
// a path containing "dirty" or "backing file" must not pick those hints.
func TestQcow2Hints(t *testing.T) {
	refuse := func(f qcow2.Feature, detail string) error {
		return fmt.Errorf("import /srv/dirty/backing file/img.qcow2: %w", &qcow2.UnsupportedError{Feature: f, Detail: detail})
	}
	cases := []struct {
		name string
		err  error
		want string // a substring of the only hint; "" for none
	}{
		{"backing file", refuse(qcow2.FeatureBackingFile, `backing file "base.img"`), "self-contained copy"},
		{"dirty", refuse(qcow2.FeatureDirty, "dirty: refcounts may be stale"), "qemu-img check -r all"},
		{"extended L2", refuse(qcow2.FeatureExtendedL2, "extended L2 entries"), "plain qcow2"},
		{"external data file", refuse(qcow2.FeatureExternalDataFile, "external data file"), "plain qcow2"},
		{"legacy AES", refuse(qcow2.FeatureLegacyAES, "legacy AES encryption"), "re-encrypt it with LUKS"},
		{"version: no hint", refuse(qcow2.FeatureVersion, "version 4"), ""},
		{"malformed naming dirty: no hint", fmt.Errorf("/srv/dirty/img.qcow2: %w: dirty backing file", qcow2.ErrFormat), ""},
		{"bare ErrUnsupported naming dirty: no hint", fmt.Errorf("%w: dirty", qcow2.ErrUnsupported), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := qcow2Hints(tc.err)
			if !errors.Is(got, tc.err) {
				t.Fatalf("hinted error lost the original: %v", got)
			}
			hints := hintsOf(got)
			if tc.want == "" {
				if len(hints) != 0 {
					t.Fatalf("hints %q, want none", hints)
				}
				return
			}
			if len(hints) == 0 || !strings.Contains(hints[0], tc.want) {
				t.Fatalf("hints %q, want the first naming %q", hints, tc.want)
			}
		})
	}
}
