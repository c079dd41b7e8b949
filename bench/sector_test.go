package bench

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/sector"
)

// TestRunSectorReportsEveryCase runs the section briefly (no timing claims) and checks the
// report's shape: every path, both sizes and directions, the references, the ceilings of
// the assembly paths, the ratios and the table.
func TestRunSectorReportsEveryCase(t *testing.T) {
	t.Parallel()
	var progress []string
	r, err := RunSector(context.Background(), SectorOptions{Quick: true, OpenSSL: "/nonexistent/openssl", window: 10 * time.Millisecond,
		Progress: func(s string) { progress = append(progress, s) }})
	require.NoError(t, err)
	assert.NotEmpty(t, r.CPU)
	assert.NotEmpty(t, progress)
	assert.Contains(t, r.OpenSSLError, "openssl speed")
	for _, size := range []int{512, 4096} {
		for _, op := range []string{"encrypt", "decrypt"} {
			for _, p := range sector.Paths() {
				assert.Positive(t, r.find(string(p), op, size), "%s %s %d", p, op, size)
			}
			assert.Positive(t, r.find("x/crypto/xts", op, size))
		}
	}
	var asm []string
	for _, p := range sector.Paths() {
		if p != sector.PathGeneric {
			asm = append(asm, string(p))
		}
	}
	var ceilings []string
	for _, c := range r.Ceilings {
		ceilings = append(ceilings, c.Path)
		assert.Positive(t, c.MBps, c.Path)
	}
	assert.ElementsMatch(t, asm, ceilings, "a ceiling for each assembly path this CPU runs, and none other")
	require.NotNil(t, r.Parallel)
	assert.Positive(t, r.Parallel.OneCoreMBps)
	if r.Parallel.Workers > 1 {
		assert.Positive(t, r.Parallel.AllMBps)
	}

	// Without openssl, the ratios are the portable path against x/crypto/xts, every result of
	// an assembly path against its ceiling, and the multi-core helper.
	byAgainst := map[string]int{}
	for _, x := range r.Ratios() {
		assert.Equal(t, "sector", x.Section)
		assert.Positive(t, x.Value, x.Name)
		byAgainst[x.Against]++
	}
	assert.Equal(t, 4, byAgainst["x/crypto/xts"])
	ceilingRows := 4 * len(asm) // both sizes and directions of each assembly path
	if len(asm) > 0 {
		ceilingRows += 4 // the default path again, with 64 KiB calls
	}
	assert.Equal(t, ceilingRows, byAgainst["ceiling"])
	assert.Zero(t, byAgainst["openssl"])

	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	assert.Contains(t, b.String(), "vs x/crypto/xts")
	assert.Contains(t, b.String(), "OpenSSL not measured")
	if len(asm) > 0 {
		assert.Contains(t, b.String(), "of ceiling")
		assert.Regexp(t, `(?m)^ +`+asm[0]+` +encrypt +4096 +\d+ +- +\d+\.\d\dx +\d+%$`, b.String())
	} else {
		assert.Contains(t, b.String(), "Ceiling: none")
	}
}

