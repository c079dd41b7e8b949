package sim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"crkvol/crk"
	"crkvol/volume"
	"crkvol/volume/kms"
)

// CrashOptions tune CrashTest.
type CrashOptions struct {
	// Binary is the crkvol executable the trials run and kill. Required.
	Binary string
	// Dir is the work directory (state and images); it should be empty. Required.
	Dir string
	// Volumes is the number of registered volumes; 500 if zero.
	Volumes int
	// Images is the number of encrypted qcow2 images in the image catalog, exported from
	// the volumes under the same key: each rotation rewraps their WDEKs with the volumes,
	// and after every trial each WDEK must be on the key's latest version, match its
	// registration and unlock its image, whose file must be unchanged. None if zero.
	Images int
	// Trials is the number of rotations killed with SIGKILL; 50 if zero.
	Trials int
	// Seed chooses the kill moments.
	Seed uint64
	// Workers is the rotations' --workers (the volumes a rewrap pass takes at once, in
	// waves of as many); the command's default if zero. A signal stops a pass between
	// waves, so trials of SIGINT or SIGTERM need more volumes than one wave.
	Workers int
	// Signal is the signal sent to the rotation; SIGKILL if zero. With SIGINT or SIGTERM a
	// rotation still running must stop at a clean point: exit 128+signal after one line
	// "crkvol: key rotate: interrupted: ..." on stderr (anything else is a failure), leaving every volume
	// on the old or the new version for `key sync` to finish.
	Signal syscall.Signal
	// Log, if set, receives one line per trial.
	Log func(format string, args ...any)
}

// CrashReport is what CrashTest found.
type CrashReport struct {
	Volumes int `json:"volumes"`
	Images  int `json:"images,omitempty"`
	Trials  int `json:"trials"`
	// Killed counts trials whose rotation was still running when SIGKILL came; Finished
	// those that completed first.
	Killed   int `json:"killed"`
	Finished int `json:"finished"`
	// Interrupted counts killed trials (with SIGINT or SIGTERM) that stopped at a clean point
	// and said so.
	Interrupted int `json:"interrupted,omitempty"`
	// MidRewrap counts killed trials whose kill landed inside the rewrap pass (see
	// CrashTrial.MidRewrap).
	MidRewrap int `json:"midRewrap"`
	// Repaired is the number of volumes and images `key sync` rewrapped, over all trials:
	// those whose header or WDEK still held the old wrapping after the kill.
	Repaired int `json:"repaired"`
	// RegistrationsRepaired is the number of registrations `key sync` brought up to a header
	// or WDEK the killed rotation had already rewrapped, over all trials.
	RegistrationsRepaired int `json:"registrationsRepaired"`
	// Results is what each trial's kill left, in trial order.
	Results []CrashTrial `json:"results"`
	// FullRotateMs is how long an unkilled `crkvol key rotate` took (the calibration run).
	FullRotateMs float64  `json:"fullRotateMs"`
	Failures     []string `json:"failures,omitempty"`
	WallSeconds  float64  `json:"wallSeconds"`
}

// WriteSummary prints the crash test's result.
func (r *CrashReport) WriteSummary(w io.Writer) {
	status := "PASSED"
	if len(r.Failures) > 0 {
		status = "FAILED"
	}
	fmt.Fprintf(w, "crash test %s: %d volumes, %d trials of `crkvol key rotate` killed with SIGKILL (%d mid-rewrap, %d before or after it, %d finished first); `key sync` rewrapped %d volumes left on the old version and brought %d registrations up to headers already rewrapped; every volume attached and read back its data after every trial (%.1f s; one full rotation %.0f ms)\n",
		status, r.Volumes, r.Trials, r.MidRewrap, r.Killed-r.MidRewrap, r.Finished, r.Repaired, r.RegistrationsRepaired, r.WallSeconds, r.FullRotateMs)
	if r.Images > 0 {
		fmt.Fprintf(w, "  and %d images: after every trial every WDEK was on the key's latest version and unlocked its image, whose file was unchanged (their rewraps are among the repairs)\n", r.Images)
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "  %s\n", f)
	}
}

