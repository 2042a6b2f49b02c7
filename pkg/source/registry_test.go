package source

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
)

// fastRetry keeps attempts few; waits are recorded, not slept.
var fastRetry = Retry{Attempts: 3, Base: 100 * time.Millisecond, Max: time.Second}

func TestRegistryFetch(t *testing.T) {
	ctx := context.Background()

	t.Run("a plain fetch returns the digest, the labels and layers that verify", func(t *testing.T) {
		reg := startRegistry(t, false)
		img := driverImage(t, amd64)
		cfg, err := img.ConfigFile()
		must(t, err)
		cfg = cfg.DeepCopy()
		cfg.Config.Labels["test.config-only"] = "config"
		cfg.Config.Labels["test.both"] = "config"
		img, err = mutate.ConfigFile(img, cfg)
		must(t, err)
		img = mutate.Annotations(img, map[string]string{"test.annotation-only": "annotation", "test.both": "annotation"}).(v1.Image)
		want := push(t, reg, reg.repo(), testTag, img)
		reg.reset()

		src, sl := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: amd64})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		if got.Digest != want || got.Ref != reg.repo()+":"+testTag+"@"+want.String() || got.Source != "registry "+reg.host {
			t.Fatalf("got digest %s, ref %s, source %q; want %s", got.Digest, got.Ref, got.Source, want)
		}
		for k, v := range map[string]string{
			"test.config-only": "config", "test.annotation-only": "annotation", "test.both": "annotation",
			publish.LabelDriver: "550.54.14", publish.LayoutLabel: publish.LayoutDisjoint,
		} {
			if got.Labels[k] != v {
				t.Errorf("label %s = %q, want %q", k, got.Labels[k], v)
			}
		}
		m, err := img.Manifest()
		must(t, err)
		if len(got.Layers) != len(m.Layers) || len(m.Layers) != 4 {
			t.Fatalf("%d layers, manifest has %d", len(got.Layers), len(m.Layers))
		}
		var sum int64
		for i, l := range got.Layers {
			d := m.Layers[i]
			if l.Digest != d.Digest || l.Size != d.Size || l.MediaType != d.MediaType {
				t.Errorf("layer %d is %s %d %s, manifest says %s %d %s", i, l.Digest, l.Size, l.MediaType, d.Digest, d.Size, d.MediaType)
			}
			sum += d.Size
		}
		if got.Size() != sum {
			t.Errorf("Size() = %d, want %d", got.Size(), sum)
		}
		if n := reg.count(http.MethodGet, blobPath(m.Layers[0].Digest)); n != 0 {
			t.Fatalf("a layer was downloaded %d times before it was opened", n)
		}
		must(t, readAll(got))
		for _, d := range m.Layers {
			if n := reg.count(http.MethodGet, blobPath(d.Digest)); n != 1 {
				t.Errorf("layer %s downloaded %d times, want 1", d.Digest, n)
			}
		}
		if len(sl.all()) != 0 {
			t.Errorf("waited %v on a healthy registry", sl.all())
		}
	})
}