// TestSectorRatiosAgainstOpenSSL: with OpenSSL measured, each assembly path (and the default
// one with 64 KiB calls) is compared with it at its sector size and direction, with the
// README's targets; the portable path is compared with x/crypto/xts only.
func TestSectorRatiosAgainstOpenSSL(t *testing.T) {
	t.Parallel()
	r := &SectorReport{
		Results: []Result{
			{Impl: "vaes", Op: "encrypt", SectorSize: 4096, MBps: 21000},
			{Impl: "vaes (64 KiB calls)", Op: "encrypt", SectorSize: 512, MBps: 25000},
			{Impl: "aesni", Op: "decrypt", SectorSize: 4096, MBps: 7000},
			{Impl: "generic", Op: "encrypt", SectorSize: 4096, MBps: 1500},
			{Impl: "x/crypto/xts", Op: "encrypt", SectorSize: 4096, MBps: 500},
			{Impl: "openssl", Op: "encrypt", SectorSize: 4096, MBps: 7000},
			{Impl: "openssl", Op: "encrypt", SectorSize: 512, MBps: 5000},
			{Impl: "openssl", Op: "decrypt", SectorSize: 4096, MBps: 7000},
		},
		Ceilings: []Ceiling{{Path: "vaes", MBps: 28000}},
		Parallel: &ParallelResult{Path: "vaes", Workers: 2, OneCoreMBps: 1000, AllMBps: 1900},
	}
	want := []Ratio{
		{Section: "sector", Name: "vaes encrypt 4096", Value: 3, Against: "openssl", Target: 2.1},
		{Section: "sector", Name: "vaes (64 KiB calls) encrypt 512", Value: 5, Against: "openssl", Target: 2.5},
		{Section: "sector", Name: "aesni decrypt 4096", Value: 1, Against: "openssl", Target: 0.95},
		{Section: "sector", Name: "generic encrypt 4096", Value: 3, Against: "x/crypto/xts", Target: 3},
		{Section: "sector", Name: "vaes encrypt 4096", Value: 0.75, Against: "ceiling"},
		{Section: "sector", Name: "vaes (64 KiB calls) encrypt 512", Value: 25000.0 / 28000, Against: "ceiling"},
		{Section: "sector", Name: "volume.Parallel, 2 cores", Value: 1.9, Against: "1 core", Target: 1.7},
	}
	got := r.Ratios()
	require.Len(t, got, len(want))
	for i := range want {
		assert.Equal(t, want[i].Name, got[i].Name)
		assert.Equal(t, want[i].Against, got[i].Against)
		assert.Equal(t, want[i].Target, got[i].Target, want[i].Name)
		assert.InDelta(t, want[i].Value, got[i].Value, 1e-9, want[i].Name)
	}
	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	assert.Regexp(t, `(?m)^ +vaes +encrypt +4096 +21000 +3\.00x +42\.00x +75%$`, b.String())
	assert.Regexp(t, `(?m)^ +aesni +decrypt +4096 +7000 +1\.00x +- +-$`, b.String(), "no ceiling measured for aesni: no share shown")
}

func TestOpenSSLSpeed(t *testing.T) {
	t.Parallel()
	tooltest.Require(t, "openssl")
	mbps, err := openSSLSpeed(context.Background(), "", 4096, false, 0)
	require.NoError(t, err)
	assert.Positive(t, mbps)
	_, err = openSSLSpeed(context.Background(), "false", 4096, false, 0)
	assert.True(t, err != nil && strings.Contains(err.Error(), "openssl speed"))
}

// TestRunNBD runs the NBD comparison small (no timing claims): every server, both directions,
// and the table with its ratios.
func TestRunNBD(t *testing.T) {
	t.Parallel()
	tooltest.Require(t, "nbdcopy", "qemu-nbd")
	for _, unix := range []bool{false, true} {
		r, err := RunNBD(context.Background(), NBDOptions{Size: 8 << 20, Rounds: 1, Dir: t.TempDir(), Unix: unix})
		require.NoError(t, err)
		require.Len(t, r.Results, 6)
		checkNBDReport(t, r)
	}
}

func checkNBDReport(t *testing.T, r *NBDReport) {
	t.Helper()
	for _, x := range r.Results {
		assert.Positive(t, x.MiBps, "%s %s", x.Server, x.Op)
	}
	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	assert.Contains(t, b.String(), "vs qemu-nbd")
	assert.Contains(t, b.String(), "1.00x")
	assert.Contains(t, b.String(), r.Transport)
}

// BenchmarkNBD reports sequential write and read MiB/s through NBD (nbdcopy over a unix
// socket) for crkvol serving an encrypted volume, crkvol's server on a raw file, and qemu-nbd
// on a raw file, plus each crkvol case's ratio to qemu-nbd, measured in the same run.
func BenchmarkNBD(b *testing.B) {
	tooltest.Require(b, "nbdcopy", "qemu-nbd")
	const size = 256 << 20
	var r *NBDReport
	for b.Loop() {
		var err error
		if r, err = RunNBD(context.Background(), NBDOptions{Size: size, Rounds: 1, Dir: b.TempDir()}); err != nil {
			b.Fatal(err)
		}
	}
	for _, x := range r.Results {
		b.ReportMetric(x.MiBps, x.Server+"-"+x.Op+"-MiB/s")
		if q := r.find("qemu-nbd", x.Op); q > 0 && x.Server != "qemu-nbd" {
			b.ReportMetric(x.MiBps/q, x.Server+"-"+x.Op+"-vs-qemu-nbd")
		}
	}
}

// TestWaitListeningStopsWhenServerExits: waiting for a server that already exited ends at
// once with that reason, rather than after the 20 s deadline.
func TestWaitListeningStopsWhenServerExits(t *testing.T) {
	port, err := freePort()
	require.NoError(t, err)
	exited := make(chan struct{})
	close(exited)
	err = waitListening(context.Background(), "nbd://127.0.0.1:"+strconv.Itoa(port)+"/", "", exited)
	require.ErrorContains(t, err, "the server exited")
}
