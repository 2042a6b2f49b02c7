package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
)

// tag is the tag the sample host asks for: the default tag template,
// <os-version>-<driver>.
const tag = osVersion + "-" + driver

// loopbackRegistry is go-containerregistry's registry, blobs in memory,
// served on 127.0.0.1.
type loopbackRegistry struct {
	srv  *httptest.Server
	host string // 127.0.0.1:PORT
}

func startRegistry() (*loopbackRegistry, error) {
	// httptest listens on 127.0.0.1 only.
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	u, err := url.Parse(srv.URL)
	if err != nil {
		srv.Close()
		return nil, err
	}
	return &loopbackRegistry{srv: srv, host: u.Host}, nil
}

func (r *loopbackRegistry) Close() { r.srv.Close() }

// repo returns the repository for name in the registry.
func (r *loopbackRegistry) repo(name string) string { return r.host + "/" + name }

// builtImage is an image published into the registry.
type builtImage struct {
	repo      string // registry/repository, without the tag
	mediaType string // of the first layer
	layers    []publish.LayerInfo
	took      time.Duration // publish.Build
}

// compression names the layers' compression.
func (b *builtImage) compression() string {
	switch {
	case strings.HasSuffix(b.mediaType, "zstd"):
		return "zstd"
	case strings.HasSuffix(b.mediaType, "gzip"):
		return "gzip"
	}
	return b.mediaType
}

// ref returns the image's reference with its tag.
func (b *builtImage) ref() string { return b.repo + ":" + tag }

// fileBytes and size sum the layers' uncompressed file bytes and their
// compressed sizes.
func (b *builtImage) fileBytes() (n int64) {
	for _, l := range b.layers {
		n += l.Bytes
	}
	return n
}

func (b *builtImage) size() (n int64) {
	for _, l := range b.layers {
		n += l.Size
	}
	return n
}

// publishImage builds an image of the driver tree at dir with the
// project's own publish package and pushes it to repo with the project's
// own registry client. tmp holds the compressed layers while they are
// pushed.
func publishImage(ctx context.Context, dir, tmp, kernel, repo, insecureHost string, opts publish.Options) (*builtImage, error) {
	opts.Labels = map[string]string{
		publish.LabelDriver:   driver,
		publish.LabelOSID:     osID,
		publish.LabelOSVer:    osVersion,
		publish.LabelKernel:   kernel,
		publish.LabelVermagic: kernel + " " + kernelFlags,
	}
	opts.Platform = source.DefaultPlatform()
	opts.TempDir = tmp
	start := time.Now()
	built, err := publish.Build(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", repo, err)
	}
	defer built.Close()
	took := time.Since(start)
	reg, err := source.NewRegistry(repo, source.Options{Insecure: []string{insecureHost}})
	if err != nil {
		return nil, err
	}
	if _, err := reg.Push(ctx, tag, built.Image); err != nil {
		return nil, err
	}
	// What the layers are compressed with, as the image says, not as
	// asked: the default is publish's to choose.
	layers, err := built.Image.Layers()
	if err != nil || len(layers) == 0 {
		return nil, fmt.Errorf("publish %s: no layers (%v)", repo, err)
	}
	mt, err := layers[0].MediaType()
	if err != nil {
		return nil, err
	}
	return &builtImage{repo: repo, mediaType: string(mt), layers: built.Layers, took: took}, nil
}