// childError describes a child crkvol that failed while doing what: stopped because ctx
// ended (the error wraps ctx.Err()), or failed with err and its output out (left out when
// empty).
func childError(ctx context.Context, what string, err error, out []byte) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s was stopped: %w", what, ctx.Err())
	}
	if msg := strings.TrimSpace(string(out)); msg != "" {
		return fmt.Errorf("%s: %w: %s", what, err, msg)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// CrashTrial is what one trial's kill left behind, as the volumes' headers and the images'
// catalog entries hold it before `key sync` runs. The new version is the one the trial's
// rotation made; the old one is the key's latest version before the trial, which every
// volume and image is on when a trial starts.
type CrashTrial struct {
	// Killed says the rotation was still running when the signal came.
	Killed bool `json:"killed"`
	// Rotated says the rotation had made the key's new version before it ended. If not,
	// every header and WDEK holds the old wrapping, which is still the latest.
	Rotated bool `json:"rotated"`
	// NewHeaders and OldHeaders count the volumes whose header holds the new wrapping and
	// the old one; together they are all the volumes.
	NewHeaders int `json:"newHeaders"`
	OldHeaders int `json:"oldHeaders"`
	// NewImages and OldImages count the images whose WDEK holds the new wrapping and the
	// old one; together they are all the images.
	NewImages int `json:"newImages,omitempty"`
	OldImages int `json:"oldImages,omitempty"`
	// RegistrationsBehind counts the volumes and images whose header or WDEK holds the new
	// wrapping while their registration still names the old version (a wave's
	// registrations are updated after its headers are committed).
	RegistrationsBehind int `json:"registrationsBehind"`
	// MidRewrap says the kill landed inside the rewrap pass: it left some headers or WDEKs
	// with the new wrapping and some with the old, or registrations behind their headers.
	MidRewrap bool `json:"midRewrap"`
}

// crashFixture is the state of a crash test: registered volumes with known data.
type crashFixture struct {
	opts  CrashOptions
	state string
	mk    []byte
	keyID string
	t0    time.Time
	vols  []*vol
	imgs  []crashImage
}

// crashImage is an image of the crash test's catalog.
type crashImage struct {
	name, crn, path, sha256 string
}

// CrashTest runs a real crash test: it creates opts.Volumes registered volumes with data,
// then, opts.Trials times, starts `crkvol key rotate` in a child process, stops it with
// SIGKILL (or opts.Signal) at a random moment, runs `crkvol key sync`, and checks that every volume attaches
// and reads back its data, that its token is on the key's latest version, and that its
// registration matches its token. It returns an error if any check failed.
func CrashTest(ctx context.Context, opts CrashOptions) (*CrashReport, error) {
	if opts.Binary == "" || opts.Dir == "" {
		return nil, errors.New("sim: CrashTest needs Binary and Dir")
	}
	sig := opts.Signal
	if sig == 0 {
		sig = syscall.SIGKILL
	}
	if opts.Volumes <= 0 {
		opts.Volumes = 500
	}
	if opts.Trials <= 0 {
		opts.Trials = 50
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	start := time.Now()
	fx := &crashFixture{opts: opts, state: filepath.Join(opts.Dir, "state"), t0: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
	if err := fx.setup(ctx); err != nil {
		return nil, err
	}
	rep := &CrashReport{Volumes: opts.Volumes, Images: len(fx.imgs), Trials: opts.Trials}
	rng := mrand.New(mrand.NewPCG(opts.Seed, 0xc4a54))

	// Calibration: one rotation left to finish tells how long a whole one takes.
	now := fx.t0.Add(2 * time.Hour)
	old, err := fx.latest(ctx, now)
	if err != nil {
		return nil, err
	}
	t := time.Now()
	if out, err := fx.cli(ctx, now, fx.rotateArgs()...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("sim: %w", childError(ctx, "the calibration rotation (an unkilled `crkvol key rotate` before the trials)", err, out))
	}
	full := time.Since(t)
	rep.FullRotateMs = ms(full)
	res, problems, err := fx.survey(ctx, now, old, false)
	if err != nil {
		return nil, err
	}
	if len(problems) > 0 || !res.Rotated || res.OldHeaders+res.OldImages+res.RegistrationsBehind != 0 {
		return nil, fmt.Errorf("sim: the calibration rotation left %d volumes and %d images on the old version, %d registrations behind (made a new version: %t); %q",
			res.OldHeaders, res.OldImages, res.RegistrationsBehind, res.Rotated, problems)
	}
	old = res.latest
	for trial := 1; trial <= opts.Trials; trial++ {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		now = now.Add(2 * time.Hour) // past the hourly rotation limit
		// Three kills in four follow the rotation's progress: they wait until a third to two
		// thirds of the volumes' headers have been rewritten, so they land inside the rewrap
		// pass however slowly a loaded machine starts the process. The rest are timed from the
		// calibration run: most of a rotation's first fifth is process start and opening the
		// stores, so they aim at the rest, with some landing after the end.
		byProgress := rng.IntN(4) != 0
		target := opts.Volumes/3 + rng.IntN(opts.Volumes/3+1)
		delay := time.Duration((0.2 + 0.85*rng.Float64()) * float64(full))
		moment := fmt.Sprintf("after %s", delay.Round(time.Millisecond))
		var before []time.Time
		if byProgress {
			before = fx.mtimes()
			moment = fmt.Sprintf("once %d of %d volumes' files were written to", target, opts.Volumes)
		}
		cmd := fx.cli(ctx, now, fx.rotateArgs()...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return rep, err
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		var timer <-chan time.Time
		var progressed <-chan struct{}
		stop := make(chan struct{})
		if byProgress {
			progressed = fx.watch(stop, before, target)
		} else {
			timer = time.After(delay)
		}
		killed := false
		kill := func() {
			_ = cmd.Process.Signal(sig)
			err := <-exited
			var ee *exec.ExitError
			switch {
			case err == nil:
				rep.Finished++
			case errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signaled():
				// SIGKILL; or SIGINT/SIGTERM before the process installed its handler.
				killed = true
				rep.Killed++
			case sig != syscall.SIGKILL && errors.As(err, &ee) && ee.ExitCode() == 128+int(sig) &&
				strings.HasPrefix(stderr.String(), "crkvol: key rotate: interrupted: ") && strings.Count(stderr.String(), "\n") == 1:
				killed = true
				rep.Killed++
				rep.Interrupted++
			default:
				killed = true // the volumes may be left mid-rewrap all the same
				rep.Killed++
				rep.Failures = append(rep.Failures, fmt.Sprintf("trial %d: rotate after %v: want exit 0, or %d with one line \"crkvol: key rotate: interrupted: ...\"; got %v: %q", trial, sig, 128+int(sig), err, stderr.String()))
			}
		}
		select {
		case err := <-exited:
			if err != nil {
				rep.Failures = append(rep.Failures, fmt.Sprintf("trial %d: rotate failed on its own: %v", trial, err))
			}
			rep.Finished++
		case <-timer:
			kill()
		case <-progressed:
			kill()
		}
		close(stop)
		res, problems, err := fx.survey(ctx, now, old, killed)
		if err != nil {
			return rep, err
		}
		old = res.latest
		rep.Results = append(rep.Results, res.CrashTrial)
		if res.MidRewrap {
			rep.MidRewrap++
		}
		for _, f := range problems {
			rep.Failures = appendCapped(rep.Failures, fmt.Sprintf("trial %d: after the kill: %s", trial, f))
		}
		if !killed && (!res.Rotated || res.OldHeaders+res.OldImages+res.RegistrationsBehind != 0) {
			rep.Failures = append(rep.Failures, fmt.Sprintf("trial %d: a rotation that finished left %d volumes and %d images on the old version, %d registrations behind (made a new version: %t)",
				trial, res.OldHeaders, res.OldImages, res.RegistrationsBehind, res.Rotated))
		}
		if out, err := fx.cli(ctx, now.Add(time.Minute), "key", "sync", fx.keyID).CombinedOutput(); err != nil {
			rep.Failures = append(rep.Failures, fmt.Sprintf("trial %d: %v", trial, childError(ctx, "key sync", err, out)))
		} else if res.Rotated {
			rep.Repaired += res.OldHeaders + res.OldImages
			rep.RegistrationsRepaired += res.RegistrationsBehind
		}
		fails := fx.check(ctx, now.Add(2*time.Minute))
		for _, f := range fails {
			rep.Failures = appendCapped(rep.Failures, fmt.Sprintf("trial %d: %s", trial, f))
		}
		opts.Log("trial %d/%d: kill %s (%s): %s; then key sync and the checks: %d problems", trial, opts.Trials,
			moment, map[bool]string{true: "killed", false: "had finished"}[killed], res.describe(opts.Volumes, len(fx.imgs)), len(problems)+len(fails))
	}
	rep.WallSeconds = time.Since(start).Seconds()
	if len(rep.Failures) > 0 {
		return rep, fmt.Errorf("sim: crash test: %d problems (first: %s)", len(rep.Failures), rep.Failures[0])
	}
	return rep, nil
}

// rotateArgs is the command line of the rotations: calibration and trials alike.
func (fx *crashFixture) rotateArgs() []string {
	args := []string{"key", "rotate", fx.keyID}
	if fx.opts.Workers > 0 {
		args = append(args, "--workers", strconv.Itoa(fx.opts.Workers))
	}
	return args
}

// cli prepares a crkvol command on the fixture's state, at virtual time now.
func (fx *crashFixture) cli(ctx context.Context, now time.Time, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, fx.opts.Binary, args...)
	for _, kv := range os.Environ() { // the child works on the fixture only: no remote KMS
		if !strings.HasPrefix(kv, "CRKVOL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "CRKVOL_STATE="+fx.state, "CRKVOL_NOW="+now.Format(time.RFC3339))
	return cmd
}

// open opens the fixture's key service, registry and manager at virtual time now.
func (fx *crashFixture) open(now time.Time) (*crk.Service, *volume.Registry, *volume.Manager, error) {
	svc, err := crk.Open(filepath.Join(fx.state, "crk.db"), crk.Options{Clock: crk.NewManualClock(now), MasterKey: fx.mk, Initiator: "crkvol-crash-test"})
	if err != nil {
		return nil, nil, nil, err
	}
	reg, err := volume.OpenRegistry(filepath.Join(fx.state, "volumes.db"))
	if err != nil {
		svc.Close()
		return nil, nil, nil, err
	}
	mgr := volume.NewManager(kms.NewLocal(svc), reg, volume.Options{Now: func() time.Time { return now }})
	return svc, reg, mgr, nil
}

func closeAll(svc *crk.Service, reg *volume.Registry, mgr *volume.Manager) {
	mgr.Close()
	reg.Close()
	svc.Close()
}

// setup writes the master key file as the CLI would, creates the key and the volumes and
// writes their data.
func (fx *crashFixture) setup(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Join(fx.opts.Dir, "volumes"), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(fx.state, 0o700); err != nil {
		return err
	}
	fx.mk = make([]byte, 32)
	if _, err := rand.Read(fx.mk); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(fx.state, "crk.db.masterkey"), []byte(base64.StdEncoding.EncodeToString(fx.mk)+"\n"), 0o600); err != nil {
		return err
	}
	svc, reg, mgr, err := fx.open(fx.t0)
	if err != nil {
		return err
	}
	defer closeAll(svc, reg, mgr)
	k, err := svc.CreateRootKey(ctx, "crash-test")
	if err != nil {
		return err
	}
	fx.keyID = k.ID
	// Only what newVolume and writeData use is set; the logger too, in case.
	r := &runner{sc: Scenario{Seed: fx.opts.Seed}, mgr: mgr, size: 1 << 20, keys: []*simKey{{id: k.ID}}, opts: Options{Dir: fx.opts.Dir},
		log: slog.New(slog.DiscardHandler)}
	for i := range fx.opts.Volumes {
		v, err := r.newVolume(ctx, i, 0)
		if err != nil {
			return fmt.Errorf("sim: crash test: creating volume %d: %w", i, err)
		}
		if err := r.writeData(ctx, v, 0); err != nil {
			return fmt.Errorf("sim: crash test: writing volume %d: %w", i, err)
		}
		fx.vols = append(fx.vols, v)
	}
	for i := range fx.opts.Images {
		src := fx.vols[i%len(fx.vols)]
		name := fmt.Sprintf("img-%04d", i)
		out := filepath.Join(fx.opts.Dir, "volumes", name+".qcow2")
		res, err := mgr.ExportImage(ctx, src.path, out, volume.ExportOptions{Name: name, KeyID: k.ID, ClusterSize: 4096})
		if err != nil {
			return fmt.Errorf("sim: crash test: exporting image %d: %w", i, err)
		}
		fx.imgs = append(fx.imgs, crashImage{name: name, crn: res.Image.CRN, path: res.Path, sha256: res.Image.SHA256})
	}
	return nil
}

// mtimes returns the modification time of every volume's image (zero if it cannot be read).
func (fx *crashFixture) mtimes() []time.Time {
	ts := make([]time.Time, len(fx.vols))
	for i, v := range fx.vols {
		if fi, err := os.Stat(v.path); err == nil {
			ts[i] = fi.ModTime()
		}
	}
	return ts
}

// watch polls the images every millisecond and closes the returned channel once at least
// target of them were modified since before was taken; it gives up when stop closes.
func (fx *crashFixture) watch(stop <-chan struct{}, before []time.Time, target int) <-chan struct{} {
	reached := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			changed := 0
			for i, t := range fx.mtimes() {
				if !t.Equal(before[i]) {
					changed++
				}
			}
			if changed >= target {
				close(reached)
				return
			}
		}
	}()
	return reached
}

// latest returns the key's latest version.
func (fx *crashFixture) latest(ctx context.Context, now time.Time) (string, error) {
	svc, reg, mgr, err := fx.open(now)
	if err != nil {
		return "", fmt.Errorf("sim: crash test: %w", err)
	}
	defer closeAll(svc, reg, mgr)
	k, err := svc.GetKey(ctx, fx.keyID)
	if err != nil {
		return "", fmt.Errorf("sim: crash test: %w", err)
	}
	return k.KeyVersion.ID, nil
}

// trialState is what survey found: the trial's result, and the key's latest version.
type trialState struct {
	CrashTrial
	latest string
}

// survey reads what a rotation, killed or not, left behind: the version each volume's
// header and each image's WDEK is wrapped with, old (the key's latest version before the
// rotation) or the rotation's new one, and whether its registration names the same. Anything
// else (a header on neither version, unreadable, or behind its registration; a registration
// missing) is a problem. killed says the rotation was still running when the signal came.
func (fx *crashFixture) survey(ctx context.Context, now time.Time, old string, killed bool) (trialState, []string, error) {
	svc, reg, mgr, err := fx.open(now)
	if err != nil {
		return trialState{}, nil, fmt.Errorf("sim: crash test: %w", err)
	}
	defer closeAll(svc, reg, mgr)
	k, err := svc.GetKey(ctx, fx.keyID)
	if err != nil {
		return trialState{}, nil, fmt.Errorf("sim: crash test: %w", err)
	}
	regs, err := svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: fx.keyID})
	if err != nil {
		return trialState{}, nil, fmt.Errorf("sim: crash test: %w", err)
	}
	regVersion := map[string]string{}
	for _, r := range regs {
		regVersion[r.ResourceCRN] = r.KeyVersion.ID
	}
	st := trialState{latest: k.KeyVersion.ID}
	st.Killed = killed
	st.Rotated = st.latest != old
	var problems []string
	// classify counts one volume or image wrapped with version (its registration naming
	// registered): whether it is new, and a problem if it is on neither version.
	classify := func(what, crn, version string) (isNew, ok bool) {
		registered, found := regVersion[crn]
		switch {
		case version != old && version != st.latest:
			problems = append(problems, fmt.Sprintf("%s: on %s, neither the old version %s nor the new %s", what, version, old, st.latest))
			return false, false
		case !found:
			problems = append(problems, fmt.Sprintf("%s: not registered", what))
		case registered == version:
		case registered == old && version == st.latest:
			st.RegistrationsBehind++
		default:
			problems = append(problems, fmt.Sprintf("%s: registration on %s, ahead of its wrapping on %s", what, registered, version))
		}
		return st.Rotated && version == st.latest, true
	}
	for _, v := range fx.vols {
		info, err := volume.Describe(v.path)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", filepath.Base(v.path), err))
			continue
		}
		switch isNew, ok := classify(filepath.Base(v.path)+"'s header", v.crn, info.KeyVersion); {
		case !ok:
		case isNew:
			st.NewHeaders++
		default:
			st.OldHeaders++
		}
	}
	for _, img := range fx.imgs {
		e, err := reg.Image(img.name)
		if err != nil {
			problems = append(problems, fmt.Sprintf("image %s: %v", img.name, err))
			continue
		}
		switch isNew, ok := classify("image "+img.name+"'s WDEK", img.crn, e.KeyVersion); {
		case !ok:
		case isNew:
			st.NewImages++
		default:
			st.OldImages++
		}
	}
	rewrapped, total := st.NewHeaders+st.NewImages, len(fx.vols)+len(fx.imgs)
	st.MidRewrap = killed && (rewrapped > 0 && rewrapped < total || st.RegistrationsBehind > 0)
	return st, problems, nil
}

