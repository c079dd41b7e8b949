package qcow2

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"crkvol/internal/tooltest"
	"crkvol/keyslot"
	"crkvol/sector"
)

// qemuShape is one way of making a qcow2 image with qemu-img convert.
type qemuShape struct {
	name string
	size int      // guest size
	opts []string // -o options
	args []string // more qemu-img convert arguments (-c)
}

var qemuShapes = []qemuShape{
	{name: "v3-64k", size: 3 << 20, opts: []string{"compat=1.1"}},
	{name: "v2-64k", size: 3 << 20, opts: []string{"compat=0.10"}},
	{name: "v3-512", size: 1 << 20, opts: []string{"cluster_size=512"}},
	{name: "v3-4k", size: 3 << 20, opts: []string{"cluster_size=4096"}},
	{name: "v2-4k", size: 3 << 20, opts: []string{"compat=0.10", "cluster_size=4096"}},
	{name: "v3-2m", size: 9 << 20, opts: []string{"cluster_size=2M"}},
	{name: "v2-512", size: 1 << 20, opts: []string{"compat=0.10", "cluster_size=512"}},
	{name: "compressed-64k", size: 3 << 20, args: []string{"-c"}},
	{name: "compressed-512", size: 1 << 20, opts: []string{"cluster_size=512"}, args: []string{"-c"}},
	{name: "compressed-2m", size: 9 << 20, opts: []string{"cluster_size=2M"}, args: []string{"-c"}},
	{name: "compressed-v2", size: 3 << 20, opts: []string{"compat=0.10", "cluster_size=4096"}, args: []string{"-c"}},
	{name: "luks-64k", size: 3 << 20, opts: []string{"encrypt.format=luks", "encrypt.key-secret=sec0", "encrypt.iter-time=50"}},
	{name: "luks-default", size: 3 << 20, opts: []string{"encrypt.format=luks", "encrypt.key-secret=sec0"}},
	{name: "luks-v2-4k", size: 3 << 20, opts: []string{"compat=0.10", "cluster_size=4096", "encrypt.format=luks", "encrypt.key-secret=sec0", "encrypt.iter-time=50"}},
	{name: "luks-2m-aes128-sha1", size: 9 << 20, opts: []string{"cluster_size=2M", "encrypt.format=luks", "encrypt.key-secret=sec0", "encrypt.cipher-alg=aes-128", "encrypt.hash-alg=sha1", "encrypt.iter-time=50"}},
	{name: "luks-512-sha512", size: 1 << 20, opts: []string{"cluster_size=512", "encrypt.format=luks", "encrypt.key-secret=sec0", "encrypt.hash-alg=sha512", "encrypt.iter-time=50"}},
	{name: "luks-v2-512-aes128", size: 1 << 20, opts: []string{"compat=0.10", "cluster_size=512", "encrypt.format=luks", "encrypt.key-secret=sec0", "encrypt.cipher-alg=aes-128", "encrypt.iter-time=50"}},
}

// TestQemuImages reads images qemu-img made from a raw source, in every shape, and checks
// that the guest content equals the source. The checked-in seeds (TestSeeds) cover the
// same shapes in every run.
func TestQemuImages(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long run only (CRKVOL_LONG_TESTS=1): 17 images, LUKS key derivation")
	}
	tools := tooltest.Require(t, "qemu-img")
	dir := t.TempDir()
	for i, s := range qemuShapes {
		t.Run(s.name, func(t *testing.T) {
			src := makeSource(s.size, uint64(i))
			raw := writeFile(t, dir, s.name+".raw", src)
			out := filepath.Join(dir, s.name+".qcow2")
			args := append([]string{"convert"}, secretArgs()...)
			args = append(args, "-O", "qcow2")
			if len(s.opts) > 0 {
				args = append(args, "-o", strings.Join(s.opts, ","))
			}
			args = append(args, s.args...)
			run(t, tools["qemu-img"], append(args, raw, out)...)
			img := openPath(t, out)
			got := readAll(t, img, unlock(t, img))
			if !bytes.Equal(got, src) {
				t.Fatalf("guest content differs from the source")
			}
		})
	}
}

