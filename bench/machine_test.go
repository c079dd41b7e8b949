package bench

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const sampleMountInfo = `22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 22 0:27 / /tmp rw,nosuid,nodev shared:14 - tmpfs tmpfs rw,size=4096k
31 22 254:17 / /srv/my\040data rw,relatime - xfs /dev/vdb\0401 rw
32 31 0:40 / /srv/my\040data/cache rw - tmpfs none rw
33 22 0:41 / /tmpfoo rw - btrfs /dev/vdc rw
`

// TestParseMountInfo: fields, escapes, optional fields of any number; malformed lines are
// refused with the line named.
func TestParseMountInfo(t *testing.T) {
	t.Parallel()
	mounts, err := parseMountInfo(sampleMountInfo)
	require.NoError(t, err)
	require.Len(t, mounts, 6)
	assert.Equal(t, mount{Point: "/", FSType: "ext4", Source: "/dev/vda1"}, mounts[0])
	assert.Equal(t, mount{Point: "/srv/my data", FSType: "xfs", Source: "/dev/vdb 1"}, mounts[3])

	for _, bad := range []struct{ text, want string }{
		{"22 1 254:1 / / rw shared:1 ext4 /dev/vda1 rw\n", `line 1: want ID`},
		{"\n\n22 1 254:1 / / rw -\n", `line 3: want ID`},
		{"1 2 3\n", "line 1"},
		{`22 1 254:1 / /a\04 rw - ext4 /dev/x rw` + "\n", "truncated escape"},
		{`22 1 254:1 / /a\09x rw - ext4 /dev/x rw` + "\n", "bad escape"},
		{`22 1 254:1 / /a rw - ext4 /dev/\999 rw` + "\n", "source: bad escape"},
	} {
		_, err := parseMountInfo(bad.text)
		assert.ErrorContains(t, err, bad.want, "%q", bad.text)
	}
}

// TestMountOf: the longest mount point that is a whole-component prefix wins; a later mount
// on the same point hides an earlier one.
func TestMountOf(t *testing.T) {
	t.Parallel()
	mounts, err := parseMountInfo(sampleMountInfo + "34 30 0:50 / /tmp rw - overlay overlay rw\n")
	require.NoError(t, err)
	for path, want := range map[string]string{
		"/":                       "ext4",
		"/home/user":              "ext4",
		"/tmp":                    "overlay",
		"/tmp/x/y":                "overlay",
		"/tmpfoo/bar":             "btrfs",
		"/tmpf":                   "ext4",
		"/srv/my data/cache/v.db": "tmpfs",
		"/srv/my data/v.img":      "xfs",
	} {
		m, ok := mountOf(mounts, path)
		require.True(t, ok, path)
		assert.Equal(t, want, m.FSType, path)
	}
	_, ok := mountOf(nil, "/x")
	assert.False(t, ok)
}

func TestMemTotal(t *testing.T) {
	t.Parallel()
	n, err := memTotal("MemFree:  10 kB\nMemTotal:       8039388 kB\n")
	require.NoError(t, err)
	assert.Equal(t, uint64(8039388)<<10, n)
	for text, want := range map[string]string{
		"MemFree: 10 kB\n":                  "no MemTotal",
		"MemTotal: 10 MB\n":                 `want "MemTotal: N kB"`,
		"MemTotal: -1 kB\n":                 "not a size",
		"MemTotal: 1e30 kB\n":               "not a size",
		"MemTotal: 99999999999999999999 kB": "not a size",
	} {
		_, err := memTotal(text)
		assert.ErrorContains(t, err, want, text)
	}
}

// TestThisMachine describes this machine (whatever it is) and prints it on one line.
func TestThisMachine(t *testing.T) {
	t.Parallel()
	m := thisMachine(t.TempDir())
	assert.NotEmpty(t, m.CPU)
	assert.Positive(t, m.Cores)
	assert.NotEmpty(t, m.GoVersion)
	s := m.String()
	assert.True(t, strings.HasPrefix(s, m.CPU+", "), s)
	assert.True(t, strings.HasSuffix(s, ", "+m.GoVersion), s)
	assert.NotContains(t, s, "\n")
	assert.Equal(t, "x, 1 cores, go", Machine{CPU: "x", Cores: 1, GoVersion: "go"}.String())
}

// FuzzParseMountInfo: any text parses or is refused with an error, without a panic; what
// parses has a type and a source for every mount, and mountOf finds a mount for "/" when one
// is there.
func FuzzParseMountInfo(f *testing.F) {
	f.Add(sampleMountInfo)
	f.Add(`1 2 3:4 / /a\\ rw - x y z`)
	f.Add("1 2 3:4 / / - - ext4\n")
	f.Fuzz(func(t *testing.T, text string) {
		mounts, err := parseMountInfo(text)
		if err != nil {
			return
		}
		hasRoot := false
		for _, m := range mounts {
			if m.FSType == "" {
				t.Fatalf("mount without a type: %+v", m)
			}
			hasRoot = hasRoot || m.Point == "/"
		}
		if _, ok := mountOf(mounts, "/"); hasRoot && !ok {
			t.Fatal("no mount for / although one is listed")
		}
	})
}

// FuzzMemTotal: any text gives a size in bytes or an error, never a panic.
func FuzzMemTotal(f *testing.F) {
	f.Add("MemTotal:       8039388 kB\n")
	f.Add("MemTotal: 1 kB")
	f.Fuzz(func(t *testing.T, text string) {
		n, err := memTotal(text)
		if err == nil && n%1024 != 0 {
			t.Fatalf("%d bytes is not a whole number of kB", n)
		}
	})
}