func TestRegistryRetries(t *testing.T) {
	ctx := context.Background()
	img := driverImage(t, amd64)
	layer := layerDigests(t, img)[3] // the libraries: the largest

	setup := func(t *testing.T, retry Retry) (*testRegistry, *Registry, *sleeps) {
		reg := startRegistry(t, false)
		push(t, reg, reg.repo(), testTag, img)
		reg.reset()
		src, sl := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: amd64, Retry: retry})
		return reg, src, sl
	}

	t.Run("a manifest answered with 503 twice is served on the third attempt", func(t *testing.T) {
		reg, src, sl := setup(t, Retry{Attempts: 5, Base: 100 * time.Millisecond, Max: time.Second})
		reg.fault(http.MethodGet, manifestPath(testTag), 2, status(http.StatusServiceUnavailable))
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
		if n := reg.count(http.MethodGet, manifestPath(testTag)); n != 3 {
			t.Fatalf("%d manifest GETs, want 3", n)
		}
		waits := sl.all()
		if len(waits) != 2 {
			t.Fatalf("waits %v, want 2", waits)
		}
		for i, w := range waits {
			d := 100 * time.Millisecond << i
			if w < d*3/4 || w > d*5/4 {
				t.Errorf("wait %d is %v, want %v ± 25%%", i+1, w, d)
			}
		}
	})

	t.Run("a 429 with Retry-After in seconds waits that long", func(t *testing.T) {
		reg, src, sl := setup(t, Retry{Attempts: 3, Base: 100 * time.Millisecond, Max: 15 * time.Second})
		reg.fault(http.MethodGet, manifestPath(testTag), 1, status(http.StatusTooManyRequests, "Retry-After", "7"))
		_, err := src.Image(ctx, testTag)
		must(t, err)
		if waits := sl.all(); len(waits) != 1 || waits[0] != 7*time.Second {
			t.Fatalf("waits %v, want [7s]", waits)
		}
		if n := reg.count(http.MethodGet, manifestPath(testTag)); n != 2 {
			t.Fatalf("%d manifest GETs, want 2", n)
		}
	})

	t.Run("a Retry-After longer than Max waits Max", func(t *testing.T) {
		reg, src, sl := setup(t, Retry{Attempts: 3, Base: 100 * time.Millisecond, Max: 3 * time.Second})
		reg.fault(http.MethodGet, manifestPath(testTag), 1, status(http.StatusTooManyRequests, "Retry-After", "7"))
		_, err := src.Image(ctx, testTag)
		must(t, err)
		if waits := sl.all(); len(waits) != 1 || waits[0] != 3*time.Second {
			t.Fatalf("waits %v, want [3s]", waits)
		}
	})

	t.Run("a Retry-After too large for a duration waits Max", func(t *testing.T) {
		reg, src, sl := setup(t, Retry{Attempts: 3, Base: 100 * time.Millisecond, Max: 3 * time.Second})
		reg.fault(http.MethodGet, manifestPath(testTag), 1, status(http.StatusTooManyRequests, "Retry-After", "10000000000"))
		_, err := src.Image(ctx, testTag)
		must(t, err)
		if waits := sl.all(); len(waits) != 1 || waits[0] != 3*time.Second {
			t.Fatalf("waits %v, want [3s]", waits)
		}
	})

	t.Run("a 503 with Retry-After as an HTTP date waits until that time", func(t *testing.T) {
		reg, src, sl := setup(t, Retry{Attempts: 3, Base: 100 * time.Millisecond, Max: 15 * time.Second})
		at := time.Now().Add(10 * time.Second).UTC().Format(http.TimeFormat)
		reg.fault(http.MethodGet, manifestPath(testTag), 1, status(http.StatusServiceUnavailable, "Retry-After", at))
		_, err := src.Image(ctx, testTag)
		must(t, err)
		// The date has whole seconds: the wait is 9 to 10 s, less the
		// time the test took to get here.
		if waits := sl.all(); len(waits) != 1 || waits[0] < 8*time.Second || waits[0] > 10*time.Second {
			t.Fatalf("waits %v, want about 10s", waits)
		}
	})

	t.Run("a registry failing every time is given up after Attempts, naming the reference", func(t *testing.T) {
		reg, src, sl := setup(t, Retry{Attempts: 4, Base: 100 * time.Millisecond, Max: time.Second})
		reg.fault(http.MethodGet, manifestPath(testTag), 0, status(http.StatusInternalServerError))
		_, err := src.Image(ctx, testTag)
		wantErr(t, err, reg.repo()+":"+testTag, "/v2/nvidia-driver/manifests/"+testTag)
		if errors.Is(err, ErrRefused) {
			t.Error("a broken registry is reported as a refused image")
		}
		if n := reg.count(http.MethodGet, manifestPath(testTag)); n != 4 {
			t.Fatalf("%d manifest GETs, want 4", n)
		}
		if waits := sl.all(); len(waits) != 3 {
			t.Fatalf("waits %v, want 3", waits)
		}
	})

	t.Run("a 404 is not retried", func(t *testing.T) {
		reg, src, sl := setup(t, fastRetry)
		_, err := src.Image(ctx, "no-such-tag")
		wantErr(t, err, reg.repo()+":no-such-tag", "has no image tagged no-such-tag")
		if n := reg.count(http.MethodGet, manifestPath("no-such-tag")); n != 1 {
			t.Fatalf("%d manifest GETs, want 1", n)
		}
		if waits := sl.all(); len(waits) != 0 {
			t.Fatalf("waits %v, want none", waits)
		}
	})

	t.Run("a connection reset mid-blob is resumed with a Range request", func(t *testing.T) {
		reg, src, _ := setup(t, fastRetry)
		reg.fault(http.MethodGet, blobPath(layer), 1, cutHalfway)
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
		reqs := reg.requests(http.MethodGet, blobPath(layer))
		if len(reqs) != 2 || reqs[0].rangeHeader != "" {
			t.Fatalf("blob requests %+v, want a plain GET and a ranged one", reqs)
		}
		size := got.Layers[3].Size
		if !strings.HasPrefix(reqs[1].rangeHeader, "bytes="+strconv.FormatInt(size/2, 10)+"-") {
			t.Fatalf("resumed with Range %q, want from byte %d of %d", reqs[1].rangeHeader, size/2, size)
		}
	})

	t.Run("a server without Range support after a reset is read again and skipped ahead", func(t *testing.T) {
		reg, src, _ := setup(t, fastRetry)
		reg.fault(http.MethodGet, blobPath(layer), 1, cutHalfway)
		reg.fault(http.MethodGet, blobPath(layer), 0, ignoreRange)
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
		reqs := reg.requests(http.MethodGet, blobPath(layer))
		if len(reqs) != 2 || reqs[1].rangeHeader == "" {
			t.Fatalf("blob requests %+v, want a plain GET and a ranged one", reqs)
		}
	})

	t.Run("a resume answered from another offset fails instead of splicing", func(t *testing.T) {
		reg, src, _ := setup(t, fastRetry)
		reg.fault(http.MethodGet, blobPath(layer), 1, cutHalfway)
		reg.fault(http.MethodGet, blobPath(layer), 0, func(w http.ResponseWriter, r *http.Request, next http.Handler) {
			rec := capture(next, r.Clone(r.Context())) // the range as asked, then claim it starts at 0
			n := rec.Body.Len()
			w.Header().Set("Content-Range", "bytes 0-"+strconv.Itoa(n-1)+"/*")
			w.Header().Set("Content-Length", strconv.Itoa(n))
			w.WriteHeader(http.StatusPartialContent)
			w.Write(rec.Body.Bytes())
		})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		wantErr(t, readAll(got), layer.String(), "resumed at")
		if n := reg.count(http.MethodGet, blobPath(layer)); n != 2 {
			t.Fatalf("%d blob GETs, want 2", n)
		}
	})

	t.Run("a blob cut short every time fails after Attempts downloads", func(t *testing.T) {
		reg, src, _ := setup(t, fastRetry)
		reg.fault(http.MethodGet, blobPath(layer), 0, cutHalfway)
		got, err := src.Image(ctx, testTag)
		must(t, err)
		err = readAll(got)
		wantErr(t, err, layer.String(), "unexpected EOF")
		if n := reg.count(http.MethodGet, blobPath(layer)); n != fastRetry.Attempts {
			t.Fatalf("%d blob GETs, want %d", n, fastRetry.Attempts)
		}
	})

	t.Run("a blob with other bytes of the same length fails its digest check", func(t *testing.T) {
		reg, src, sl := setup(t, fastRetry)
		reg.fault(http.MethodGet, blobPath(layer), 0, corrupt)
		got, err := src.Image(ctx, testTag)
		must(t, err)
		wantErr(t, readAll(got), "checksum", layer.String())
		if n := reg.count(http.MethodGet, blobPath(layer)); n != 1 {
			t.Fatalf("%d blob GETs, want 1", n)
		}
		if waits := sl.all(); len(waits) != 0 {
			t.Fatalf("waits %v, want none", waits)
		}
	})

	t.Run("a cancelled context stops the retries", func(t *testing.T) {
		reg, src, _ := setup(t, Retry{Attempts: 50, Base: time.Millisecond, Max: time.Millisecond})
		ctx, cancel := context.WithCancel(ctx)
		reg.fault(http.MethodGet, manifestPath(testTag), 0, func(w http.ResponseWriter, r *http.Request, next http.Handler) {
			cancel()
			status(http.StatusServiceUnavailable)(w, r, next)
		})
		_, err := src.Image(ctx, testTag)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if n := reg.count(http.MethodGet, manifestPath(testTag)); n != 1 {
			t.Fatalf("%d manifest GETs after the cancel, want 1", n)
		}
	})
}

