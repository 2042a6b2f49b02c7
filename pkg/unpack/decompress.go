package unpack

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Layer media types Decompress reads.
const (
	MediaTypeTar        = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeTarGzip    = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeTarZstd    = "application/vnd.oci.image.layer.v1.tar+zstd"
	MediaTypeDockerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
)

// MaxZstdWindow is the largest zstd window Decompress accepts. The window
// is memory the decoder must hold; a hostile frame may ask for gigabytes.
// Encoders use 8 MiB at their default levels and 128 MiB at the highest.
const MaxZstdWindow = 128 << 20

// sniffSize is how many leading bytes Decompress looks at.
const sniffSize = 4

// compression is what a layer stream is compressed with.
type compression string

const (
	none     compression = "plain tar"
	gzipped  compression = "gzip"
	zstdened compression = "zstd"
)

// Magic numbers. A zstd stream may also begin with a skippable frame,
// magic 0x184D2A50 to 0x184D2A5F, little-endian.
const (
	gzipMagic = "\x1f\x8b"
	zstdMagic = "\x28\xb5\x2f\xfd"
)

// mediaCompression returns the compression a layer media type names, and
// false for a media type this package does not read.
func mediaCompression(mediaType string) (compression, bool) {
	switch mediaType {
	case MediaTypeTar:
		return none, true
	case MediaTypeTarGzip, MediaTypeDockerGzip:
		return gzipped, true
	case MediaTypeTarZstd:
		return zstdened, true
	}
	return "", false
}

// sniff returns the compression the leading bytes of a stream show, none
// for anything else (a tar stream has no magic number at its start).
func sniff(head []byte) compression {
	switch {
	case bytes.HasPrefix(head, []byte(gzipMagic)):
		return gzipped
	case bytes.HasPrefix(head, []byte(zstdMagic)):
		return zstdened
	case len(head) == 4 && head[0]&0xf0 == 0x50 && head[1] == 0x2a && head[2] == 0x4d && head[3] == 0x18:
		return zstdened // skippable frame
	}
	return none
}

// describe says what a stream with leading bytes head, sniffed as c, is.
func describe(c compression, head []byte) string {
	switch {
	case c != none:
		return "is " + string(c)
	case len(head) == 0:
		return "is empty"
	}
	return fmt.Sprintf("starts % x, which is neither gzip nor zstd", head)
}

// Decompress returns a reader of the uncompressed tar stream of a layer
// blob r with media type mediaType: gzip (MediaTypeTarGzip,
// MediaTypeDockerGzip), zstd (MediaTypeTarZstd) or plain tar
// (MediaTypeTar). The zstd decoder runs on one goroutine in low-memory mode
// and refuses windows over MaxZstdWindow, so a hostile frame cannot make it
// allocate gigabytes; how much the stream may expand to is bounded by
// Apply's Limits.
//
// The leading bytes are checked against the media type: it returns an
// error when they show another compression than the media type says (a
// gzip type with bytes that are not gzip, a plain tar that is compressed).
// It also returns an error for an unknown media type, naming it, when r
// cannot be read, and when the gzip header is malformed. Errors in the
// compressed data later surface from Read.
//
// Closing the returned reader releases the decoder; it does not close r.
func Decompress(r io.Reader, mediaType string) (io.ReadCloser, error) {
	want, ok := mediaCompression(mediaType)
	if !ok {
		return nil, fmt.Errorf("decompress layer: unknown media type %q", mediaType)
	}
	br := bufio.NewReader(r)
	head, err := br.Peek(sniffSize)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("decompress layer: read leading bytes: %w", err)
	}
	if got := sniff(head); got != want {
		return nil, fmt.Errorf("decompress layer: media type %q says %s, but the stream %s", mediaType, want, describe(got, head))
	}
	switch want {
	case gzipped:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("decompress layer: read gzip header: %w", err)
		}
		return zr, nil
	case zstdened:
		zr, err := zstd.NewReader(br,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(MaxZstdWindow),
		)
		if err != nil {
			return nil, fmt.Errorf("decompress layer: start zstd decoder: %w", err)
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}
