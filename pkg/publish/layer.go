package publish

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// zstdWindow is the window zstd layers are written with. The installer
// holds one window per layer it unpacks at once, so a small window keeps
// its memory small; driver binaries gain nothing from a larger one
// (libLLVM, cc1 and libz3 together: 32.57 % of their size at 2 MiB,
// 32.56 % at the encoder's default 8 MiB).
const zstdWindow = 2 << 20

// zstdLevel is the zstd level of layers: "better" decodes as fast as the
// default level and is 4 % smaller on driver binaries (11 % on the install
// benchmark's image), so it downloads faster; it takes twice as long to
// publish.
const zstdLevel = zstd.SpeedBetterCompression

// fileLayer is a compressed layer kept in a temporary file. It implements
// v1.Layer.
type fileLayer struct {
	path      string
	digest    v1.Hash // of the compressed bytes
	diffID    v1.Hash // of the tar stream
	size      int64
	mediaType types.MediaType
}

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	var r io.ReadCloser
	switch l.mediaType {
	case types.OCILayerZStd:
		d, err := zstd.NewReader(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		r = d.IOReadCloser()
	default:
		g, err := gzip.NewReader(f)
		if err != nil {
			f.Close()
			return nil, err
		}
		r = g
	}
	return &closeBoth{Reader: r, closers: []io.Closer{r, f}}, nil
}

type closeBoth struct {
	io.Reader
	closers []io.Closer
}

func (c *closeBoth) Close() error {
	var first error
	for _, cl := range c.closers {
		if err := cl.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// countingHash hashes and counts what is written through it.
type countingHash struct {
	h hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.h.Write(p)
}

// writeLayer writes the entries as one compressed tar layer into a new
// file in tmp and returns it as a layer.
func writeLayer(tmp string, src string, entries []entry, comp Compression) (*fileLayer, error) {
	f, err := os.CreateTemp(tmp, "layer-*")
	if err != nil {
		return nil, err
	}
	l, err := fillLayer(f, src, entries, comp)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	l.path = f.Name()
	return l, nil
}

func fillLayer(f *os.File, src string, entries []entry, comp Compression) (*fileLayer, error) {
	compressed := &countingHash{h: sha256.New()}
	var zw io.WriteCloser
	var mt types.MediaType
	var err error
	out := io.MultiWriter(f, compressed)
	switch comp {
	case Zstd:
		mt = types.OCILayerZStd
		zw, err = zstd.NewWriter(out, zstd.WithEncoderLevel(zstdLevel), zstd.WithWindowSize(zstdWindow))
	default:
		mt = types.OCILayer
		zw, err = gzip.NewWriterLevel(out, gzip.DefaultCompression)
	}
	if err != nil {
		return nil, err
	}
	uncompressed := &countingHash{h: sha256.New()}
	tw := tar.NewWriter(io.MultiWriter(zw, uncompressed))
	for _, e := range entries {
		if err := writeEntry(tw, src, e); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return &fileLayer{
		digest:    v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", compressed.h.Sum(nil))},
		diffID:    v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", uncompressed.h.Sum(nil))},
		size:      compressed.n,
		mediaType: mt,
	}, nil
}

func writeEntry(tw *tar.Writer, src string, e entry) error {
	hdr := &tar.Header{Name: e.name, Mode: int64(e.mode), ModTime: e.mtime, Format: tar.FormatPAX}
	switch e.kind {
	case kindDir:
		hdr.Typeflag, hdr.Name = tar.TypeDir, e.name+"/"
	case kindSymlink:
		hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, e.target
	case kindHardlink:
		hdr.Typeflag, hdr.Linkname = tar.TypeLink, e.target
	default:
		hdr.Typeflag, hdr.Size = tar.TypeReg, e.size
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write %s: %w", e.name, err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.Open(filepath.Join(src, filepath.FromSlash(e.name)))
	if err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	f.Close()
	if err != nil {
		return fmt.Errorf("write %s: %w", e.name, err)
	}
	if n != e.size {
		return fmt.Errorf("write %s: file changed size while publishing", e.name)
	}
	return nil
}
