package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"crkvol/volume/sector"
)

// TestRunReportsEveryCase runs the harness briefly (no timing claims) and checks the report's
// shape: every path, both sizes and directions, the references, and the table.
func TestRunReportsEveryCase(t *testing.T) {
	r, err := Run(context.Background(), Options{Quick: true, OpenSSL: "/nonexistent/openssl"})
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
	if _, err := exec.LookPath("openssl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl is required in CI but not installed (apt-get install openssl)")
		}
		t.Skip("openssl not installed; apt-get install openssl to run this test")
	}
	mbps, err := openSSLSpeed(context.Background(), "", 4096, false, 0)
	require.NoError(t, err)
	assert.Positive(t, mbps)
	_, err = openSSLSpeed(context.Background(), "false", 4096, false, 0)
	assert.True(t, err != nil && strings.Contains(err.Error(), "openssl speed"))
}
