package unpack_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/zstd"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// watched is a layer blob that fails the test when read after closed is
// set.
type watched struct {
	t      *testing.T
	r      io.Reader
	closed atomic.Bool
}

func (w *watched) Read(p []byte) (int, error) {
	if w.closed.Load() {
		w.t.Error("blob read after Close returned")
	}
	return w.r.Read(p)
}

func TestDecompressPipeline(t *testing.T) {
	t.Parallel()
	// 8 MiB that do not compress, so the blob is much longer than the
	// pipeline reads ahead.
	big := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	plain := layerTar(t, fileEnt("lib64/libcuda.so.1", string(big), 0o755))
	for _, c := range []struct {
		name, mediaType string
		blob            []byte
	}{
		{"gzip", unpack.MediaTypeTarGzip, gzipped(t, plain)},
		{"zstd", unpack.MediaTypeTarZstd, zstded(t, plain)},
		{"plain tar", unpack.MediaTypeTar, plain},
	} {
		t.Run(c.name+": an error reading the blob at its end surfaces from Read", func(t *testing.T) {
			bad := errors.New("blob: content has another digest")
			rc, err := unpack.Decompress(io.MultiReader(bytes.NewReader(c.blob), iotest.ErrReader(bad)), c.mediaType)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(rc)
			if !errors.Is(err, bad) {
				t.Errorf("error %v, want %v", err, bad)
			}
			if !bytes.Equal(got, plain) {
				t.Errorf("got %d bytes before the error, want the %d of the tar stream", len(got), len(plain))
			}
		})

		t.Run(c.name+": the blob is not read once Close returns", func(t *testing.T) {
			w := &watched{t: t, r: iotest.HalfReader(bytes.NewReader(c.blob))}
			rc, err := unpack.Decompress(w, c.mediaType)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(rc, make([]byte, 100000)); err != nil {
				t.Fatal(err)
			}
			if err := rc.Close(); err != nil {
				t.Error(err)
			}
			w.closed.Store(true)
			if _, err := rc.Read(make([]byte, 10)); err == nil {
				t.Error("Read after Close succeeds")
			}
		})
	}

	t.Run("Window is the history the decoder keeps", func(t *testing.T) {
		small := layerTar(t, fileEnt("lib64/libcuda.so.1", "cuda", 0o755))
		var window2 bytes.Buffer
		zw, err := zstd.NewWriter(&window2, zstd.WithWindowSize(2<<20))
		if err != nil {
			t.Fatal(err)
		}
		zw.Write(plain)
		zw.Close()
		for _, c := range []struct {
			name, mediaType string
			blob            []byte
			want            int64
		}{
			{"gzip", unpack.MediaTypeTarGzip, gzipped(t, small), 32 << 10},
			{"zstd with a 2 MiB window", unpack.MediaTypeTarZstd, window2.Bytes(), 2 << 20},
			{"zstd after a skippable frame", unpack.MediaTypeTarZstd,
				append([]byte{0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0}, window2.Bytes()...), 8 << 20},
			{"plain tar", unpack.MediaTypeTar, small, 0},
		} {
			s, err := unpack.Decompress(bytes.NewReader(c.blob), c.mediaType)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Window(); got != c.want {
				t.Errorf("%s: window %d, want %d", c.name, got, c.want)
			}
			if _, err := io.Copy(io.Discard, s); err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			s.Close()
		}
	})

	t.Run("layers decompressed one after another reuse the zstd decoder cleanly", func(t *testing.T) {
		blob := zstded(t, plain)
		for range 3 {
			got, err := readAll(blob, unpack.MediaTypeTarZstd)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("got %d bytes, %v", len(got), err)
			}
		}
		// Abandoned halfway, then reused.
		rc, err := unpack.Decompress(bytes.NewReader(blob), unpack.MediaTypeTarZstd)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		got, err := readAll(blob, unpack.MediaTypeTarZstd)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("after an abandoned stream: got %d bytes, %v", len(got), err)
		}
	})
}
