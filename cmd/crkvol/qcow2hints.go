package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"crkvol/qcow2"
	"crkvol/volume"
)

// Commands that turn an image crkvol refuses into one it takes, keeping the encryption:
// PASS is the image's passphrase file, IN the image, OUT the new image.
const (
	// cmdConvertEncrypted rewrites an encrypted qcow2 image as a new self-contained one
	// (no backing or data file, no extended L2 entries), encrypted with a new LUKS header
	// under the same passphrase.
	cmdConvertEncrypted = "qemu-img convert -O qcow2 --object secret,id=sec0,file=PASS --image-opts driver=qcow2,file.filename=IN,encrypt.key-secret=sec0 -o encrypt.format=luks,encrypt.key-secret=sec0 OUT.qcow2"
	// cmdEncrypt encrypts an unencrypted qcow2 (or raw) image.
	cmdEncrypt = "qemu-img convert -O qcow2 --object secret,id=sec0,file=PASS -o encrypt.format=luks,encrypt.key-secret=sec0 IN OUT.qcow2"
	// cmdRawLUKSToQcow2 turns a raw LUKS image (qemu-img -O luks) into an encrypted qcow2.
	cmdRawLUKSToQcow2 = "qemu-img convert -O qcow2 --object secret,id=sec0,file=PASS --image-opts driver=luks,file.filename=IN,key-secret=sec0 -o encrypt.format=luks,encrypt.key-secret=sec0 OUT.qcow2"
)

// qcow2Hints adds to an image's refusal by the qcow2 reader, or as not encrypted, the
// qemu-img command that makes an image crkvol takes; other errors are returned as they are.
func qcow2Hints(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, volume.ErrImageNotEncrypted) {
		return withHint(err, "the catalog holds only images encrypted with QEMU's LUKS; encrypt it: "+cmdEncrypt)
	}
	var ue *qcow2.UnsupportedError
	if !errors.As(err, &ue) {
		return err
	}
	switch ue.Feature {
	case qcow2.FeatureBackingFile:
		return withHint(err, "make a self-contained copy, keeping the encryption: "+cmdConvertEncrypted,
			"if the backing image is encrypted too, add its secret to --image-opts: backing.encrypt.key-secret=sec0 (same passphrase) or another --object secret,id=sec1,... with backing.encrypt.key-secret=sec1")
	case qcow2.FeatureExternalDataFile, qcow2.FeatureExtendedL2:
		return withHint(err, "convert it to a plain qcow2, keeping the encryption: "+cmdConvertEncrypted)
	case qcow2.FeatureDirty:
		return withHint(err, "repair the refcounts (this writes IN; work on a copy if in doubt): qemu-img check -r all --object secret,id=sec0,file=PASS --image-opts driver=qcow2,file.filename=IN,encrypt.key-secret=sec0")
	case qcow2.FeatureLegacyAES:
		return withHint(err, "re-encrypt it with LUKS: qemu-img convert -O qcow2 --object secret,id=sec0,file=PASS --image-opts driver=qcow2,file.filename=IN,encrypt.format=aes,encrypt.key-secret=sec0 -o encrypt.format=luks,encrypt.key-secret=sec0 OUT.qcow2")
	}
	return err
}

// fileMagic returns the first bytes of the file at path (nil if it cannot be read).
func fileMagic(path string) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return nil
	}
	b := make([]byte, 8)
	n, _ := io.ReadFull(f, b)
	return b[:n]
}

// luksMagic is the magic of a LUKS header; qcow2Magic that of a qcow2 image.
var (
	luksMagic  = []byte("LUKS\xba\xbe")
	qcow2Magic = []byte("QFI\xfb")
)

// notQcow2 explains an image import refused as not qcow2 when the file is a raw LUKS image
// (a crkvol volume, cryptsetup's, qemu-img -O luks); other errors are returned as they are.
func notQcow2(err error, path string) error {
	if err == nil || !errors.Is(err, qcow2.ErrFormat) {
		return err
	}
	m := fileMagic(path)
	if !bytes.HasPrefix(m, luksMagic) || len(m) < 8 {
		return err
	}
	version := int(m[6])<<8 | int(m[7])
	return withHint(fmt.Errorf("%s is a raw LUKS%d image, not a qcow2 image: %w", path, version, err),
		"image import takes qcow2 images encrypted with QEMU's LUKS; convert a raw LUKS image: "+cmdRawLUKSToQcow2,
		"if it is a volume to manage as one: crkvol volume adopt IMG --key KEY --passphrase-file FILE (LUKS2; crkvol volume status IMG tells), and crkvol image export VOL OUT.qcow2 makes an image of a volume")
}

// qcow2Volume explains the refusal of a volume command given a qcow2 image: the catalog
// takes those. Other errors are returned as they are.
func qcow2Volume(err error, args []string) error {
	if err == nil || len(args) == 0 {
		return err
	}
	if !bytes.HasPrefix(fileMagic(args[0]), qcow2Magic) {
		return err
	}
	return withHint(fmt.Errorf("%s is a qcow2 image, not a volume: %w", absPath(args[0]), err),
		"an encrypted qcow2 image goes into the catalog: crkvol image import FILE --name NAME --key KEY (--wdek B64 | --passphrase-file F); crkvol volume create VOL --from-image NAME --key KEY makes a volume of it")
}
