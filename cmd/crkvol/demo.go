package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"crkvol/volume"
)

func (a *app) demoCommand() *cobra.Command {
	var dir, kept string
	cmd := &cobra.Command{Use: "demo", Short: "Create a key and three volumes, rotate the key, and verify nothing was lost", Args: args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				d, err := os.MkdirTemp("", "crkvol-demo-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(d)
				dir = d
			} else if err := checkDemoDir(dir); err != nil {
				return err
			} else if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			} else {
				dir = absPath(dir)
				kept = dir
			}
			a.stateDir = filepath.Join(dir, "state")
			a.local = true
			res := &demoJSON{Dir: kept, Volumes: []demoVolumeJSON{}}
			err := a.demo(cmd.Context(), dir, res)
			if a.asJSON && res.KeyID != "" {
				if eerr := a.emit(res); eerr != nil && err == nil {
					err = eerr
				}
			}
			return err
		}}
	cmd.Flags().StringVar(&dir, "dir", "", "directory for the demo's state and images, new or without them (default: a temporary one, removed after)")
	return cmd
}

// demoVolumes is the number of volumes the demo creates.
const demoVolumes = 3

// demoVolumeName is the file name of the demo's volume i (from 0).
func demoVolumeName(i int) string { return fmt.Sprintf("volume-%d.img", i+1) }

// checkDemoDir refuses a --dir that already holds any of the files a demo creates (its
// state directory, its volumes): a demo there would create a root key in that state before
// failing on the first volume. It creates, changes and removes nothing; a directory that
// does not exist yet, or holds only other files, passes.
func checkDemoDir(dir string) error {
	names := []string{"state"}
	for i := range demoVolumes {
		names = append(names, demoVolumeName(i))
	}
	var found []string
	for _, name := range names {
		_, err := os.Lstat(filepath.Join(dir, name))
		switch {
		case err == nil:
			found = append(found, name)
		case errors.Is(err, fs.ErrNotExist):
		default:
			return fmt.Errorf("checking --dir %s: %w", dir, err)
		}
	}
	if len(found) > 0 {
		return fmt.Errorf("--dir %s already holds a demo's files (%s); nothing was created: pass an empty or new directory", dir, strings.Join(found, ", "))
	}
	return nil
}

// demoJSON is `demo --json`: what the tour did and found.
type demoJSON struct {
	// Dir is the demo's directory, if kept (--dir).
	Dir                  string           `json:"dir,omitempty"`
	KeyID                string           `json:"keyId"`
	OldVersion           string           `json:"oldVersion"`
	NewVersion           string           `json:"newVersion,omitempty"`
	Volumes              []demoVolumeJSON `json:"volumes"`
	Rewrapped            int              `json:"rewrapped"`
	HeaderBytesWritten   int64            `json:"headerBytesWritten"`
	DataBytesReencrypted int64            `json:"dataBytesReencrypted"`
	ChecksFailed         int              `json:"checksFailed"`
	Passed               bool             `json:"passed"`
	Seconds              float64          `json:"seconds"`
}

// demoVolumeJSON is one volume of the demo.
type demoVolumeJSON struct {
	// Path is the image's path while the demo runs (a temporary directory is removed after).
	Path              string `json:"path"`
	UUID              string `json:"uuid"`
	Size              int64  `json:"size"`
	BytesWritten      int    `json:"bytesWritten"`
	OldVersion        string `json:"oldVersion"`
	NewVersion        string `json:"newVersion,omitempty"`
	DataAreaUnchanged bool   `json:"dataAreaUnchanged"`
	Verified          bool   `json:"verified"`
}

