package source

import (
	"context"
	"fmt"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
)

// LayoutPrefix starts a source setting that names an OCI image layout
// directory: "oci-layout:/media/usb/nvidia".
const LayoutPrefix = "oci-layout:"

// RefNameAnnotation names an image inside an OCI layout's index.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// Layout reads images from an OCI image layout directory, for hosts
// without a registry (a USB stick, an air-gapped mirror). Images are found
// by their org.opencontainers.image.ref.name annotation: the bare tag, or
// any reference ending in ":<tag>".
type Layout struct {
	path string
	opts Options
}

// NewLayout returns a Layout for the directory path. The directory is read
// when an image is asked for, so a stick plugged in later still works.
func NewLayout(path string, opts Options) *Layout {
	return &Layout{path: path, opts: opts.withDefaults()}
}

// Image finds tag in the layout's index. It returns an error when the
// layout cannot be read, holds no image for tag, the image's digest
// differs from a pin, or it is for another platform. Layer streams are
// verified against their digests as they are read.
func (l *Layout) Image(_ context.Context, tag string) (*Image, error) {
	p, err := layout.FromPath(l.path)
	if err != nil {
		return nil, fmt.Errorf("read OCI layout: %w", err) // err names the path
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("read OCI layout %s: %w", l.path, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("read OCI layout %s: index: %w", l.path, err)
	}
	var found *v1.Descriptor
	for i, d := range im.Manifests {
		n := d.Annotations[RefNameAnnotation]
		if n == tag || strings.HasSuffix(n, ":"+tag) {
			found = &im.Manifests[i]
			break
		}
	}
	ref := l.path + ":" + tag
	if found == nil {
		return nil, fmt.Errorf("OCI layout %s has no image tagged %s", l.path, tag)
	}
	if pin, ok := l.opts.Digests[tag]; ok && found.Digest.String() != pin {
		return nil, refusal(fmt.Sprintf("%s resolves to %s, but digests pins %s", ref, found.Digest, pin))
	}
	if found.Size > MaxManifestBytes {
		return nil, fmt.Errorf("%s: manifest of %d bytes: %w (the limit is %d)", ref, found.Size, ErrTooLarge, MaxManifestBytes)
	}
	img, err := l.pick(idx, *found)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return describe(ref, "oci-layout "+l.path, found.Digest, img, l.opts.Platform, true)
}

// pick returns the image a descriptor names, choosing by platform when it
// names an index. Manifests are checked against their digests: unlike a
// registry, a layout directory is just files that anyone may have edited.
func (l *Layout) pick(idx v1.ImageIndex, d v1.Descriptor) (v1.Image, error) {
	if !d.MediaType.IsIndex() {
		return checked(idx.Image, d.Digest)
	}
	child, err := idx.ImageIndex(d.Digest)
	if err != nil {
		return nil, err
	}
	// The index names the images: an edited one would lead a pinned tag
	// to another image whose own manifest is intact.
	if got, err := child.Digest(); err != nil {
		return nil, err
	} else if got != d.Digest {
		return nil, fmt.Errorf("index %s has digest %s", d.Digest, got)
	}
	cm, err := child.IndexManifest()
	if err != nil {
		return nil, err
	}
	for _, m := range cm.Manifests {
		if m.Platform != nil && m.Platform.Satisfies(l.opts.Platform) {
			return checked(child.Image, m.Digest)
		}
	}
	return nil, refusal(fmt.Sprintf("no image for platform %s in index %s", l.opts.Platform.String(), d.Digest))
}

// checked gets the image with digest want and checks that its manifest
// really hashes to want.
func checked(get func(v1.Hash) (v1.Image, error), want v1.Hash) (v1.Image, error) {
	img, err := get(want)
	if err != nil {
		return nil, err
	}
	got, err := img.Digest()
	if err != nil {
		return nil, err
	}
	if got != want {
		return nil, fmt.Errorf("manifest %s has digest %s", want, got)
	}
	return img, nil
}

// WriteLayout stores img in the OCI layout directory path (created if
// missing) under the reference name refName, replacing an image of the
// same name, and returns its digest.
func WriteLayout(path, refName string, img v1.Image) (v1.Hash, error) {
	p, err := layout.FromPath(path)
	if err != nil {
		if p, err = layout.Write(path, empty.Index); err != nil {
			return v1.Hash{}, fmt.Errorf("create OCI layout %s: %w", path, err)
		}
	}
	if err := p.ReplaceImage(img, match.Annotation(RefNameAnnotation, refName),
		layout.WithAnnotations(map[string]string{RefNameAnnotation: refName})); err != nil {
		return v1.Hash{}, fmt.Errorf("write %s to OCI layout %s: %w", refName, path, err)
	}
	d, err := img.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("write %s to OCI layout %s: %w", refName, path, err)
	}
	return d, nil
}

// WriteLayoutIndex is WriteLayout for an image index (one image per
// platform), replacing what the layout held under refName.
func WriteLayoutIndex(path, refName string, idx v1.ImageIndex) (v1.Hash, error) {
	p, err := layout.FromPath(path)
	if err != nil {
		if p, err = layout.Write(path, empty.Index); err != nil {
			return v1.Hash{}, fmt.Errorf("create OCI layout %s: %w", path, err)
		}
	}
	if err := p.ReplaceIndex(idx, match.Annotation(RefNameAnnotation, refName),
		layout.WithAnnotations(map[string]string{RefNameAnnotation: refName})); err != nil {
		return v1.Hash{}, fmt.Errorf("write %s to OCI layout %s: %w", refName, path, err)
	}
	d, err := idx.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("write %s to OCI layout %s: %w", refName, path, err)
	}
	return d, nil
}
