package keyslot

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"
	"math"
	"slices"

	"golang.org/x/crypto/argon2"
)

// KDF types.
const (
	KDFPBKDF2   = "pbkdf2"
	KDFArgon2i  = "argon2i"
	KDFArgon2id = "argon2id"
)

// Limits on KDF costs: cryptsetup's (lib/utils_pbkdf.c, crypt_pbkdf_get_limits). Values read
// from disk outside them are refused before any work is done, so a crafted header cannot make
// an unlock run for days or allocate without bound; within them, [Image.UnlockContext] stops
// a long derivation when its context ends.
//
// MaxPBKDF2Iterations, for keyslots and digests, is 2^31-1 rather than the 2^32-1 of
// crypt_pbkdf_get_limits: cryptsetup 2.6.1 writes iteration counts with json_object_new_int
// (a 32-bit int), reads a keyslot's with json_object_get_int (which saturates at 2^31-1), and
// its OpenSSL backend refuses more than INT_MAX ("PBKDF2 iteration value overflow"); a larger
// count is one cryptsetup can neither make nor open as written.
//
// MaxArgon2Time is 2^31-1 rather than the 2^32-1 of crypt_pbkdf_get_limits for the same
// reason: cryptsetup 2.6.1 reads a keyslot's argon2 time with json_object_get_int, so a larger
// cost would be derived with 2^31-1 passes instead of those written. Memory (4 GiB) and threads
// (4) are crypt_pbkdf_get_limits' argon2 limits; 2.6.1 enforces them when it makes a keyslot
// but not when it reads one, and crkvol refuses headers beyond them so that a crafted header
// cannot make an unlock allocate more, or (with [Image.UnlockContext]) leave more running.
const (
	MinPBKDF2Iterations = 1000
	MaxPBKDF2Iterations = math.MaxInt32
	MinArgon2Time       = 4
	MaxArgon2Time       = math.MaxInt32
	MinArgon2Memory     = 32      // KiB
	MaxArgon2Memory     = 4 << 20 // KiB (4 GiB)
	MaxArgon2Threads    = 4
	saltSize            = 32
)

// KDF describes how a keyslot turns a passphrase into the key that encrypts its area.
type KDF struct {
	// Type is KDFPBKDF2, KDFArgon2i or KDFArgon2id.
	Type string
	// Hash is the PBKDF2 hash: "sha1", "sha256" or "sha512".
	Hash string
	// Iterations is the PBKDF2 iteration count.
	Iterations int
	// Time, Memory (KiB) and Threads are the Argon2 costs.
	Time, Memory, Threads int
	// Salt is filled in from the random source when a keyslot is made.
	Salt []byte
}

// Priority is a keyslot's unlock priority, as cryptsetup's --priority. The zero value means
// normal.
type Priority string

// Keyslot priorities. On disk LUKS2 stores them as the integers 0 (ignore), 1 (normal, or the
// member omitted) and 2 (prefer).
const (
	PriorityNormal Priority = "normal"
	// PriorityIgnore keyslots are only tried when named.
	PriorityIgnore Priority = "ignore"
	// PriorityPrefer keyslots are tried before normal ones.
	PriorityPrefer Priority = "prefer"
)

// priorityFromDisk maps the LUKS2 integer to a Priority.
func priorityFromDisk(n int64) Priority {
	switch n {
	case 0:
		return PriorityIgnore
	case 2:
		return PriorityPrefer
	}
	return PriorityNormal
}

// disk returns the LUKS2 integer for p, and whether p is valid.
func (p Priority) disk() (int64, bool) {
	switch p {
	case PriorityIgnore:
		return 0, true
	case "", PriorityNormal:
		return 1, true
	case PriorityPrefer:
		return 2, true
	}
	return 0, false
}

// PBKDF2 returns PBKDF2 parameters with the given hash and iteration count.
func PBKDF2(hash string, iterations int) KDF {
	return KDF{Type: KDFPBKDF2, Hash: hash, Iterations: iterations}
}

// Argon2id returns Argon2id parameters: time cost, memory in KiB and threads.
func Argon2id(time, memoryKiB, threads int) KDF {
	return KDF{Type: KDFArgon2id, Time: time, Memory: memoryKiB, Threads: threads}
}

// hashByName returns a constructor for a hash LUKS2 names. Only the hashes cryptsetup
// commonly uses are implemented; others are refused by name.
func hashByName(name string) (hashInfo, error) {
	switch name {
	case "sha1":
		return hashInfo{new: sha1.New, size: sha1.Size}, nil
	case "sha256":
		return hashInfo{sha256.New, sha256.Size, true}, nil
	case "sha512":
		return hashInfo{new: sha512.New, size: sha512.Size}, nil
	}
	return hashInfo{}, fmt.Errorf("%w: hash %q", ErrUnsupported, truncate(name))
}

type hashInfo struct {
	new      func() hash.Hash
	size     int
	isSHA256 bool
}

func (h hashInfo) Size() int { return h.size }

