package crk

import (
	"bufio"
	"context"
	"crkvol/internal/pgtest"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const crashHelperEnv = "CRK_CRASH_HELPER_STORE"

func TestMain(m *testing.M) {
	if path := os.Getenv(crashHelperEnv); path != "" {
		crashHelper(path)
		return
	}
	pgtest.Main(m)
}

// crashHelper runs in a child process: it performs operations on the store forever, printing
// one line per acknowledged operation, until it is killed.
func crashHelper(path string) {
	svc, err := Open(path, Options{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	ctx := context.Background()
	out := bufio.NewWriter(os.Stdout)
	ack := func(format string, args ...any) {
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
	}
	for i := 0; ; i++ {
		k, err := svc.CreateRootKey(ctx, fmt.Sprintf("burst-%d", i))
		if err != nil {
			ack("error %v", err)
			os.Exit(1)
		}
		ack("created %s", k.ID)
		w, err := svc.Wrap(ctx, k.ID, []byte("dek-of-"+k.ID), []string{k.ID})
		if err != nil {
			ack("error %v", err)
			os.Exit(1)
		}
		ack("wrapped %s %s", k.ID, base64.StdEncoding.EncodeToString(w.Ciphertext))
		crn := "crn:v1:local:public:is:local:a/crkvol::volume:" + k.ID
		if _, err := svc.Register(ctx, k.ID, crn, RegisterOptions{}); err != nil {
			ack("error %v", err)
			os.Exit(1)
		}
		ack("registered %s %s", k.ID, crn)
		r, err := svc.RotateKey(ctx, k.ID, nil)
		if err != nil {
			ack("error %v", err)
			os.Exit(1)
		}
		ack("rotated %s %s", k.ID, r.KeyVersion.ID)
		v := r.KeyVersion.ID
		if _, err := svc.UpdateRegistration(ctx, k.ID, crn, RegistrationUpdate{VersionID: &v}); err != nil {
			ack("error %v", err)
			os.Exit(1)
		}
		ack("updated %s %s", k.ID, v)
	}
}

// maxAcksBeforeKill bounds how far into its burst TestCrashMidBurst lets the helper get: five
// acknowledgements are one pass of create, wrap, register, rotate and update.
const maxAcksBeforeKill = 40

// TestCrashMidBurst kills a process at random moments of a burst of operations and checks
// that the reopened store has every acknowledged operation and nothing half-done.
func TestCrashMidBurst(t *testing.T) {
	exe, err := os.Executable()
	require.NoError(t, err)
	dir := t.TempDir()
	path := filepath.Join(dir, "crk.db")
	rng := rand.New(rand.NewPCG(7, 8))
	total := 0
	for trial := range 6 {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), crashHelperEnv+"="+path)
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		lines := make(chan string, 1<<16)
		go func() {
			sc := bufio.NewScanner(stdout)
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Kill it without warning a random number of acknowledgements into the burst, plus a
		// random fraction of an operation. The kill moment counts acknowledgements, not wall
		// time, so a slow start on a loaded machine cannot leave a trial with nothing to verify.
		killAfter := 1 + rng.IntN(maxAcksBeforeKill)
		killDelay := time.Duration(rng.IntN(3000)) * time.Microsecond
		var acked []string
		var kill <-chan time.Time
		killed := false
	collect:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					break collect
				}
				acked = append(acked, l)
				if len(acked) == killAfter && !killed {
					kill = time.After(killDelay)
				}
			case <-kill:
				require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
				kill, killed = nil, true
			}
		}
		_ = cmd.Wait()
		require.NotEmpty(t, acked, "trial %d: the helper acknowledged nothing", trial)
		for _, l := range acked {
			require.False(t, strings.HasPrefix(l, "error"), "trial %d: helper: %s", trial, l)
		}
		total += len(acked)
		verifyAfterCrash(t, path, acked)
	}
	t.Logf("6 kills, %d acknowledged operations verified", total)
}

