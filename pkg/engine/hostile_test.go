package engine

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
)

// hostileSource is a registry source with the tight limits of a test: a
// read stalls after 300 ms, each request is tried twice.
func (r *testRegistry) hostileSource(t *testing.T) *source.Registry {
	t.Helper()
	s, err := source.NewRegistry(r.host+"/nvidia-driver", source.Options{Insecure: []string{r.host}, Platform: amd64,
		Retry: source.Retry{Attempts: 2, Base: time.Millisecond, Max: time.Millisecond}, StallTimeout: 300 * time.Millisecond})
	must(t, err)
	return s
}

// zstdLayer is a layer holding tar entries and then pad zero bytes, zstd
// compressed.
func zstdLayer(t *testing.T, pad int64, entries func(*tar.Writer)) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	must(t, err)
	tw := tar.NewWriter(zw)
	entries(tw)
	must(t, tw.Close())
	if pad > 0 {
		_, err = io.Copy(zw, io.LimitReader(zeros{}, pad))
		must(t, err)
	}
	must(t, zw.Close())
	return static.NewLayer(buf.Bytes(), types.OCILayerZStd)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// repeat is an endless stream of one byte.
type repeat byte

func (r repeat) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// bigImage is an image whose one layer holds 4 MiB of random bytes, too
// much to arrive before a test's deadlines at the rates below.
func bigImage(t *testing.T) v1.Image {
	t.Helper()
	data := make([]byte, 4<<20)
	rand.Read(data)
	return imageOf(t, zstdLayer(t, 0, func(tw *tar.Writer) {
		must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "lib64/libbig.so", Mode: 0o644, Size: int64(len(data))}))
		_, err := tw.Write(data)
		must(t, err)
	}))
}

// slowly serves the registry's real answer to r: first bytes at once,
// then chunk every pause (forever stalled when chunk is 0), until the
// client goes away.
func slowly(reg http.Handler, w http.ResponseWriter, r *http.Request, first, chunk int, pause time.Duration) {
	rec := httptest.NewRecorder()
	reg.ServeHTTP(rec, r)
	body := rec.Body.Bytes()
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rec.Code)
	n := min(first, len(body))
	w.Write(body[:n])
	w.(http.Flusher).Flush()
	for n < len(body) {
		select {
		case <-r.Context().Done():
			return
		case <-time.After(pause):
		}
		if chunk == 0 {
			continue
		}
		m := min(n+chunk, len(body))
		if _, err := w.Write(body[n:m]); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		n = m
	}
}

// imageOf is an image of the given layers with the test's labels.
func imageOf(t *testing.T, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	must(t, err)
	cfg, err := img.ConfigFile()
	must(t, err)
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Config.Labels = "linux", "amd64", labels(kernel, vermagic)
	img, err = mutate.ConfigFile(img, cfg)
	must(t, err)
	return img
}

// manifestOf answers the tag's manifest with m instead of the registry.
func manifestOf(m any) func(w http.ResponseWriter, r *http.Request) bool {
	body, _ := json.Marshal(m)
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/manifests/"+tag) {
			return false
		}
		w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if r.Method == http.MethodGet {
			w.Write(body)
		}
		return true
	}
}

