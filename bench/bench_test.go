package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/internal/tooltest"
	"crkvol/sector"
)

// TestRunReportsEveryCase runs the harness briefly (no timing claims) and checks the report's
// shape: every path, both sizes and directions, the references, and the table.
func TestRunReportsEveryCase(t *testing.T) {
	t.Parallel()
	r, err := Run(context.Background(), Options{Quick: true, OpenSSL: "/nonexistent/openssl", window: 10 * time.Millisecond})
	require.NoError(t, err)
	assert.NotEmpty(t, r.CPU)
	assert.Contains(t, r.OpenSSLError, "openssl speed")
	for _, size := range []int{512, 4096} {
		for _, op := range []string{"encrypt", "decrypt"} {
			for _, p := range sector.Paths() {
				assert.Positive(t, r.find(string(p), op, size), "%s %s %d", p, op, size)
			}
			assert.Positive(t, r.find("x/crypto/xts", op, size))
		}
	}
	require.NotNil(t, r.Parallel)
	assert.Positive(t, r.Parallel.OneCoreMBps)
	if r.Parallel.Workers > 1 {
		assert.Positive(t, r.Parallel.AllMBps)
	}
	var b bytes.Buffer
	require.NoError(t, r.WriteTable(&b))
	assert.Contains(t, b.String(), "vs x/crypto/xts")
	assert.Contains(t, b.String(), "OpenSSL not measured")
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
