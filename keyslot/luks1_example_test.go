package keyslot_test

import (
	"bytes"
	"context"
	"fmt"
	"log"

	"crkvol/keyslot"
)

// A LUKS1 header area made with FormatLUKS1 (as for a qcow2 image's encryption header),
// parsed back and unlocked.
func ExampleFormatLUKS1() {
	ctx := context.Background()
	masterKey := bytes.Repeat([]byte{0x5a, 0xa5}, 32) // 64 bytes: aes-256-xts; use crypto/rand
	passphrase := []byte("0123456789abcdef0123456789abcdef")
	area, err := keyslot.FormatLUKS1(ctx, masterKey, passphrase, keyslot.LUKS1Options{})
	if err != nil {
		log.Fatal(err)
	}
	h, err := keyslot.ParseLUKS1(bytes.NewReader(area), int64(len(area)))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(h.CipherSpec(), h.KeyBytes*8, h.HashSpec, h.PayloadOffset*512 == uint64(len(area)), h.ActiveSlots())
	key, slot, err := h.Unlock(ctx, bytes.NewReader(area), passphrase)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(slot, bytes.Equal(key, masterKey))
	// Output:
	// aes-xts-plain64 512 sha256 true [0]
	// 0 true
}
