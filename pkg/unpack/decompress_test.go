package unpack_test

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

func gzipped(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func zstded(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readAll decompresses blob as mediaType and returns the result, or the
// first error from Decompress, Read or Close.
func readAll(blob []byte, mediaType string) ([]byte, error) {
	rc, err := unpack.Decompress(bytes.NewReader(blob), mediaType)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rc)
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	return b, err
}

func TestDecompress(t *testing.T) {
	t.Parallel()
	plain := layerTar(t, fileEnt("lib64/libcuda.so.1", strings.Repeat("cuda ", 10000), 0o755))
	// A skippable frame (magic 0x184D2A53, 4 bytes of payload) may
	// begin a zstd stream.
	skippable := append([]byte{0x53, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 'm', 'e', 't', 'a'}, zstded(t, plain)...)

	for _, c := range []struct {
		name, mediaType string
		blob            []byte
	}{
		{"plain tar", unpack.MediaTypeTar, plain},
		{"OCI gzip", unpack.MediaTypeTarGzip, gzipped(t, plain)},
		{"Docker gzip", unpack.MediaTypeDockerGzip, gzipped(t, plain)},
		{"zstd", unpack.MediaTypeTarZstd, zstded(t, plain)},
		{"zstd after a skippable frame", unpack.MediaTypeTarZstd, skippable},
		{"concatenated gzip members", unpack.MediaTypeTarGzip, append(gzipped(t, plain[:1000]), gzipped(t, plain[1000:])...)},
	} {
		t.Run(c.name+" decompresses to the tar stream", func(t *testing.T) {
			got, err := readAll(c.blob, c.mediaType)
			if err != nil {
				t.Fatalf("decompress: %v", err)
			}
			if !bytes.Equal(got, plain) {
				t.Errorf("got %d bytes, want the %d of the tar stream", len(got), len(plain))
			}
		})
	}

	t.Run("an empty plain tar is an empty stream", func(t *testing.T) {
		got, err := readAll(nil, unpack.MediaTypeTar)
		if err != nil || len(got) != 0 {
			t.Errorf("got %q, %v; want nothing, nil", got, err)
		}
	})

	// A zstd frame header asking for a 1 GiB window (window descriptor
	// 0xa0: exponent 20, 2^(10+20) bytes), then an empty last block.
	hugeWindow := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa0, 0x01, 0x00, 0x00}
	corruptGzip := gzipped(t, plain)
	corruptGzip[len(corruptGzip)/2] ^= 0xff

	for _, c := range []struct {
		name, mediaType string
		blob            []byte
		want            string
	}{
		{"an unknown media type is named", "application/vnd.oci.image.layer.v1.tar+bzip2", plain,
			`decompress layer: unknown media type "application/vnd.oci.image.layer.v1.tar+bzip2"`},
		{"a gzip media type over plain tar bytes is refused", unpack.MediaTypeTarGzip, plain,
			`media type "application/vnd.oci.image.layer.v1.tar+gzip" says gzip, but the stream starts 6c 69 62 36, which is neither gzip nor zstd`},
		{"a gzip media type over zstd bytes is refused", unpack.MediaTypeDockerGzip, zstded(t, plain),
			"says gzip, but the stream is zstd"},
		{"a zstd media type over gzip bytes is refused", unpack.MediaTypeTarZstd, gzipped(t, plain),
			"says zstd, but the stream is gzip"},
		{"a plain tar media type over gzip bytes is refused", unpack.MediaTypeTar, gzipped(t, plain),
			"says plain tar, but the stream is gzip"},
		{"an empty gzip stream is refused", unpack.MediaTypeTarGzip, nil,
			"says gzip, but the stream is empty"},
		{"a truncated gzip header is an error", unpack.MediaTypeTarGzip, []byte{0x1f, 0x8b, 8},
			"read gzip header: unexpected EOF"},
		{"corrupt gzip data is an error", unpack.MediaTypeTarGzip, corruptGzip, "gzip"},
		{"a zstd window over the limit is refused", unpack.MediaTypeTarZstd, hugeWindow, "window size exceeded"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := readAll(c.blob, c.mediaType)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one containing %q", err, c.want)
			}
		})
	}
}
