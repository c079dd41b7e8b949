package qcow2_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"os"

	"crkvol/qcow2"
)

// Example writes a sparse 1 MiB disk as a qcow2 image, then opens it, lists its extents
// and reads it back.
func Example() {
	ctx := context.Background()
	disk := make([]byte, 1<<20)
	copy(disk[4096:], "hello")
	copy(disk[700<<10:], "world")

	f, err := os.CreateTemp("", "example-*.qcow2")
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	stats, err := qcow2.Write(ctx, f, bytes.NewReader(disk), nil, qcow2.WriteOptions{Size: int64(len(disk))})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("wrote %d data clusters, %d bytes\n", stats.DataClusters, stats.FileSize)

	img, err := qcow2.Open(f, stats.FileSize, qcow2.Options{})
	if err != nil {
		log.Fatal(err)
	}
	extents, err := img.Map(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range extents {
		fmt.Printf("%7d +%7d data=%v\n", e.Offset, e.Length, e.Data)
	}
	r, err := img.Reader(nil) // a plain image: no cipher
	if err != nil {
		log.Fatal(err)
	}
	got, err := io.ReadAll(io.NewSectionReader(r, 0, img.Size()))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same content:", bytes.Equal(got, disk))
	// Output:
	// wrote 2 data clusters, 458752 bytes
	//       0 +  65536 data=true
	//   65536 + 589824 data=false
	//  655360 +  65536 data=true
	//  720896 + 327680 data=false
	// same content: true
}
