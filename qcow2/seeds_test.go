package qcow2

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"crkvol/internal/tooltest"
	"crkvol/sector"
)

// update regenerates the qemu-made seed images in testdata: go test ./qcow2 -run TestSeeds -update
var update = flag.Bool("update", false, "regenerate testdata/*.qcow2.gz with qemu-img and qemu-io")

// seedSpec says how to make one seed image. Each command of cmds is qemu-img or qemu-io with
// its arguments, run in a scratch directory, where SRC names the raw source and OUT the image.
type seedSpec struct {
	name      string
	size      int
	encrypted bool
	cmds      [][]string
	refuse    string // the refusal Open must give, if any
}

var seedSpecs = []seedSpec{
	{name: "v3-64k", size: 1 << 20, cmds: [][]string{{"qemu-img", "convert", "-O", "qcow2", "SRC", "OUT"}}},
	{name: "v2-64k", size: 1 << 20, cmds: [][]string{{"qemu-img", "convert", "-O", "qcow2", "-o", "compat=0.10", "SRC", "OUT"}}},
	{name: "v3-512", size: 256 << 10, cmds: [][]string{{"qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=512", "SRC", "OUT"}}},
	{name: "v2-512", size: 256 << 10, cmds: [][]string{{"qemu-img", "convert", "-O", "qcow2", "-o", "compat=0.10,cluster_size=512", "SRC", "OUT"}}},
	{name: "tiny-v3-512", size: 16 << 10, cmds: [][]string{{"qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=512", "SRC", "OUT"}}},
	{name: "tiny-v2-512", size: 16 << 10, cmds: [][]string{{"qemu-img", "convert", "-O", "qcow2", "-o", "compat=0.10,cluster_size=512", "SRC", "OUT"}}},
	{name: "v3-4k", size: 1 << 20, cmds: [][]string{{"qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=4096", "SRC", "OUT"}}},
	{name: "v3-2m", size: 3 << 20, cmds: [][]string{{"qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=2M", "SRC", "OUT"}}},
	{name: "compressed-64k", size: 1 << 20, cmds: [][]string{{"qemu-img", "convert", "-c", "-O", "qcow2", "SRC", "OUT"}}},
	{name: "compressed-v2-512", size: 256 << 10, cmds: [][]string{{"qemu-img", "convert", "-c", "-O", "qcow2", "-o", "compat=0.10,cluster_size=512", "SRC", "OUT"}}},
	{name: "zero-v3-4k", size: 1 << 20, cmds: [][]string{
		{"qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=4096", "SRC", "OUT"},
		{"qemu-io", "-c", "write -z 8k 8k", "-c", "write -z -u 40k 4k", "-c", "write -z 600k 64k", "OUT"},
	}},
	{name: "snapshot-64k", size: 1 << 20, cmds: [][]string{
		{"qemu-img", "convert", "-O", "qcow2", "SRC", "OUT"},
		{"qemu-img", "snapshot", "-c", "s1", "OUT"},
		{"qemu-io", "-c", "write -P 0x77 64k 64k", "-c", "write -z 256k 64k", "OUT"},
	}},
	{name: "bitmap-64k", size: 1 << 20, cmds: [][]string{
		{"qemu-img", "convert", "-O", "qcow2", "SRC", "OUT"},
		{"qemu-img", "bitmap", "--add", "OUT", "b0"},
	}},
	{name: "luks-v3-4k-aes128-sha1", size: 128 << 10, encrypted: true, cmds: [][]string{
		{"qemu-img", "convert", "--object", "secret,id=sec0,data=" + testPassphrase, "-O", "qcow2", "-o",
			"cluster_size=4096,encrypt.format=luks,encrypt.key-secret=sec0,encrypt.cipher-alg=aes-128,encrypt.hash-alg=sha1,encrypt.iter-time=50", "SRC", "OUT"},
	}},
	{name: "backing", refuse: `backing file "base.qcow2"`, cmds: [][]string{
		{"qemu-img", "create", "-f", "qcow2", "base.qcow2", "1M"},
		{"qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=512", "-b", "base.qcow2", "-F", "qcow2", "OUT"},
	}},
	{name: "data-file", refuse: `external data file "data.raw"`, cmds: [][]string{
		{"qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=512,data_file=data.raw", "OUT", "1M"},
	}},
	{name: "extended-l2", refuse: "extended L2 entries", cmds: [][]string{
		{"qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=16k,extended_l2=on", "OUT", "1M"},
	}},
	{name: "zstd", refuse: "zstd compression", cmds: [][]string{
		{"qemu-img", "create", "-f", "qcow2", "-o", "cluster_size=512,compression_type=zstd", "OUT", "1M"},
	}},
}

// seedSource is the raw content seeds are made from: mostly zeros and byte patterns, with
// some random 512-byte runs, so that the gzipped seeds stay small.
func seedSource(size int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, size)
	for off := 0; off < size; off += 4096 {
		if off > size/3 && off < size/2 {
			continue
		}
		switch rng.IntN(8) {
		case 0:
			for i := off; i < off+512; i++ {
				b[i] = byte(rng.Uint32())
			}
		case 1, 2, 3:
			for i := off; i < off+4096; i++ {
				b[i] = byte(i/512) ^ byte(seed)
			}
		}
	}
	return b
}

// seedInfo is a seed's entry in testdata/seeds.json, what qemu-img says of the image.
type seedInfo struct {
	Name      string     `json:"name"`
	Size      int64      `json:"size,omitempty"`
	SHA256    string     `json:"sha256,omitempty"`     // of the guest content, from qemu-img convert -O raw
	Map       [][3]int64 `json:"map,omitempty"`        // qemu-img map: offset, length, data (0/1), merged
	MasterKey string     `json:"master_key,omitempty"` // hex, of encrypted seeds
	Refuse    string     `json:"refuse,omitempty"`     // the refusal Open gives
}

