package main

import (
	"bytes"
	"io"
	"testing"

	"github.com/klauspost/compress/gzip"
)

func TestContent(t *testing.T) {
	read := func(name string, n int) []byte {
		b := make([]byte, n)
		if _, err := io.ReadFull(newContent(seed, name), b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	t.Run("the same name gives the same bytes, read in any pieces", func(t *testing.T) {
		whole := read("lib64/libcuda.so", 3*chunkSize/2)
		c := newContent(seed, "lib64/libcuda.so")
		var pieces bytes.Buffer
		for _, n := range []int{1, 4095, chunkSize, chunkSize/2 - 4096} {
			if _, err := io.CopyN(&pieces, c, int64(n)); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(whole, pieces.Bytes()) {
			t.Error("content differs between reads")
		}
		if bytes.Equal(whole[:4096], read("lib64/libnvidia-ml.so", 4096)) {
			t.Error("two names give the same content")
		}
		for _, n := range []int{100, 70000, chunkSize + 5} {
			sized := make([]byte, n)
			if _, err := io.ReadFull(newContent(seed, "lib64/libcuda.so").sized(int64(n)), sized); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(sized, whole[:n]) {
				t.Errorf("the first %d bytes differ when the size is given", n)
			}
		}
	})
	t.Run("gzip keeps about 40 %", func(t *testing.T) {
		data := read("lib64/libcuda.so", 4<<20)
		var gz bytes.Buffer
		w, err := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if r := float64(gz.Len()) / float64(len(data)); r < 0.36 || r > 0.44 {
			t.Errorf("gzip ratio %.3f, want about 0.40", r)
		}
	})
}