// TestHostileRegistry is the table of registries that answer without
// limits: each fetch must end, in bounded time and memory, with an error
// naming what exceeded what, leaving the old tree current and intact.
func TestHostileRegistry(t *testing.T) {
	cases := []struct {
		name string
		// image is what is pushed first; fault then answers instead of
		// the registry where it returns true.
		image   func(t *testing.T) v1.Image
		fault   func(backend http.Handler, isLayer func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool
		timeout time.Duration // the fetch-timeout, when the case needs one
		want    string
	}{
		{
			name: "headers, then a stalled manifest body",
			fault: func(backend http.Handler, isLayer func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.Contains(r.URL.Path, "/manifests/") {
						return false
					}
					w.Header().Set("Content-Length", "1000")
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
					<-r.Context().Done()
					return true
				}
			},
			want: "download stalled",
		},
		{
			name:  "a layer that stalls half way",
			image: bigImage,
			fault: func(backend http.Handler, isLayer func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !isLayer(r) {
						return false
					}
					slowly(backend, w, r, 1<<20, 0, 50*time.Millisecond)
					return true
				}
			},
			want: "download stalled",
		},
		{
			name:  "a layer trickled a few bytes at a time",
			image: bigImage,
			fault: func(backend http.Handler, isLayer func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !isLayer(r) {
						return false
					}
					slowly(backend, w, r, 0, 5, 20*time.Millisecond)
					return true
				}
			},
			want: "download stalled",
		},
		{
			name:  "a registry fast enough never to stall, but endless",
			image: bigImage,
			fault: func(backend http.Handler, isLayer func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !isLayer(r) {
						return false
					}
					slowly(backend, w, r, 0, 32<<10, 100*time.Millisecond)
					return true
				}
			},
			timeout: 1500 * time.Millisecond,
			want:    "took longer than fetch-timeout",
		},
		{
			name: "a redirect loop",
			fault: func(backend http.Handler, isLayer func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !isLayer(r) {
						return false
					}
					http.Redirect(w, r, r.URL.String(), http.StatusTemporaryRedirect)
					return true
				}
			},
			want: "stopped after 10 redirects",
		},
		{
			name: "a 100 MB manifest announced by its length",
			fault: func(backend http.Handler, isLayer func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.Contains(r.URL.Path, "/manifests/") {
						return false
					}
					w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
					w.Header().Set("Content-Length", strconv.Itoa(100<<20))
					w.WriteHeader(http.StatusOK)
					io.Copy(w, io.LimitReader(zeros{}, 100<<20))
					return true
				}
			},
			want: "manifest of 104857600 bytes: too large",
		},
		{
			name: "a 100 MB manifest sent without a length",
			fault: func(backend http.Handler, isLayer func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
				return func(w http.ResponseWriter, r *http.Request) bool {
					if !strings.Contains(r.URL.Path, "/manifests/") {
						return false
					}
					w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
					w.WriteHeader(http.StatusOK)
					w.Write([]byte(`{"schemaVersion": 2, "annotations": {"x": "`))
					io.Copy(w, io.LimitReader(repeat('a'), 100<<20))
					return true
				}
			},
			want: "more than 4194304 bytes: too large",
		},
		{
			name: "a 2 GB config",
			fault: func(http.Handler, func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
				return manifestOf(v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
					Config: v1.Descriptor{MediaType: types.OCIConfigJSON, Size: 2 << 30,
						Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}}})
			},
			want: "config of 2147483648 bytes: too large",
		},
		{
			name: "5,001 layers",
			fault: func(backend http.Handler, isLayer func(*http.Request) bool) func(w http.ResponseWriter, r *http.Request) bool {
				m := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
					Config: v1.Descriptor{MediaType: types.OCIConfigJSON, Size: 2,
						Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("b", 64)}}}
				for i := range 5001 {
					m.Layers = append(m.Layers, v1.Descriptor{MediaType: types.OCILayer, Size: 32,
						Digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", i)}})
				}
				return manifestOf(m)
			},
			want: "5001 layers: too large",
		},
		{
			name: "a small layer whose tar is followed by 200 MB of zeros",
			image: func(t *testing.T) v1.Image {
				return imageOf(t, zstdLayer(t, 200<<20, func(tw *tar.Writer) {
					must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/x", Mode: 0o755, Size: 1}))
					_, err := tw.Write([]byte("x"))
					must(t, err)
				}))
			},
			want: "more than 1048576 bytes follow the end of its tar archive",
		},
		{
			name: "1,000 names 2,000 directories deep",
			image: func(t *testing.T) v1.Image {
				return imageOf(t, zstdLayer(t, 0, func(tw *tar.Writer) {
					for i := range 1000 {
						name := strings.Repeat("d/", 2000) + strconv.Itoa(i)
						must(t, tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Format: tar.FormatPAX}))
					}
				}))
			},
			want: "deeper than 64",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reg := newRegistry(t)
			img := build(t, driverTree(t, kernel, vermagic), labels(kernel, vermagic))
			if c.image != nil {
				img = c.image(t)
			}
			reg.push(t, tag, img)
			if c.fault != nil {
				config, err := img.ConfigName()
				must(t, err)
				reg.fault = c.fault(reg.backend, func(r *http.Request) bool {
					return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") && !strings.HasSuffix(r.URL.Path, config.String())
				})
			}
			h := newHost(t)
			f := h.fetcher(reg.hostileSource(t))
			f.Timeout = c.timeout
			if f.Timeout == 0 {
				f.Timeout = time.Minute
			}

			outside := snapshotOutside(t, h.root)
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := f.Fetch(context.Background(), target())
			took := time.Since(start)
			var after runtime.MemStats
			runtime.ReadMemStats(&after)

			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Fetch = %v, want an error with %q", err, c.want)
			}
			if took > 20*time.Second {
				t.Errorf("took %v", took)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 256<<20 {
				t.Errorf("allocated %d MiB", alloc>>20)
			}
			t.Logf("%v, %d MiB allocated: %v", took.Round(time.Millisecond), (after.TotalAlloc-before.TotalAlloc)>>20, err)
			h.assertOldCurrent(t)
			if got := snapshotOutside(t, h.root); !maps.Equal(got, outside) {
				t.Errorf("the host changed outside the store: %v, was %v", got, outside)
			}
			if errors.Is(err, context.Canceled) {
				t.Error("the fetch was cancelled, not bounded")
			}
		})
	}
}

// snapshotOutside describes everything under root but the store: what a
// fetch must never change.
func snapshotOutside(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	must(t, filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "opt/nvidia" {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		out[rel] = fmt.Sprintf("%v %d %v", info.Mode(), info.Size(), info.ModTime().UnixNano())
		return nil
	}))
	return out
}