// parseKDF reads a keyslot's kdf object, checking costs against the limits above. Unknown
// members are dropped, as cryptsetup does.
func parseKDF(o *object) (KDF, error) {
	var k KDF
	var err error
	if k.Type, err = o.str("type"); err != nil {
		return k, err
	}
	switch k.Type {
	case KDFPBKDF2:
		if k.Hash, err = o.str("hash"); err != nil {
			return k, err
		}
		if _, err := hashByName(k.Hash); err != nil {
			return k, fmt.Errorf("%s: %w", o.path(), err)
		}
		n, err := o.integer("iterations", 1, MaxPBKDF2Iterations)
		if err != nil {
			return k, fmt.Errorf("%w (%w)", err, ErrKDFLimits)
		}
		k.Iterations = int(n)
	case KDFArgon2i, KDFArgon2id:
		t, err := o.integer("time", 1, MaxArgon2Time)
		if err != nil {
			return k, fmt.Errorf("%w (%w)", err, ErrKDFLimits)
		}
		m, err := o.integer("memory", 8, MaxArgon2Memory)
		if err != nil {
			return k, fmt.Errorf("%w (%w)", err, ErrKDFLimits)
		}
		p, err := o.integer("cpus", 1, MaxArgon2Threads)
		if err != nil {
			return k, fmt.Errorf("%w (%w)", err, ErrKDFLimits)
		}
		if m < 8*p {
			return k, fmt.Errorf("%w: %s: argon2 memory %d KiB is below 8 KiB per thread (%d threads)", ErrKDFLimits, o.path(), m, p)
		}
		k.Time, k.Memory, k.Threads = int(t), int(m), int(p)
	default:
		return k, fmt.Errorf("%w: %s: KDF type %q", ErrUnsupported, o.path(), truncate(k.Type))
	}
	if k.Salt, err = o.b64("salt", saltSize, saltSize); err != nil {
		return k, err
	}
	return k, nil
}

// checkNew checks parameters for a new keyslot against cryptsetup's creation minimums.
func (k KDF) checkNew() error {
	switch k.Type {
	case KDFPBKDF2:
		if _, err := hashByName(k.Hash); err != nil {
			return err
		}
		if k.Iterations < MinPBKDF2Iterations || k.Iterations > MaxPBKDF2Iterations {
			return fmt.Errorf("%w: pbkdf2 iterations %d, want %d to %d", ErrKDFLimits, k.Iterations, MinPBKDF2Iterations, uint64(MaxPBKDF2Iterations))
		}
	case KDFArgon2i, KDFArgon2id:
		if k.Time < MinArgon2Time || k.Time > MaxArgon2Time {
			return fmt.Errorf("%w: %s time %d, want %d to %d", ErrKDFLimits, k.Type, k.Time, MinArgon2Time, uint64(MaxArgon2Time))
		}
		if k.Memory < MinArgon2Memory || k.Memory > MaxArgon2Memory {
			return fmt.Errorf("%w: %s memory %d KiB, want %d to %d", ErrKDFLimits, k.Type, k.Memory, MinArgon2Memory, MaxArgon2Memory)
		}
		if k.Threads < 1 || k.Threads > MaxArgon2Threads {
			return fmt.Errorf("%w: %s threads %d, want 1 to %d", ErrKDFLimits, k.Type, k.Threads, MaxArgon2Threads)
		}
	default:
		return fmt.Errorf("%w: KDF type %q", ErrUnsupported, truncate(k.Type))
	}
	return nil
}

// derive runs the KDF over the passphrase, producing keyLen bytes, and returns an error
// wrapping ctx.Err() as soon as ctx ends: PBKDF2 stops itself; Argon2 (see argon2Key) is
// abandoned to finish in the background.
func (k KDF) derive(ctx context.Context, passphrase []byte, keyLen int) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("keyslot: key derivation: %w", err)
	}
	switch k.Type {
	case KDFPBKDF2:
		h, err := hashByName(k.Hash)
		if err != nil {
			return nil, err
		}
		return pbkdf2Derive(ctx, passphrase, k.Salt, k.Iterations, keyLen, h)
	case KDFArgon2i:
		return argon2Key(ctx, argon2.Key, passphrase, k.Salt, uint32(k.Time), uint32(k.Memory), uint8(k.Threads), uint32(keyLen))
	case KDFArgon2id:
		return argon2Key(ctx, argon2.IDKey, passphrase, k.Salt, uint32(k.Time), uint32(k.Memory), uint8(k.Threads), uint32(keyLen))
	}
	return nil, fmt.Errorf("%w: KDF type %q", ErrUnsupported, truncate(k.Type))
}

// argon2Key runs an x/crypto argon2 function (argon2.Key or argon2.IDKey), which takes no
// context, so that the caller is not held past the end of ctx. With a context that can end,
// the derivation runs in its own goroutine on copies of the passphrase and salt, and
// argon2Key returns an error wrapping ctx.Err() as soon as ctx ends. The abandoned
// computation cannot be stopped: it still runs to completion in the background and then
// clears its result. What it can cost is bounded by the limits parseKDF enforces — at most
// MaxArgon2Memory KiB and MaxArgon2Threads threads, for at most MaxArgon2Time passes — and
// each unlock abandons at most one derivation, since the keyslot loop stops on the context's
// error.
func argon2Key(ctx context.Context, f func(password, salt []byte, time, memory uint32, threads uint8, keyLen uint32) []byte,
	passphrase, salt []byte, time, memory uint32, threads uint8, keyLen uint32) ([]byte, error) {
	if ctx.Done() == nil {
		return f(passphrase, salt, time, memory, threads, keyLen), nil
	}
	pass, s := slices.Clone(passphrase), slices.Clone(salt)
	result := make(chan []byte)
	go func() {
		key := f(pass, s, time, memory, threads, keyLen)
		clear(pass)
		select {
		case result <- key:
		case <-ctx.Done():
			clear(key)
		}
	}()
	select {
	case key := <-result:
		return key, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("keyslot: key derivation: %w", ctx.Err())
	}
}

// write encodes the KDF as the members of a kdf object, in cryptsetup's order.
func (k KDF) write(w *writer) {
	w.str("type", k.Type)
	switch k.Type {
	case KDFPBKDF2:
		w.str("hash", k.Hash)
		w.int("iterations", int64(k.Iterations))
	default:
		w.int("time", int64(k.Time))
		w.int("memory", int64(k.Memory))
		w.int("cpus", int64(k.Threads))
	}
	w.b64("salt", k.Salt)
}
