package bench

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Machine is what a run ran on: every number of a report is this machine's.
type Machine struct {
	CPU         string `json:"cpu"`
	Cores       int    `json:"cores"`
	MemoryBytes uint64 `json:"memoryBytes,omitempty"` // 0 if unknown
	Kernel      string `json:"kernel,omitempty"`      // "Linux 6.1.0-18-amd64"
	// FileSystem is the file system of the scratch directory (Options.Dir), where the io,
	// rewrap, kms and nbd sections keep their files: its type, device and mount point
	// ("ext4 /dev/vda1 on /"), or "" if unknown.
	FileSystem string `json:"fileSystem,omitempty"`
	GoVersion  string `json:"goVersion"`
}

// String is the machine on one line, as the table and the chart title show it.
func (m Machine) String() string {
	parts := []string{fmt.Sprintf("%s, %d cores", m.CPU, m.Cores)}
	if m.MemoryBytes > 0 {
		parts = append(parts, fmt.Sprintf("%.1f GiB", float64(m.MemoryBytes)/(1<<30)))
	}
	if m.Kernel != "" {
		parts = append(parts, m.Kernel)
	}
	if m.FileSystem != "" {
		parts = append(parts, m.FileSystem)
	}
	return strings.Join(append(parts, m.GoVersion), ", ")
}

// thisMachine describes the machine the process runs on, with dir's file system. What it
// cannot read is left empty: a description is not worth failing a run for.
func thisMachine(dir string) Machine {
	m := Machine{CPU: cpuModel(), Cores: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemoryBytes, _ = memTotal(string(b))
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		m.Kernel = strings.TrimSpace(unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:]))
	}
	m.FileSystem = mountedFileSystem(dir)
	return m
}

// mountedFileSystem names the file system dir is on with its device and mount point, from
// /proc/self/mountinfo (the mount whose mount point is the longest prefix of dir's real
// path), or else its type alone from statfs (fileSystem).
func mountedFileSystem(dir string) string {
	if dir == "" {
		dir = os.TempDir()
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return ""
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		if mounts, err := parseMountInfo(string(b)); err == nil {
			if mt, ok := mountOf(mounts, abs); ok {
				return mt.FSType + " " + mt.Source + " on " + mt.Point
			}
		}
	}
	return fileSystem(abs)
}

// mount is one line of /proc/self/mountinfo.
type mount struct{ Point, FSType, Source string }

// parseMountInfo parses the lines of /proc/PID/mountinfo (proc(5)): mount ID, parent ID,
// major:minor, root, mount point, options, optional fields, "-", file system type, source,
// super options. Octal escapes (\040 for a space) in the mount point and the source are
// decoded. A malformed line is an error naming it.
func parseMountInfo(text string) ([]mount, error) {
	var out []mount
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 6 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("bench: mountinfo line %d: want ID, parent, device, root, mount point, options, \"-\", type, source: %q", n, line)
		}
		point, err := unescapeOctal(f[4])
		if err != nil {
			return nil, fmt.Errorf("bench: mountinfo line %d: mount point: %w", n, err)
		}
		source, err := unescapeOctal(f[sep+2])
		if err != nil {
			return nil, fmt.Errorf("bench: mountinfo line %d: source: %w", n, err)
		}
		out = append(out, mount{Point: point, FSType: f[sep+1], Source: source})
	}
	return out, sc.Err()
}

// unescapeOctal decodes the \ooo escapes the kernel writes for spaces, tabs, newlines and
// backslashes in mountinfo fields.
func unescapeOctal(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("truncated escape in %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape %q in %q", s[i:i+4], s)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}

// mountOf returns the mount path is on: the last listed (the topmost, when mounts are
// stacked) of those whose mount point is the longest prefix of path.
func mountOf(mounts []mount, path string) (mount, bool) {
	var best mount
	found := false
	for _, m := range mounts {
		under := path == m.Point || m.Point == "/" || strings.HasPrefix(path, strings.TrimSuffix(m.Point, "/")+"/")
		if under && (!found || len(m.Point) >= len(best.Point)) {
			best, found = m, true
		}
	}
	return best, found
}

// memTotal returns MemTotal of /proc/meminfo's text, in bytes.
func memTotal(text string) (uint64, error) {
	for _, l := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(l, "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("bench: meminfo: want \"MemTotal: N kB\", got %q", l)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil || kb > 1<<53 {
			return 0, fmt.Errorf("bench: meminfo: MemTotal %q is not a size in kB", f[0])
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("bench: meminfo: no MemTotal line")
}