// demo runs the tour, filling res; every check that fails makes it return an error. With
// --json the tour's lines are not printed: the caller prints res.
func (a *app) demo(ctx context.Context, dir string, res *demoJSON) error {
	start := time.Now()
	defer func() { res.Seconds = time.Since(start).Seconds() }()
	say := func(format string, args ...any) {
		if !a.asJSON {
			fmt.Fprintf(a.stdout, format+"\n", args...)
		}
	}
	if err := a.open(ctx); err != nil {
		return err
	}
	key, err := a.svc.CreateRootKey(ctx, "demo-root-key")
	if err != nil {
		return fmt.Errorf("creating a root key: %w", err)
	}
	res.KeyID, res.OldVersion = key.ID, key.KeyVersion.ID
	say("1. created root key %s (version %s) in %s", key.ID, short(key.KeyVersion.ID), a.stateDir)

	type vol struct {
		path string
		info *volume.Info
		data []byte
		sum  [32]byte
	}
	var vols []vol
	for i := range demoVolumes {
		path := filepath.Join(dir, demoVolumeName(i))
		info, err := a.mgr.Create(ctx, path, volume.CreateOptions{KeyID: key.ID, Size: 16 << 20, KeyslotsSize: 1 << 20})
		if err != nil {
			return err
		}
		data := bytes.Repeat([]byte(fmt.Sprintf("crkvol demo file %d: data encrypted with aes-xts-plain64 under a CRK-protected key.\n", i+1)), 2000)
		v, err := a.mgr.Open(ctx, path)
		if err != nil {
			return err
		}
		if _, err := v.WriteAt(data, 4096); err != nil {
			v.Close()
			return fmt.Errorf("writing %s: %w", path, err)
		}
		if err := v.Close(); err != nil {
			return err
		}
		sum, err := dataAreaSum(path, info.DataOffset)
		if err != nil {
			return err
		}
		vols = append(vols, vol{path: path, info: info, data: data, sum: sum})
		res.Volumes = append(res.Volumes, demoVolumeJSON{Path: path, UUID: info.UUID, Size: info.Size, BytesWritten: len(data), OldVersion: info.KeyVersion})
		say("2. created %s: %s, LUKS2 UUID %s, wrote %d bytes", filepath.Base(path), volume.FormatSize(info.Size), info.UUID, len(data))
	}

	rotated, err := a.svc.RotateKey(ctx, key.ID, nil)
	if err != nil {
		return fmt.Errorf("rotating: %w", err)
	}
	res.NewVersion = rotated.KeyVersion.ID
	say("3. rotated the root key: version %s -> %s", short(key.KeyVersion.ID), short(rotated.KeyVersion.ID))
	if len(a.reports) != 1 {
		return fmt.Errorf("check failed: the rotation hook ran %d times, want 1", len(a.reports))
	}
	rep := a.reports[0]
	if err := rep.Err(); err != nil {
		return fmt.Errorf("check failed: %w", err)
	}
	failed := 0
	for i, v := range vols {
		info, err := volume.Describe(v.path)
		if err != nil {
			return err
		}
		reencrypted := 0
		sum, err := dataAreaSum(v.path, v.info.DataOffset)
		if err != nil {
			return err
		}
		if sum != v.sum {
			reencrypted = -1
			failed++
		}
		res.Volumes[i].NewVersion, res.Volumes[i].DataAreaUnchanged = info.KeyVersion, sum == v.sum
		status := "data re-encrypted: 0 bytes"
		if reencrypted != 0 {
			status = "DATA AREA CHANGED"
		}
		if info.KeyVersion != rotated.KeyVersion.ID {
			status += ", NOT REWRAPPED"
			failed++
		}
		say("4. %s rewrapped: %s -> %s, %s", filepath.Base(v.path), short(v.info.KeyVersion), short(info.KeyVersion), status)
	}
	res.Rewrapped, res.HeaderBytesWritten = rep.Rewrapped, rep.BytesWritten
	say("   %d volumes rewrapped, %d header bytes written in total", rep.Rewrapped, rep.BytesWritten)

	for i, v := range vols {
		vv, err := a.mgr.Open(ctx, v.path)
		if err != nil {
			return fmt.Errorf("reattaching %s: %w", v.path, err)
		}
		got := make([]byte, len(v.data))
		_, err = vv.ReadAt(got, 4096)
		vv.Close()
		if err != nil {
			return fmt.Errorf("reading %s: %w", v.path, err)
		}
		if !bytes.Equal(got, v.data) {
			failed++
			say("5. %s: data read back DIFFERS", filepath.Base(v.path))
			continue
		}
		res.Volumes[i].Verified = true
		say("5. %s: reattached with the new key version, %d bytes read back and verified", filepath.Base(v.path), len(got))
	}
	vs, err := a.svc.ListVersions(ctx, key.ID)
	if err != nil {
		return err
	}
	say("6. key versions: %s has %d registrations, %s has %d", short(vs[0].ID), vs[0].Registrations, short(vs[1].ID), vs[1].Registrations)
	if vs[0].Registrations != 3 || vs[1].Registrations != 0 {
		failed++
	}
	res.ChecksFailed, res.Passed = failed, failed == 0
	if failed > 0 {
		return fmt.Errorf("%d checks failed", failed)
	}
	say("demo passed: 3 volumes, 1 rotation, every volume rewrapped without re-encrypting data, all data verified (%.1fs)", time.Since(start).Seconds())
	return nil
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// dataAreaSum hashes an image from its data offset to the end.
func dataAreaSum(path string, off int64) ([32]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return [32]byte{}, err
	}
	if int64(len(b)) < off {
		return [32]byte{}, fmt.Errorf("%s is shorter than its data offset %d", path, off)
	}
	return sha256.Sum256(b[off:]), nil
}
