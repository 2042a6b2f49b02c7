package unpack_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// benchLayer returns a tar stream of about 64 MiB: files of assorted sizes
// (512 B to 4 MiB, like a driver's libraries, firmware and modules) in 16
// directories, each with a SONAME-style symlink. File data is drawn from 16
// symbols so that it compresses about as well as binaries do.
func benchLayer(b *testing.B) []byte {
	sizes := []int{512, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20}
	rng := rand.New(rand.NewChaCha8([32]byte{}))
	var ents []ent
	total := 0
	for i := 0; total < 64<<20; i++ {
		dir := fmt.Sprintf("lib64/d%02d", i%16)
		if i < 16 {
			ents = append(ents, dirEnt(dir+"/", 0o755))
		}
		size := sizes[i%len(sizes)]
		data := make([]byte, size)
		for j := range data {
			data[j] = "0123456789abcdef"[rng.IntN(16)]
		}
		name := fmt.Sprintf("%s/lib%d.so.550.54.14", dir, i)
		ents = append(ents, fileEnt(name, string(data), 0o755), symlinkEnt(fmt.Sprintf("%s/lib%d.so.1", dir, i), fmt.Sprintf("lib%d.so.550.54.14", i)))
		total += size
	}
	return layerTar(b, ents...)
}

// BenchmarkApply unpacks a 64 MiB layer into a fresh directory per
// iteration, from plain tar and through Decompress from gzip and zstd.
// MB/s is of the uncompressed stream.
func BenchmarkApply(b *testing.B) {
	plain := benchLayer(b)
	for _, c := range []struct {
		name, mediaType string
		blob            []byte
	}{
		{"tar", unpack.MediaTypeTar, plain},
		{"gzip", unpack.MediaTypeTarGzip, gzipped(b, plain)},
		{"zstd", unpack.MediaTypeTarZstd, zstded(b, plain)},
	} {
		b.Run(c.name, func(b *testing.B) {
			parent := b.TempDir()
			b.SetBytes(int64(len(plain)))
			for b.Loop() {
				dir, err := os.MkdirTemp(parent, "staging-")
				if err != nil {
					b.Fatal(err)
				}
				applyBlob(b, dir, c.blob, c.mediaType)
				b.StopTimer()
				if err := os.RemoveAll(dir); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(len(c.blob))/float64(len(plain)), "ratio")
		})
	}
}

// applyBlob decompresses blob and applies it into dir.
func applyBlob(b *testing.B, dir string, blob []byte, mediaType string) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		b.Fatal(err)
	}
	defer root.Close()
	rc, err := unpack.Decompress(bytes.NewReader(blob), mediaType)
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	if err := unpack.NewTree(root, unpack.Limits{}).Apply(b.Context(), 0, rc, unpack.Ordered); err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		b.Fatal(err)
	}
}