// describe says in words what the kill left, for the trial's log line.
func (c CrashTrial) describe(volumes, images int) string {
	if !c.Rotated {
		return fmt.Sprintf("no new version yet, all %d volumes on the old one", volumes)
	}
	s := fmt.Sprintf("%d of %d headers rewritten with the new version, %d on the old", c.NewHeaders, volumes, c.OldHeaders)
	if images > 0 {
		s += fmt.Sprintf(", %d of %d image WDEKs new, %d old", c.NewImages, images, c.OldImages)
	}
	s += fmt.Sprintf(", %d registrations behind", c.RegistrationsBehind)
	if c.MidRewrap {
		s += " (mid-rewrap)"
	}
	return s
}

// check verifies every volume: registration = token = latest version, and its data.
func (fx *crashFixture) check(ctx context.Context, now time.Time) []string {
	svc, reg, mgr, err := fx.open(now)
	if err != nil {
		return []string{err.Error()}
	}
	defer closeAll(svc, reg, mgr)
	k, err := svc.GetKey(ctx, fx.keyID)
	if err != nil {
		return []string{err.Error()}
	}
	regs, err := svc.ListRegistrations(ctx, crk.RegistrationFilter{KeyID: fx.keyID})
	if err != nil {
		return []string{err.Error()}
	}
	regVersion := map[string]string{}
	for _, r := range regs {
		regVersion[r.ResourceCRN] = r.KeyVersion.ID
	}
	var fails []string
	if len(regs) != len(fx.vols)+len(fx.imgs) {
		fails = append(fails, fmt.Sprintf("%d registrations for %d volumes and %d images", len(regs), len(fx.vols), len(fx.imgs)))
	}
	for _, img := range fx.imgs {
		e, err := reg.Image(img.name)
		switch {
		case err != nil:
			fails = append(fails, fmt.Sprintf("image %s: %v", img.name, err))
			continue
		case e.KeyVersion != k.KeyVersion.ID:
			fails = append(fails, fmt.Sprintf("image %s: WDEK on %s, latest is %s", img.name, e.KeyVersion, k.KeyVersion.ID))
		case regVersion[img.crn] != e.KeyVersion:
			fails = append(fails, fmt.Sprintf("image %s: registration on %q, WDEK on %s", img.name, regVersion[img.crn], e.KeyVersion))
		}
		if sum, err := volume.HashImageFile(ctx, img.path); err != nil || sum != img.sha256 {
			fails = append(fails, fmt.Sprintf("image %s: file SHA-256 %s (%v), made with %s", img.name, sum, err, img.sha256))
		}
		if err := volume.UnlockImage(ctx, kms.NewLocal(svc), e); err != nil {
			fails = append(fails, fmt.Sprintf("image %s: %v", img.name, err))
		}
	}
	for _, v := range fx.vols {
		info, err := volume.Describe(v.path)
		switch {
		case err != nil:
			fails = append(fails, err.Error())
			continue
		case info.KeyVersion != k.KeyVersion.ID:
			fails = append(fails, fmt.Sprintf("%s: token on %s, latest is %s", filepath.Base(v.path), info.KeyVersion, k.KeyVersion.ID))
		case regVersion[v.crn] != info.KeyVersion:
			fails = append(fails, fmt.Sprintf("%s: registration on %q, token on %s", filepath.Base(v.path), regVersion[v.crn], info.KeyVersion))
		}
		h, err := mgr.Open(ctx, v.path)
		if err != nil {
			fails = append(fails, fmt.Sprintf("%s does not attach: %v", filepath.Base(v.path), err))
			continue
		}
		if err := verify(h, v); err != nil {
			fails = append(fails, err.Error())
		}
		h.Close()
	}
	return fails
}