func verifyAfterCrash(t *testing.T, path string, acked []string) {
	t.Helper()
	svc, err := Open(path, Options{})
	require.NoError(t, err)
	defer svc.Close()
	ctx := context.Background()

	// Every acknowledged operation is there.
	for _, l := range acked {
		f := strings.Fields(l)
		switch f[0] {
		case "created":
			_, err := svc.GetKeyMetadata(ctx, f[1])
			require.NoError(t, err, l)
		case "wrapped":
			ct, err := base64.StdEncoding.DecodeString(f[2])
			require.NoError(t, err)
			u, err := svc.Unwrap(ctx, f[1], ct, []string{f[1]})
			require.NoError(t, err, l)
			require.Equal(t, "dek-of-"+f[1], string(u.Plaintext))
		case "registered":
			regs, err := svc.ListRegistrations(ctx, RegistrationFilter{KeyID: f[1], CRN: f[2]})
			require.NoError(t, err)
			require.Len(t, regs, 1, l)
		case "rotated":
			vs, err := svc.ListVersions(ctx, f[1])
			require.NoError(t, err)
			require.Equal(t, f[2], vs[0].ID, l)
		case "updated":
			regs, err := svc.ListRegistrations(ctx, RegistrationFilter{KeyID: f[1]})
			require.NoError(t, err)
			require.Equal(t, f[2], regs[0].KeyVersion.ID, l)
		}
	}

	// Nothing is half-done: every key is consistent, created with its event in the same
	// transaction, every version beyond the first has its rotate event, and every
	// registration names an existing key and version.
	evs, err := svc.Events(ctx, EventFilter{})
	require.NoError(t, err)
	created := map[string]int{}
	rotatedTo := map[string]bool{}
	for _, e := range evs {
		if e.Outcome != OutcomeSuccess {
			continue
		}
		switch e.Action {
		case ActionCreate:
			created[e.KeyID]++
		case ActionRotate:
			rotatedTo[e.KeyVersion] = true
		}
	}
	require.NoError(t, svc.view(t.Context(), func(tx storeTx) error {
		return tx.keys(false, func(r *keyRecord) error {
			require.NoError(t, r.check())
			require.Equal(t, 1, created[r.ID], "key %s has no create event", r.ID)
			for _, ver := range r.Versions[1:] {
				require.True(t, rotatedTo[ver.ID], "version %s has no rotate event", ver.ID)
			}
			_, err = svc.openVersion(r, r.latest())
			require.NoError(t, err)
			return nil
		})
	}))
	regs, err := svc.ListRegistrations(ctx, RegistrationFilter{})
	require.NoError(t, err)
	for _, reg := range regs {
		vs, err := svc.ListVersions(ctx, reg.KeyID)
		require.NoError(t, err)
		found := false
		for _, v := range vs {
			found = found || v.ID == reg.KeyVersion.ID
		}
		require.True(t, found, "registration %s names a missing version", reg.ResourceCRN)
	}
}