// TestQemuZeroClusters reads zero clusters written by qemu-io's write -z (v3), including
// preallocated ones, and checks Map against qemu-img map.
func TestQemuZeroClusters(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long run only (CRKVOL_LONG_TESTS=1); the seed zero-v3-4k covers zero clusters")
	}
	tools := tooltest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	p := filepath.Join(dir, "z.qcow2")
	run(t, tools["qemu-img"], "create", "-f", "qcow2", "-o", "cluster_size=4096", p, "1M")
	run(t, tools["qemu-io"], "-c", "write -P 0x5a 0 64k", "-c", "write -z 16k 8k", "-c", "write -z -u 40k 4k",
		"-c", "write -z 512k 64k", "-c", "write -P 0x11 1020k 4k", p)
	img := openPath(t, p)
	got := readAll(t, img, nil)
	want := make([]byte, 1<<20)
	for i := range 64 << 10 {
		want[i] = 0x5a
	}
	clear(want[16<<10 : 24<<10])
	clear(want[40<<10 : 44<<10])
	for i := 1020 << 10; i < 1<<20; i++ {
		want[i] = 0x11
	}
	if !bytes.Equal(got, want) {
		t.Fatal("guest content differs")
	}
	ext, err := img.Map(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	wantExt := []Extent{{0, 16 << 10, true}, {16 << 10, 8 << 10, false}, {24 << 10, 16 << 10, true},
		{40 << 10, 4 << 10, false}, {44 << 10, 20 << 10, true}, {64 << 10, 956 << 10, false}, {1020 << 10, 4 << 10, true}}
	if fmt.Sprint(ext) != fmt.Sprint(wantExt) {
		t.Fatalf("Map = %v\nwant %v", ext, wantExt)
	}
}

// TestWriteQemuCheck writes images with Write and has qemu-img check them (clean, no
// leaks) and compare them with the source; encrypted ones are decrypted by qemu-img convert.
func TestWriteQemuCheck(t *testing.T) {
	tools := tooltest.Require(t, "qemu-img")
	qemu := tools["qemu-img"]
	dir := t.TempDir()
	passFile := writeFile(t, dir, "pass", []byte(testPassphrase))
	cases := []struct {
		name      string
		size      int
		cluster   int
		encrypted bool
		keyBytes  int
		hash      string
		long      bool
	}{
		{name: "64k", size: 3 << 20, cluster: 65536, long: true},
		{name: "512", size: 1 << 20, cluster: 512, long: true},
		{name: "luks-64k", size: 3 << 20, cluster: 65536, encrypted: true, keyBytes: 64},
		{name: "4k", size: 3 << 20, cluster: 4096, long: true},
		{name: "2m", size: 9<<20 + 512, cluster: 2 << 20, long: true},
		{name: "luks-512-aes128-sha1", size: 1 << 20, cluster: 512, encrypted: true, keyBytes: 32, hash: "sha1", long: true},
		{name: "luks-2m-sha512", size: 5 << 20, cluster: 2 << 20, encrypted: true, keyBytes: 64, hash: "sha512", long: true},
		{name: "luks-4k", size: 3 << 20, cluster: 4096, encrypted: true, keyBytes: 64, long: true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.long && !tooltest.Long() {
				t.Skip("long run only (CRKVOL_LONG_TESTS=1)")
			}
			src := makeSource(tc.size, uint64(100+i))
			raw := writeFile(t, dir, tc.name+".raw", src)
			out := filepath.Join(dir, tc.name+".qcow2")
			opts := WriteOptions{Size: int64(tc.size), ClusterSize: tc.cluster}
			if tc.encrypted {
				mk := bytes.Repeat([]byte{byte(i + 1)}, tc.keyBytes)
				for j := range mk {
					mk[j] ^= byte(j)
				}
				hdr, err := keyslot.FormatLUKS1(context.Background(), mk, []byte(testPassphrase), keyslot.LUKS1Options{Hash: tc.hash})
				if err != nil {
					t.Fatal(err)
				}
				c, err := sector.New(mk, 512)
				if err != nil {
					t.Fatal(err)
				}
				opts.EncryptionHeader, opts.Cipher = hdr, c
			}
			f, err := os.Create(out)
			if err != nil {
				t.Fatal(err)
			}
			st, err := Write(context.Background(), f, bytes.NewReader(src), nil, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if fi, _ := os.Stat(out); fi.Size() != st.FileSize {
				t.Fatalf("FileSize %d, file has %d bytes", st.FileSize, fi.Size())
			}
			check := run(t, qemu, append(append([]string{"check"}, secretArgs()...), "--image-opts", imageOpts(out, tc.encrypted))...)
			if !strings.Contains(check, "No errors were found on the image.") {
				t.Fatalf("qemu-img check:\n%s", check)
			}
			if tc.encrypted {
				plain := filepath.Join(dir, tc.name+".out")
				run(t, qemu, "convert", "--object", "secret,id=sec0,file="+passFile, "--image-opts", imageOpts(out, true), "-O", "raw", plain)
				got, err := os.ReadFile(plain)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, src) {
					t.Fatal("qemu-img decrypts content that differs from the source")
				}
			} else {
				run(t, qemu, "compare", "-f", "raw", "-F", "qcow2", raw, out)
			}
			img := openPath(t, out)
			if got := readAll(t, img, unlock(t, img)); !bytes.Equal(got, src) {
				t.Fatal("reading back differs from the source")
			}
		})
	}
}

