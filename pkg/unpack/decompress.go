package unpack

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

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

// Read-ahead of the two stages of Decompress, per layer: compressed bytes
// as they arrive, and decompressed bytes ready for the tar reader. A
// layer in flight holds at most these buffers besides its decoder.
const (
	inputBuffers   = 4
	inputBuffer    = 128 << 10
	outputBuffers  = 4
	outputBuffer   = 256 << 10
	decoderBufSize = 64 << 10 // the bufio.Reader the decoder reads through
)

var (
	inputPool  = newBufferPool(inputBuffer)
	outputPool = newBufferPool(outputBuffer)
	// zstdDecoders are idle zstd decoders. A decoder keeps its history
	// (the frame's window, 1 to 8 MiB as encoders write them) across
	// Reset, so handing it to the next layer spares allocating another
	// window per layer and leaving the last one to the collector. One
	// that held a larger window (up to MaxZstdWindow) keeps it while
	// idle; the pool is emptied within two garbage collections.
	zstdDecoders sync.Pool // *zstd.Decoder
)

// Decompress returns a reader of the uncompressed tar stream of a layer
// blob r with media type mediaType: gzip (MediaTypeTarGzip,
// MediaTypeDockerGzip), zstd (MediaTypeTarZstd) or plain tar
// (MediaTypeTar). The zstd decoder runs in low-memory mode and refuses
// windows over MaxZstdWindow, so a hostile frame cannot make it allocate
// gigabytes; how much the stream may expand to is bounded by Apply's
// Limits.
//
// The stream is read and decoded ahead of the caller, in a pipeline: r is
// read (network, digest checks) on one goroutine from the start, the
// decoder runs on another from the first Read, and the caller's goroutine
// parses and writes, each stage a few buffers ahead of the next and no
// further (see the constants above), so one layer keeps up to three cores
// busy.
//
// The leading bytes are checked against the media type: it returns an
// error when they show another compression than the media type says (a
// gzip type with bytes that are not gzip, a plain tar that is compressed).
// It also returns an error for an unknown media type, naming it, when r
// cannot be read, and when the gzip header is malformed. Errors in the
// compressed data, and errors reading r, later surface from Read; for
// gzip and zstd, Read returns io.EOF only once r has returned io.EOF.
//
// Closing the returned Stream stops the pipeline and releases the
// decoder; it does not close r. r may be read until Close returns, which
// waits for a Read of r in progress (as a caller reading r itself would
// wait): cancel the request behind r to abandon a stalled download.
func Decompress(r io.Reader, mediaType string) (*Stream, error) {
	want, ok := mediaCompression(mediaType)
	if !ok {
		return nil, fmt.Errorf("decompress layer: unknown media type %q", mediaType)
	}
	in := newAheadReader(r, inputPool, inputBuffers)
	br := bufio.NewReaderSize(in, decoderBufSize)
	head, err := br.Peek(sniffSize)
	if err != nil && !errors.Is(err, io.EOF) {
		in.Close()
		return nil, fmt.Errorf("decompress layer: read leading bytes: %w", err)
	}
	if got := sniff(head); got != want {
		in.Close()
		return nil, fmt.Errorf("decompress layer: media type %q says %s, but the stream %s", mediaType, want, describe(got, head))
	}
	switch want {
	case gzipped:
		zr, err := gzip.NewReader(br)
		if err != nil {
			in.Close()
			return nil, fmt.Errorf("decompress layer: read gzip header: %w", err)
		}
		return &Stream{decoder: zr, closer: zr, in: in, window: gzipWindow}, nil
	case zstdened:
		// The decoder is taken at the first Read: one from the pool may
		// hold a window's memory already.
		return &Stream{zstdInput: br, in: in, window: zstdWindow(br)}, nil
	}
	return &Stream{out: br, in: in}, nil
}

// gzipWindow is the history a gzip decoder keeps.
const gzipWindow = 32 << 10

// unknownZstdWindow is the window assumed for a zstd stream whose first
// frame does not say (it is skippable): the window encoders use by
// default.
const unknownZstdWindow = 8 << 20

// zstdWindow returns the window the first frame of the zstd stream in br
// declares, at most MaxZstdWindow. It only peeks.
func zstdWindow(br *bufio.Reader) int64 {
	head, _ := br.Peek(zstd.HeaderMaxSize)
	var h zstd.Header
	switch {
	case h.Decode(head) != nil || h.Skippable:
		return unknownZstdWindow
	case h.SingleSegment:
		return int64(min(h.FrameContentSize, MaxZstdWindow))
	}
	return int64(min(h.WindowSize, MaxZstdWindow))
}

// zstdDecoder returns a zstd decoder reading r, from zstdDecoders or new:
// on one goroutine, in low-memory mode, refusing windows over
// MaxZstdWindow.
func zstdDecoder(r io.Reader) (*zstd.Decoder, error) {
	if d, ok := zstdDecoders.Get().(*zstd.Decoder); ok {
		if err := d.Reset(r); err == nil {
			return d, nil
		}
		d.Close()
	}
	return zstd.NewReader(r,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		zstd.WithDecoderMaxWindow(MaxZstdWindow),
	)
}

// pooledZstd closes a decoder by returning it to zstdDecoders, detached
// from its reader.
type pooledZstd struct{ d *zstd.Decoder }

func (p pooledZstd) Close() error {
	if err := p.d.Reset(nil); err != nil {
		p.d.Close()
		return nil
	}
	zstdDecoders.Put(p.d)
	return nil
}

// Stream is the reader Decompress returns: the uncompressed tar stream of
// a layer, read ahead.
type Stream struct {
	out       io.Reader     // the last stage: ahead, or the bufio.Reader over in for plain tar
	decoder   io.Reader     // nil for plain tar, and for zstd until the first Read
	zstdInput *bufio.Reader // what a zstd decoder reads; nil for gzip and plain tar
	closer    io.Closer     // releases the decoder
	ahead     *aheadReader
	in        *aheadReader
	window    int64
	closed    bool
}

// Window returns how many bytes of history the decoder keeps while the
// stream is read, besides the fixed read-ahead buffers: the window the
// zstd frame declares (or 8 MiB when it does not say; at most
// MaxZstdWindow), 32 KiB for gzip, 0 for plain tar. The decoder holds no
// window before the first Read, so a caller can wait until memory allows.
func (s *Stream) Window() int64 { return s.window }

// Read returns the uncompressed bytes, then io.EOF or the first error.
// The first Read takes a decoder (for zstd) and starts it on its
// goroutine.
func (s *Stream) Read(b []byte) (int, error) {
	if s.closed {
		return 0, errReadAfterClose
	}
	if s.out == nil {
		if s.zstdInput != nil {
			zr, err := zstdDecoder(s.zstdInput)
			if err != nil {
				return 0, fmt.Errorf("decompress layer: start zstd decoder: %w", err)
			}
			s.decoder, s.closer, s.zstdInput = zr, pooledZstd{zr}, nil
		}
		s.ahead = newAheadReader(s.decoder, outputPool, outputBuffers)
		s.out = s.ahead
	}
	return s.out.Read(b)
}

// Close stops the stages from the last to the first, each waiting for its
// goroutine, so that the decoder is released only once nothing runs it
// and r is left alone once Close returns.
func (s *Stream) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	var err error
	if s.ahead != nil {
		s.ahead.Close()
	}
	if s.closer != nil {
		err = s.closer.Close()
	}
	s.in.Close()
	return err
}