func TestReopenAndMasterKey(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		dir := t.TempDir()
		path := filepath.Join(dir, "crk.db")
		ctx := context.Background()
		clock := NewManualClock(t0)
		svc, err := st.open(path, Options{Clock: clock})
		require.NoError(t, err)
		k, err := svc.CreateRootKey(ctx, "persist")
		require.NoError(t, err)
		w, err := svc.Wrap(ctx, k.ID, []byte("dek"), nil)
		require.NoError(t, err)
		var rootMaterial []byte
		require.NoError(t, svc.view(t.Context(), func(tx storeTx) error {
			r, err := tx.key(k.ID)
			if err != nil {
				return err
			}
			rootMaterial, err = svc.openVersion(r, r.latest())
			return err
		}))
		require.Len(t, rootMaterial, 32)
		require.NoError(t, svc.Close())

		fi, err := os.Stat(path + ".masterkey")
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		if st.kind == "bolt" {
			fi, err = os.Stat(path)
			require.NoError(t, err)
			assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		}
		// The store holds root key material only encrypted.
		raw := st.raw(t, path)
		assert.NotContains(t, string(raw), string(rootMaterial))
		assert.NotContains(t, string(raw), base64.StdEncoding.EncodeToString(rootMaterial))

		unwrap := func(svc *Service) {
			t.Helper()
			u, err := svc.Unwrap(ctx, k.ID, w.Ciphertext, nil)
			require.NoError(t, err)
			assert.Equal(t, "dek", string(u.Plaintext))
		}
		svc, err = st.open(path, Options{Clock: clock})
		require.NoError(t, err)
		unwrap(svc)
		require.NoError(t, svc.Close())

		// A key file readable by others is refused; a wrong key does not open the store.
		require.NoError(t, os.Chmod(path+".masterkey", 0o644))
		_, err = st.open(path, Options{Clock: clock})
		assert.ErrorIs(t, err, ErrMasterKey)
		require.NoError(t, os.Chmod(path+".masterkey", 0o600))
		_, err = st.open(path, Options{Clock: clock, MasterKey: material(32, 1)})
		assert.ErrorIs(t, err, ErrMasterKey)
		// (A CRKVOL_MASTER_KEY that is not base64 is the CLI's to refuse: TestMasterKeyEnv.)
		_, err = st.open(path, Options{Clock: clock, MasterKey: []byte("not 32 bytes")})
		assert.ErrorIs(t, err, ErrMasterKey)
		other := filepath.Join(dir, "missing.db")
		st.existingWithoutKeyFile(t, other)
		_, err = st.open(other, Options{Clock: clock})
		assert.ErrorIs(t, err, ErrMasterKey, "an existing store without its key file")

		// Rotate the master key: the file changes, everything still unwraps, the old key no
		// longer opens the store.
		oldKey, err := readKeyFile(path + ".masterkey")
		require.NoError(t, err)
		svc, err = st.open(path, Options{Clock: clock})
		require.NoError(t, err)
		require.NoError(t, svc.RotateMasterKey(ctx, nil))
		unwrap(svc)
		require.NoError(t, svc.Close())
		newKey, err := readKeyFile(path + ".masterkey")
		require.NoError(t, err)
		assert.NotEqual(t, oldKey, newKey)
		_, err = st.open(path, Options{Clock: clock, MasterKey: oldKey})
		assert.ErrorIs(t, err, ErrMasterKey)
		svc, err = st.open(path, Options{Clock: clock, MasterKey: newKey})
		require.NoError(t, err)
		unwrap(svc)
		// Given directly, the caller supplies the next key.
		assert.ErrorIs(t, svc.RotateMasterKey(ctx, nil), ErrInvalidArgument)
		third := material(32, 77)
		require.NoError(t, svc.RotateMasterKey(ctx, third))
		require.NoError(t, svc.Close())
		svc, err = st.open(path, Options{Clock: clock, MasterKey: third})
		require.NoError(t, err)
		unwrap(svc)
		require.NoError(t, svc.Close())
	})
}

// TestInterruptedMasterKeyRotation: a crash after the new key file is written (before or
// after the commit) leaves a store that opens.
func TestInterruptedMasterKeyRotation(t *testing.T) {
	forEachStore(t, func(t *testing.T, st *testStore) {
		path := filepath.Join(t.TempDir(), "crk.db")
		ctx := context.Background()
		svc, err := st.open(path, Options{})
		require.NoError(t, err)
		k, err := svc.CreateRootKey(ctx, "mk")
		require.NoError(t, err)
		w, err := svc.Wrap(ctx, k.ID, []byte("dek"), nil)
		require.NoError(t, err)

		// Before the commit: a pending file that was never used.
		require.NoError(t, writeKeyFile(path+".masterkey.new", material(32, 9)))
		require.NoError(t, svc.Close())
		svc, err = st.open(path, Options{})
		require.NoError(t, err)
		_, err = svc.Unwrap(ctx, k.ID, w.Ciphertext, nil)
		require.NoError(t, err)
		_, err = os.Stat(path + ".masterkey.new")
		assert.True(t, os.IsNotExist(err), "unused pending key removed")

		// After the commit, before the rename: simulate by committing under a new key while
		// the file still has the old one.
		next := material(32, 11)
		require.NoError(t, writeKeyFile(path+".masterkey.new", next))
		svc.keyFile = "" // keep RotateMasterKey from touching the files
		require.NoError(t, svc.RotateMasterKey(ctx, next))
		require.NoError(t, svc.Close())
		svc, err = st.open(path, Options{})
		require.NoError(t, err)
		_, err = svc.Unwrap(ctx, k.ID, w.Ciphertext, nil)
		require.NoError(t, err)
		require.NoError(t, svc.Close())
		got, err := readKeyFile(path + ".masterkey")
		require.NoError(t, err)
		assert.Equal(t, next, got, "the pending key was moved into place")
	})
}