func TestRegistryRefusals(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t, false)
	amdImg, armImg := driverImage(t, amd64), driverImage(t, arm64)
	amdDigest := push(t, reg, reg.repo(), testTag, amdImg)
	push(t, reg, reg.repo(), "arm-only", armImg)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: armImg, Descriptor: v1.Descriptor{Platform: &arm64}},
		mutate.IndexAddendum{Add: amdImg, Descriptor: v1.Descriptor{Platform: &amd64}},
	)
	ref, err := name.NewTag(reg.repo()+":multi", name.Insecure)
	must(t, err)
	must(t, remote.WriteIndex(ref, idx))
	idxDigest := digestOf(t, idx)

	t.Run("a lone manifest for another platform is refused, naming both", func(t *testing.T) {
		reg.reset()
		src, _ := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: amd64})
		_, err := src.Image(ctx, "arm-only")
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
		wantErr(t, err, "linux/arm64", "linux/amd64", "arm-only")
		for _, d := range layerDigests(t, armImg) {
			if n := reg.count(http.MethodGet, blobPath(d)); n != 0 {
				t.Fatalf("a layer of a refused image was downloaded")
			}
		}
	})

	for _, p := range []v1.Platform{amd64, arm64} {
		t.Run("an index resolves to the image for "+p.String(), func(t *testing.T) {
			src, _ := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: p})
			got, err := src.Image(ctx, "multi")
			must(t, err)
			if got.Digest != idxDigest || !strings.HasSuffix(got.Ref, ":multi@"+idxDigest.String()) {
				t.Fatalf("digest %s, ref %s; want the index's %s", got.Digest, got.Ref, idxDigest)
			}
			if got.Labels["test.arch"] != p.Architecture {
				t.Fatalf("got the image for %s", got.Labels["test.arch"])
			}
			must(t, readAll(got))
		})
	}

	t.Run("an index without this platform is an error naming the platform", func(t *testing.T) {
		src, _ := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: v1.Platform{OS: "linux", Architecture: "riscv64"}})
		_, err := src.Image(ctx, "multi")
		wantErr(t, err, "linux/riscv64")
	})

	t.Run("a tag pinned to another digest is refused, naming both digests", func(t *testing.T) {
		other := "sha256:" + strings.Repeat("ab", 32)
		src, _ := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: amd64, Digests: map[string]string{testTag: other}})
		_, err := src.Image(ctx, testTag)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
		wantErr(t, err, amdDigest.String(), other)
	})

	t.Run("a tag pinned to its digest is accepted", func(t *testing.T) {
		src, _ := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: amd64, Digests: map[string]string{testTag: amdDigest.String()}})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		if got.Digest != amdDigest {
			t.Fatalf("got %s", got.Digest)
		}
	})

	t.Run("a malformed pin is refused when the source is made", func(t *testing.T) {
		_, err := NewRegistry(reg.repo(), Options{Digests: map[string]string{testTag: "sha256:nope"}})
		wantErr(t, err, testTag)
	})
}