// imageOpts is qemu's --image-opts description of a qcow2 file, with the LUKS secret when
// encrypted.
func imageOpts(path string, encrypted bool) string {
	s := "driver=qcow2,file.filename=" + path
	if encrypted {
		s += ",encrypt.format=luks,encrypt.key-secret=sec0"
	}
	return s
}

// TestQemuSharing makes images in which QEMU packs many compressed clusters into one host
// cluster (content that deflates to a few bytes a cluster) and shares clusters between the
// active table and internal snapshots (snapshot, write, revert, write), and checks that Map
// accepts them and the content equals what qemu-img converts them to: the sharing Map
// refuses is not sharing QEMU makes.
func TestQemuSharing(t *testing.T) {
	if !tooltest.Long() {
		t.Skip("long run only (CRKVOL_LONG_TESTS=1): a dozen qemu-img runs per cluster size")
	}
	tools := tooltest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	for _, cs := range []int{512, 4096, 65536, 2 << 20} {
		t.Run(fmt.Sprint(cs), func(t *testing.T) {
			size := max(16*cs, 1<<20)
			src := make([]byte, size)
			for i := range src[:size/2] {
				src[i] = byte(i/512%251 + 1) // a byte per sector: deflates to almost nothing
			}
			hole := size / 2 // the rest is left unallocated, where qemu-io may write compressed
			raw := writeFile(t, dir, fmt.Sprintf("%d.raw", cs), src)
			p := filepath.Join(dir, fmt.Sprintf("%d.qcow2", cs))
			run(t, tools["qemu-img"], "convert", "-c", "-O", "qcow2", "-o", fmt.Sprintf("cluster_size=%d", cs), raw, p)
			run(t, tools["qemu-img"], "snapshot", "-c", "s1", p)
			run(t, tools["qemu-io"], "-c", fmt.Sprintf("write -P 0x77 0 %d", 2*cs), "-c", fmt.Sprintf("write -c -P 0x33 %d %d", hole, cs), p)
			run(t, tools["qemu-img"], "snapshot", "-c", "s2", p)
			run(t, tools["qemu-img"], "snapshot", "-a", "s1", p)
			run(t, tools["qemu-io"], "-c", fmt.Sprintf("write -P 0x55 %d %d", cs, cs), "-c", fmt.Sprintf("write -c -P 0x44 %d %d", hole+2*cs, cs), p)
			run(t, tools["qemu-img"], "check", p)
			out := filepath.Join(dir, fmt.Sprintf("%d.out", cs))
			run(t, tools["qemu-img"], "convert", "-O", "raw", p, out)
			want, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			img := openPath(t, p)
			if _, err := img.Map(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := packed(t, img); n == 0 {
				t.Fatal("no two compressed clusters share a host cluster: the test tests nothing")
			}
			if got := readAll(t, img, nil); !bytes.Equal(got, want) {
				t.Fatal("guest content differs from qemu-img convert's")
			}
		})
	}
}

// packed counts the compressed clusters of img's active mapping that start in a host
// cluster where another one starts too.
func packed(t *testing.T, img *Image) int {
	t.Helper()
	seen := map[uint64]int{}
	for gc := range (uint64(img.Size()) + img.clusterSize - 1) / img.clusterSize {
		m, err := img.lookup(gc)
		if err != nil {
			t.Fatal(err)
		}
		if m.kind == compressed {
			seen[m.host/img.clusterSize]++
		}
	}
	n := 0
	for _, k := range seen {
		if k > 1 {
			n += k
		}
	}
	return n
}
