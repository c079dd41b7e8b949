package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/crk"
	"crkvol/internal/ident"
	"crkvol/volume"
)

// TestReportCountsImagesApart: a rewrap pass that looked at catalog images prints the volume
// line as before (its failures only) and an image line of its own; a pass without images
// prints the volume line alone; a failed image is counted and named as an image.
func TestReportCountsImagesApart(t *testing.T) {
	t.Parallel()
	img := ident.ImageCRN("0b7c9a4e-8a7a-4b1b-9d7e-2f57a1c0b001").String()
	vol := ident.VolumeCRN("0b7c9a4e-8a7a-4b1b-9d7e-2f57a1c0b002").String()
	tests := []struct {
		name  string
		rep   volume.Report
		lines []string
		err   string
		hint  string
	}{
		{"volumes only", volume.Report{KeyID: "K", NewVersion: "V", Volumes: 3, Rewrapped: 3},
			[]string{"rewrapped 3 of 3 volumes to version V (already current 0, failed 0, 0 bytes of headers written, 0 bytes of data re-encrypted)"}, "", ""},
		{"volumes and images", volume.Report{KeyID: "K", NewVersion: "V", Volumes: 3, Rewrapped: 3, Images: 2, ImagesRewrapped: 1, ImagesAlreadyCurrent: 1},
			[]string{"rewrapped 3 of 3 volumes to version V (already current 0, failed 0, 0 bytes of headers written, 0 bytes of data re-encrypted)",
				"rewrapped 1 of 2 images to version V (already current 1, failed 0; their WDEKs, in the catalog: the image files are not written)"}, "", ""},
		{"images registered again", volume.Report{KeyID: "K", NewVersion: "V", Images: 1, ImagesRewrapped: 1, ImagesReregistered: 1},
			[]string{"rewrapped 0 of 0 volumes to version V (already current 0, failed 0, 0 bytes of headers written, 0 bytes of data re-encrypted)",
				"rewrapped 1 of 1 images to version V (already current 0, failed 0, registered again 1 (their registration was missing); their WDEKs, in the catalog: the image files are not written)"}, "", ""},
		{"an image failed", volume.Report{KeyID: "K", NewVersion: "V", Volumes: 1, Rewrapped: 1, Images: 2, ImagesRewrapped: 1,
			Failed: map[string]error{img: errors.Join(crk.ErrKeySuspended, volume.ErrKeyRefused)}},
			[]string{"rewrapped 1 of 1 volumes to version V (already current 0, failed 0, 0 bytes of headers written, 0 bytes of data re-encrypted)",
				"rewrapped 1 of 2 images to version V (already current 0, failed 1; their WDEKs, in the catalog: the image files are not written)",
				"  failed " + img + ": key is suspended\nkey service refused the request"},
			"0 of 1 volumes and 1 of 2 images of key K were not rewrapped (they keep their old, working wrapping): 1 key suspended",
			"1 image: key suspended (image " + img + "): enable the key with crkvol key enable K"},
		{"a volume and an image failed", volume.Report{KeyID: "K", NewVersion: "V", Volumes: 1, Images: 1,
			Failed: map[string]error{img: errors.New("connection refused"), vol: errors.New("connection refused")}},
			nil, "1 of 1 volumes and 1 of 1 images of key K were not rewrapped", "2 volumes and images: not reached"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			a := &app{stdout: &out}
			require.NoError(t, a.printReport(&tt.rep))
			if tt.lines != nil {
				assert.Equal(t, strings.Join(tt.lines, "\n")+"\n", out.String())
			}
			err := rewrapFailed("", nil, &tt.rep)
			if tt.err == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.err)
			assert.Contains(t, strings.Join(hintsOf(err), "\n"), tt.hint)
		})
	}
}

// TestRewrapBarsCountImages: the bar of a pass with catalog images counts the volumes and the
// images, and finishes when both are done.
func TestRewrapBarsCountImages(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	b := &rewrapBars{w: &gatedWriter{w: &out}, min: 3}
	for _, p := range []volume.RewrapProgress{{}, {Done: 2, Rewrapped: 2}, {Done: 4, Rewrapped: 2, ImagesRewrapped: 2}} {
		p.KeyID, p.Volumes, p.Images = "K", 2, 2
		b.update(p)
		if p.Done == 2 {
			assert.NotNil(t, b.bar, "not finished with the volumes alone")
		}
	}
	assert.Contains(t, out.String(), "key K: rewrapped 2 volumes, 2 images, failed 0")
	assert.Contains(t, out.String(), "4/4")
	assert.Nil(t, b.bar, "finished")
}

// TestImageCommandsOnNewState: on a state directory that does not exist, image list gives
// the empty answer and image show says the image is not found, with the command that lists
// the catalog; neither creates anything.
func TestImageCommandsOnNewState(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	env := map[string]string{"CRKVOL_STATE": state, "CRKVOL_NOW": "2026-06-01T12:00:00Z"}
	runCLI := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(args, strings.NewReader(""), &stdout, &stderr, func(k string) string { return env[k] })
		return code, stdout.String(), stderr.String()
	}
	code, out, errOut := runCLI("image", "list")
	assert.Equal(t, 0, code, errOut)
	assert.Equal(t, "NAME  KEY ID  KEY VERSION  KEY STATE  SIZE  CREATED  STATUS  PATH\n", out)
	code, out, _ = runCLI("--json", "image", "list")
	assert.Equal(t, 0, code)
	assert.Equal(t, "[]\n", out)
	code, _, errOut = runCLI("image", "show", "nosuch")
	assert.Equal(t, 1, code)
	assert.Equal(t, "crkvol: image show: image not found: nosuch\ncrkvol: hint: crkvol image list shows the catalog's images\n", errOut)
	_, err := os.Stat(state)
	assert.True(t, os.IsNotExist(err), "image list or show created the state directory")
}

// TestImagePathsPrintable: a path holding terminal control sequences is printed escaped by
// image show (and list, import, delete, verify, which print it the same way).
func TestImagePathsPrintable(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	a := &app{stdout: &out}
	require.NoError(t, a.printImage(volume.ImageEntry{Name: "img", Path: "/tmp/a\x1b[2J\rforged\nline\u202e.qcow2"}))
	assert.NotContains(t, out.String(), "\x1b")
	assert.NotContains(t, out.String(), "\r")
	assert.NotContains(t, out.String(), "\u202e")
	assert.Contains(t, out.String(), "\nPath         "+`/tmp/a\x1b[2J\rforged\nline\u202e.qcow2`+"\n")
	assert.Equal(t, `/tmp/a\x1b[2J`, shownPath("/tmp/a\x1b[2J"))
}