func TestRegistryMirrors(t *testing.T) {
	ctx := context.Background()
	img := driverImage(t, amd64)
	layer := layerDigests(t, img)[0]

	t.Run("a mirror without the tag falls back to the repository", func(t *testing.T) {
		main, mirror := startRegistry(t, false), startRegistry(t, false)
		want := push(t, main, main.repo(), testTag, img)
		main.reset()
		src, _ := newSource(t, main.repo(), Options{Insecure: []string{main.host, mirror.host}, Mirrors: []string{mirror.host + "/mirror/nvidia-driver"}, Platform: amd64, Retry: fastRetry})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
		if got.Digest != want || got.Source != "registry "+main.host {
			t.Fatalf("got %s from %s", got.Digest, got.Source)
		}
		if n := mirror.count(http.MethodGet, "/mirror/nvidia-driver"+manifestPath(testTag)); n != 1 {
			t.Errorf("mirror saw %d manifest GETs, want 1", n)
		}
		if n := main.count(http.MethodGet, blobPath(layer)); n != 1 {
			t.Errorf("repository served the layer %d times, want 1", n)
		}
	})

	t.Run("a mirror with the tag serves it and the repository is not asked", func(t *testing.T) {
		main, mirror := startRegistry(t, false), startRegistry(t, false)
		want := push(t, main, main.repo(), testTag, img)
		push(t, mirror, mirror.host+"/mirror/nvidia-driver", testTag, img)
		main.reset()
		mirror.reset()
		src, _ := newSource(t, main.repo(), Options{Insecure: []string{main.host, mirror.host}, Mirrors: []string{mirror.host + "/mirror/nvidia-driver"}, Platform: amd64, Retry: fastRetry})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
		if got.Digest != want || got.Source != "registry "+mirror.host || !strings.HasPrefix(got.Ref, mirror.host+"/mirror/nvidia-driver:") {
			t.Fatalf("got %s from %s (%s)", got.Digest, got.Source, got.Ref)
		}
		if n := main.count("", ""); n != 0 {
			t.Errorf("repository saw %d requests, want 0", n)
		}
		if n := mirror.count(http.MethodGet, blobPath(layer)); n != 1 {
			t.Errorf("mirror served the layer %d times, want 1", n)
		}
	})

	t.Run("a mirror that is down falls back to the repository", func(t *testing.T) {
		main, mirror := startRegistry(t, false), startRegistry(t, false)
		want := push(t, main, main.repo(), testTag, img)
		mirror.srv.Close()
		src, sl := newSource(t, main.repo(), Options{Insecure: []string{main.host, mirror.host}, Mirrors: []string{mirror.host + "/mirror/nvidia-driver"}, Platform: amd64, Retry: fastRetry})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
		if got.Digest != want || got.Source != "registry "+main.host {
			t.Fatalf("got %s from %s", got.Digest, got.Source)
		}
		if len(sl.all()) == 0 {
			t.Error("a refused connection was not retried")
		}
	})

	t.Run("when every place fails, the error names each", func(t *testing.T) {
		main, mirror := startRegistry(t, false), startRegistry(t, false)
		src, _ := newSource(t, main.repo(), Options{Insecure: []string{main.host, mirror.host}, Mirrors: []string{mirror.host + "/mirror/nvidia-driver"}, Platform: amd64, Retry: fastRetry})
		_, err := src.Image(ctx, testTag)
		wantErr(t, err, main.repo()+":"+testTag, mirror.host+"/mirror/nvidia-driver:"+testTag)
	})

	t.Run("a refusal from a mirror is final", func(t *testing.T) {
		main, mirror := startRegistry(t, false), startRegistry(t, false)
		push(t, main, main.repo(), testTag, img)
		push(t, mirror, mirror.host+"/mirror/nvidia-driver", testTag, driverImage(t, arm64))
		main.reset()
		src, _ := newSource(t, main.repo(), Options{Insecure: []string{main.host, mirror.host}, Mirrors: []string{mirror.host + "/mirror/nvidia-driver"}, Platform: amd64, Retry: fastRetry})
		_, err := src.Image(ctx, testTag)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
		if n := main.count("", ""); n != 0 {
			t.Errorf("repository saw %d requests after the mirror's refusal", n)
		}
	})
}

