package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Image is a driver image chosen for one host, not yet downloaded: its
// manifest and config have been read, its layers have not.
type Image struct {
	// Ref names what was fetched, with its digest
	// (registry.example.com/nvidia-driver:3815.2.0-550.54.14@sha256:...).
	Ref string
	// Source is "registry <host>" or "oci-layout <path>".
	Source string
	// Digest is the digest the tag resolved to (an index or a manifest).
	Digest v1.Hash
	// Labels are the config's labels overlaid with the manifest's
	// annotations.
	Labels map[string]string
	Layers []Layer
}

// Size is the sum of the layers' compressed sizes.
func (img *Image) Size() int64 {
	var n int64
	for _, l := range img.Layers {
		n += l.Size
	}
	return n
}

// Layer is one compressed layer of an Image.
type Layer struct {
	Digest    v1.Hash
	Size      int64
	MediaType types.MediaType
	open      func() (io.ReadCloser, error)
}

// Open starts reading the layer's compressed bytes. The stream is verified
// against Digest and Size: a short, long or altered stream ends in an
// error instead of io.EOF.
func (l Layer) Open() (io.ReadCloser, error) { return l.open() }

// Source finds the image for a tag.
type Source interface {
	// Image resolves tag to an image for this machine's platform. It
	// returns an error naming the reference when the image is absent, the
	// registry refuses, the digest does not match a pin, or the image is
	// for another platform.
	Image(ctx context.Context, tag string) (*Image, error)
}

// ErrRefused matches errors for an image that was found but must not be
// used: a digest that differs from its pin, another platform.
var ErrRefused = errors.New("image refused")

type refusal string

func (r refusal) Error() string        { return string(r) }
func (r refusal) Is(target error) bool { return target == ErrRefused }

// DefaultPlatform is this machine's platform.
func DefaultPlatform() v1.Platform {
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// checkPlatform refuses an image whose config names another platform. An
// index is resolved by platform by go-containerregistry; a lone manifest
// is not, so this is the check that catches an arm64 image tagged for an
// amd64 host.
func checkPlatform(ref string, cfg *v1.ConfigFile, want v1.Platform) error {
	if cfg.OS == "" && cfg.Architecture == "" {
		return nil
	}
	got := v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture, Variant: cfg.Variant}
	if got.OS != want.OS || got.Architecture != want.Architecture {
		return refusal(fmt.Sprintf("%s is for platform %s, this host is %s", ref, got.String(), want.String()))
	}
	return nil
}

// describe reads what an Image needs from a go-containerregistry image.
// verify wraps each layer's compressed stream in a digest check, for
// sources whose blobs go-containerregistry does not verify itself (its
// remote layers are verified already).
func describe(ref, source string, digest v1.Hash, img v1.Image, platform v1.Platform, verify bool) (*Image, error) {
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("read manifest of %s: %w", ref, err)
	}
	// Refused before the config or any layer is read.
	switch {
	case m.Config.Size > MaxConfigBytes:
		return nil, fmt.Errorf("%s: config of %d bytes: %w (the limit is %d)", ref, m.Config.Size, ErrTooLarge, MaxConfigBytes)
	case len(m.Layers) > MaxLayers:
		return nil, fmt.Errorf("%s: %d layers: %w (the limit is %d)", ref, len(m.Layers), ErrTooLarge, MaxLayers)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config of %s: %w", ref, err)
	}
	if verify {
		// The config decides the platform and the labels: an edited one
		// must not pass for the manifest's.
		if got, _, err := v1.SHA256(bytes.NewReader(raw)); err != nil || got != m.Config.Digest {
			return nil, fmt.Errorf("read config of %s: config %s has digest %s", ref, m.Config.Digest, got)
		}
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("read config of %s: %w", ref, err)
	}
	if err := checkPlatform(ref, cfg, platform); err != nil {
		return nil, err
	}
	out := &Image{Ref: ref + "@" + digest.String(), Source: source, Digest: digest, Labels: map[string]string{}}
	maps.Copy(out.Labels, cfg.Config.Labels)
	maps.Copy(out.Labels, m.Annotations)
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("list layers of %s: %w", ref, err)
	}
	if len(layers) != len(m.Layers) {
		return nil, fmt.Errorf("%s: manifest lists %d layers, image has %d", ref, len(m.Layers), len(layers))
	}
	for i, d := range m.Layers {
		l := layers[i]
		desc := d
		out.Layers = append(out.Layers, Layer{
			Digest: desc.Digest, Size: desc.Size, MediaType: desc.MediaType,
			open: func() (io.ReadCloser, error) {
				rc, err := l.Compressed()
				if err != nil {
					return nil, fmt.Errorf("open layer %s of %s: %w", desc.Digest, ref, err)
				}
				if verify {
					return newVerifier(rc, desc.Digest, desc.Size)
				}
				return rc, nil
			},
		})
	}
	return out, nil
}

// Caps on what an image's manifest may ask for, far above what a driver
// image needs (a few layers, a config of a few KiB).
const (
	MaxConfigBytes = 8 << 20
	MaxLayers      = 256
)

// verifier checks a stream against a digest and a size as it is read.
type verifier struct {
	rc     io.ReadCloser
	h      hash.Hash
	want   v1.Hash
	size   int64
	n      int64
	failed error
}

func newVerifier(rc io.ReadCloser, want v1.Hash, size int64) (io.ReadCloser, error) {
	if want.Algorithm != "sha256" {
		rc.Close()
		return nil, fmt.Errorf("blob %s: unsupported digest algorithm %q", want, want.Algorithm)
	}
	return &verifier{rc: rc, h: sha256.New(), want: want, size: size}, nil
}

// Read passes bytes through, hashing them. At the end of the stream it
// returns io.EOF only when size and digest match; otherwise an error
// naming the blob.
func (v *verifier) Read(p []byte) (int, error) {
	if v.failed != nil {
		return 0, v.failed
	}
	n, err := v.rc.Read(p)
	v.n += int64(n)
	v.h.Write(p[:n])
	switch {
	case v.n > v.size:
		v.failed = fmt.Errorf("blob %s: more than the %d bytes the manifest declares", v.want, v.size)
		return n, v.failed
	case errors.Is(err, io.EOF):
		if v.n != v.size {
			v.failed = fmt.Errorf("blob %s: truncated at %d of %d bytes", v.want, v.n, v.size)
			return n, v.failed
		}
		if got := hex.EncodeToString(v.h.Sum(nil)); got != v.want.Hex {
			v.failed = fmt.Errorf("blob %s: content has digest sha256:%s", v.want, got)
			return n, v.failed
		}
	}
	return n, err
}

func (v *verifier) Close() error { return v.rc.Close() }