// TestSeeds opens the qemu-made images in testdata (no tool needed) and checks them against
// what qemu-img said of them when they were made: the guest content's sha256 and the map
// of data, or the refusal by name. With -update it first remakes them.
func TestSeeds(t *testing.T) {
	if *update {
		makeSeeds(t)
	}
	seeds := loadSeeds(t)
	if len(seeds) != len(seedSpecs) {
		t.Fatalf("testdata/seeds.json has %d seeds, seedSpecs %d: run go test ./qcow2 -run TestSeeds -update", len(seeds), len(seedSpecs))
	}
	for _, s := range seeds {
		t.Run(s.Name, func(t *testing.T) {
			b := gunzip(t, filepath.Join("testdata", s.Name+".qcow2.gz"))
			img, err := Open(bytes.NewReader(b), int64(len(b)), Options{CacheClusters: 2})
			if s.Refuse != "" {
				if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), s.Refuse) {
					t.Fatalf("Open: %v\nwant ErrUnsupported naming %q", err, s.Refuse)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img.Size() != s.Size {
				t.Fatalf("Size %d, want %d", img.Size(), s.Size)
			}
			var c SectorCipher
			if s.MasterKey != "" {
				mk, _ := hex.DecodeString(s.MasterKey)
				sc, err := sector.New(mk, 512)
				if err != nil {
					t.Fatal(err)
				}
				c = sc
			}
			got := readAll(t, img, c)
			if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != s.SHA256 {
				t.Fatalf("guest content differs from what qemu-img read")
			}
			ext, err := img.Map(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(mapTriples(ext)) != fmt.Sprint(s.Map) {
				t.Fatalf("Map = %v\nqemu-img map: %v", mapTriples(ext), s.Map)
			}
			if img.Encrypted() && tooltest.Long() {
				// The recorded master key is the one the passphrase unlocks.
				if mk := masterKey(t, img); hex.EncodeToString(mk) != s.MasterKey {
					t.Fatal("the passphrase unlocks another master key than the recorded one")
				}
			}
		})
	}
}

func mapTriples(ext []Extent) [][3]int64 {
	var out [][3]int64
	for _, e := range ext {
		d := int64(0)
		if e.Data {
			d = 1
		}
		out = append(out, [3]int64{e.Offset, e.Length, d})
	}
	return out
}

func loadSeeds(t testing.TB) []seedInfo {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "seeds.json"))
	if err != nil {
		t.Fatal(err)
	}
	var seeds []seedInfo
	if err := json.Unmarshal(b, &seeds); err != nil {
		t.Fatal(err)
	}
	return seeds
}

// makeSeeds remakes every seed with qemu-img and qemu-io and rewrites testdata/seeds.json.
func makeSeeds(t *testing.T) {
	tools := tooltest.Require(t, "qemu-img", "qemu-io")
	dir := t.TempDir()
	var infos []seedInfo
	for i, s := range seedSpecs {
		out := filepath.Join(dir, s.name+".qcow2")
		if s.size > 0 {
			writeFile(t, dir, s.name+".raw", seedSource(s.size, uint64(i)))
		}
		for _, cmd := range s.cmds {
			args := make([]string, len(cmd)-1)
			for j, a := range cmd[1:] {
				a = strings.ReplaceAll(a, "SRC", s.name+".raw")
				args[j] = strings.ReplaceAll(a, "OUT", s.name+".qcow2")
			}
			runIn(t, dir, tools[cmd[0]], args...)
		}
		img, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		var zb bytes.Buffer
		zw, err := gzip.NewWriterLevel(&zb, gzip.BestCompression)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := zw.Write(img); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("testdata", s.name+".qcow2.gz"), zb.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		info := seedInfo{Name: s.name, Refuse: s.refuse}
		if s.refuse != "" {
			infos = append(infos, info)
			continue
		}
		opts := imageOpts(out, s.encrypted)
		raw := filepath.Join(dir, s.name+".out")
		runIn(t, dir, tools["qemu-img"], "convert", "--object", "secret,id=sec0,data="+testPassphrase, "--image-opts", opts, "-O", "raw", raw)
		content, err := os.ReadFile(raw)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(content)
		info.SHA256 = hex.EncodeToString(sum[:])
		info.Size = int64(len(content))
		var qmap []struct {
			Start, Length int64
			Data          bool
		}
		js := runIn(t, dir, tools["qemu-img"], "map", "--output=json", "--object", "secret,id=sec0,data="+testPassphrase, "--image-opts", opts)
		if err := json.Unmarshal([]byte(js), &qmap); err != nil {
			t.Fatalf("qemu-img map: %v\n%s", err, js)
		}
		for _, e := range qmap {
			d := int64(0)
			if e.Data {
				d = 1
			}
			if k := len(info.Map) - 1; k >= 0 && info.Map[k][2] == d {
				info.Map[k][1] += e.Length
				continue
			}
			info.Map = append(info.Map, [3]int64{e.Start, e.Length, d})
		}
		if s.encrypted {
			info.MasterKey = hex.EncodeToString(masterKey(t, openPath(t, out)))
		}
		infos = append(infos, info)
	}
	// One line per seed.
	lines := make([]string, len(infos))
	for i, info := range infos {
		js, err := json.Marshal(info)
		if err != nil {
			t.Fatal(err)
		}
		lines[i] = "  " + string(js)
	}
	js := "[\n" + strings.Join(lines, ",\n") + "\n]\n"
	if err := os.WriteFile(filepath.Join("testdata", "seeds.json"), []byte(js), 0o644); err != nil {
		t.Fatal(err)
	}
}