func TestRegistryTransportSecurity(t *testing.T) {
	ctx := context.Background()
	img := driverImage(t, amd64)

	tlsReg := startRegistry(t, true)
	pool := x509.NewCertPool()
	pool.AddCert(tlsReg.srv.Certificate())
	want := push(t, tlsReg, tlsReg.repo(), testTag, img)

	t.Run("a TLS registry with an untrusted certificate is refused", func(t *testing.T) {
		tlsReg.reset()
		src, sl := newSource(t, tlsReg.repo(), Options{Platform: amd64, Retry: fastRetry})
		_, err := src.Image(ctx, testTag)
		wantErr(t, err, "certificate", tlsReg.repo()+":"+testTag)
		if waits := sl.all(); len(waits) != 0 {
			t.Errorf("a certificate error was retried: waits %v", waits)
		}
		if n := tlsReg.count("", "/manifests/"+testTag); n != 0 {
			t.Errorf("registry saw %d manifest requests", n)
		}
	})

	t.Run("a TLS registry whose CA is given is trusted", func(t *testing.T) {
		src, _ := newSource(t, tlsReg.repo(), Options{Platform: amd64, Retry: fastRetry, TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
		if got.Digest != want {
			t.Fatalf("got %s", got.Digest)
		}
	})

	t.Run("a TLS registry listed as insecure is reached without its CA", func(t *testing.T) {
		src, _ := newSource(t, tlsReg.repo(), Options{Platform: amd64, Retry: fastRetry, Insecure: []string{tlsReg.host}})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
	})

	plain := startRegistry(t, false)
	push(t, plain, plain.repo(), testTag, img)

	t.Run("a plain HTTP registry listed as insecure is reached", func(t *testing.T) {
		src, _ := newSource(t, plain.repo(), Options{Platform: amd64, Retry: fastRetry, Insecure: []string{plain.host}})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
	})

	t.Run("a plain HTTP registry not listed as insecure is refused", func(t *testing.T) {
		plain.reset()
		src, _ := newSource(t, plain.repo(), Options{Platform: amd64, Retry: fastRetry})
		_, err := src.Image(ctx, testTag)
		wantErr(t, err, plain.repo()+":"+testTag)
		if n := plain.count("", ""); n != 0 {
			t.Errorf("registry saw %d plain HTTP requests: %+v", n, plain.requests("", ""))
		}
	})
}

func TestRegistryBasicAuth(t *testing.T) {
	ctx := context.Background()
	img := driverImage(t, amd64)
	reg := startRegistry(t, false)
	want := push(t, reg, reg.repo(), testTag, img)
	reg.fault("", "", 0, func(w http.ResponseWriter, r *http.Request, next http.Handler) {
		if u, p, ok := r.BasicAuth(); ok && u == "driverd" && p == "s3cret" {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
	})
	dockerConfig := func(t *testing.T, user, pass string) {
		dir := t.TempDir()
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		must(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"auths":{"`+reg.host+`":{"auth":"`+auth+`"}}}`), 0o600))
		t.Setenv("DOCKER_CONFIG", dir)
	}

	t.Run("credentials from the Docker config are sent", func(t *testing.T) {
		dockerConfig(t, "driverd", "s3cret")
		src, _ := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: amd64, Retry: fastRetry, Keychain: authn.DefaultKeychain})
		got, err := src.Image(ctx, testTag)
		must(t, err)
		must(t, readAll(got))
		if got.Digest != want {
			t.Fatalf("got %s", got.Digest)
		}
	})

	t.Run("a wrong password is an error naming the refusal, not retried", func(t *testing.T) {
		dockerConfig(t, "driverd", "wrong")
		reg.forgetRequests()
		src, sl := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: amd64, Retry: fastRetry, Keychain: authn.DefaultKeychain})
		_, err := src.Image(ctx, testTag)
		wantErr(t, err, "UNAUTHORIZED", reg.repo()+":"+testTag)
		if n := reg.count(http.MethodGet, manifestPath(testTag)); n != 1 {
			t.Errorf("%d manifest GETs, want 1", n)
		}
		if waits := sl.all(); len(waits) != 0 {
			t.Errorf("waits %v, want none", waits)
		}
	})

	t.Run("no credentials at all is an error naming the refusal", func(t *testing.T) {
		src, _ := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: amd64, Retry: fastRetry})
		_, err := src.Image(ctx, testTag)
		wantErr(t, err, "UNAUTHORIZED")
	})
}

func TestRegistryMissingTag(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t, false)
	push(t, reg, reg.repo(), testTag, driverImage(t, amd64))
	src, _ := newSource(t, reg.repo(), Options{Insecure: []string{reg.host}, Platform: amd64, Retry: fastRetry})

	_, err := src.Image(ctx, "4081.2.0-550.54.14")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
	want := "repository " + reg.repo() + " has no image tagged 4081.2.0-550.54.14"
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}

	// A server failure is not "missing".
	reg.fault(http.MethodGet, manifestPath(testTag), 10, status(http.StatusInternalServerError))
	if _, err := src.Image(ctx, testTag); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("a 500 gave %v, want an error other than ErrNotFound", err)
	}
}
