package crk_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"crkvol/crk"
)

// Wrap a data key, rotate the root key, and unwrap the old ciphertext: it comes back with a
// ciphertext rewrapped under the new version.
func Example() {
	dir, _ := os.MkdirTemp("", "crk-example")
	defer os.RemoveAll(dir)
	clock := crk.NewManualClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	svc, err := crk.Open(filepath.Join(dir, "crk.db"), crk.Options{Clock: clock, MasterKey: make32()})
	if err != nil {
		panic(err)
	}
	defer svc.Close()
	ctx := context.Background()

	key, _ := svc.CreateRootKey(ctx, "volumes")
	wrapped, _ := svc.Wrap(ctx, key.ID, []byte("a LUKS passphrase"), []string{"volume-uuid"})
	rotated, _ := svc.RotateKey(ctx, key.ID, nil)

	res, err := svc.Unwrap(ctx, key.ID, wrapped.Ciphertext, []string{"volume-uuid"})
	if err != nil {
		panic(err)
	}
	fmt.Println(string(res.Plaintext))
	fmt.Println(res.RewrappedVersion.ID == rotated.KeyVersion.ID)
	// Output:
	// a LUKS passphrase
	// true
}

func make32() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i + 1)
	}
	return k
}
