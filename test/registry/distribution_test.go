// Package registry_test pushes driver images to, and fetches them from, a
// real third-party registry: the CNCF distribution server, as Debian ships
// it. test/registry/distribution.sh fetches the binary; point
// NVIDIA_DRIVERD_DISTRIBUTION at it:
//
//	NVIDIA_DRIVERD_DISTRIBUTION=$(test/registry/distribution.sh) go test ./test/registry/
package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
)

const tag = "3815.2.0-550.54.14"

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// distribution starts the registry server on a free loopback port with
// storage in a temporary directory, and returns its host:port once it
// answers. It skips the test when NVIDIA_DRIVERD_DISTRIBUTION is unset,
// unless NVIDIA_DRIVERD_REQUIRE_FIXTURES=1.
func distribution(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("NVIDIA_DRIVERD_DISTRIBUTION")
	if bin == "" {
		msg := "NVIDIA_DRIVERD_DISTRIBUTION is unset; run NVIDIA_DRIVERD_DISTRIBUTION=$(test/registry/distribution.sh) go test ./test/registry/"
		if os.Getenv("NVIDIA_DRIVERD_REQUIRE_FIXTURES") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	host := freeAddr(t)
	dir := t.TempDir()
	config := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  maintenance:
    uploadpurging:
      enabled: false
  redirect:
    disable: true
http:
  addr: %s
health:
  storagedriver:
    enabled: false
`, filepath.Join(dir, "storage"), host)
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "serve", cfg)
	var stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
	})

	// Poll a server that was just started: there is nothing to wait on
	// but its answer.
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("%s exited before answering: %v\n%s", bin, err, stderr.String())
		default:
		}
		resp, err := client.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return host
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer on %s: %v\n%s", bin, host, err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// driverImage builds a small driver image with publish.Build.
func driverImage(t *testing.T) v1.Image {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"bin/nvidia-smi":                             strings.Repeat("smi", 5000),
		"lib64/libcuda.so.550.54.14":                 strings.Repeat("cuda", 20000),
		"lib/modules/6.1.77-flatcar/video/nvidia.ko": strings.Repeat("ko", 4000),
		"firmware/nvidia/550.54.14/gsp_ga10x.bin":    strings.Repeat("gsp", 3000),
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("libcuda.so.550.54.14", filepath.Join(dir, "lib64/libcuda.so.1")); err != nil {
		t.Fatal(err)
	}
	b, err := publish.Build(dir, publish.Options{
		Platform:      amd64,
		LibraryLayers: 2,
		TempDir:       t.TempDir(),
		Labels:        map[string]string{publish.LabelDriver: "550.54.14", publish.LabelOSVer: "3815.2.0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.Image
}

// newSource returns a source for host's nvidia-driver repository, over
// plain HTTP, with no credentials.
func newSource(t *testing.T, host string) *source.Registry {
	t.Helper()
	r, err := source.NewRegistry(host+"/nvidia-driver", source.Options{
		Insecure: []string{host},
		Platform: amd64,
		Keychain: authn.NewMultiKeychain(),
		Retry:    source.Retry{Attempts: 3, Base: 10 * time.Millisecond, Max: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readAll(img *source.Image) error {
	for _, l := range img.Layers {
		rc, err := l.Open()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.Digest, err)
		}
	}
	return nil
}

func TestDistribution(t *testing.T) {
	host := distribution(t)
	ctx := context.Background()
	img := driverImage(t)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	src := newSource(t, host)

	t.Run("an image pushed with publish comes back with its digest and labels", func(t *testing.T) {
		got, err := src.Push(ctx, tag, img)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("Push returned %s, want %s", got, want)
		}
		fetched, err := src.Image(ctx, tag)
		if err != nil {
			t.Fatal(err)
		}
		if fetched.Digest != want || fetched.Ref != host+"/nvidia-driver:"+tag+"@"+want.String() {
			t.Fatalf("fetched %s (%s), want %s", fetched.Digest, fetched.Ref, want)
		}
		for k, v := range map[string]string{
			publish.LabelDriver: "550.54.14", publish.LabelOSVer: "3815.2.0",
			publish.LabelFormat: publish.FormatVersion, publish.LayoutLabel: publish.LayoutDisjoint,
		} {
			if fetched.Labels[k] != v {
				t.Errorf("label %s = %q, want %q", k, fetched.Labels[k], v)
			}
		}
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		if len(fetched.Layers) != len(m.Layers) {
			t.Fatalf("%d layers, want %d", len(fetched.Layers), len(m.Layers))
		}
		for i, l := range fetched.Layers {
			if l.Digest != m.Layers[i].Digest || l.Size != m.Layers[i].Size || l.MediaType != m.Layers[i].MediaType {
				t.Errorf("layer %d: %s %d %s, want %s %d %s", i, l.Digest, l.Size, l.MediaType, m.Layers[i].Digest, m.Layers[i].Size, m.Layers[i].MediaType)
			}
		}
		if err := readAll(fetched); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("pushing the same image again is accepted", func(t *testing.T) {
		if _, err := src.Push(ctx, tag, img); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a missing tag is an error naming it", func(t *testing.T) {
		_, err := src.Image(ctx, "3815.2.0-999.99")
		// distribution answers MANIFEST_UNKNOWN; that is "no such image",
		// not a registry failure.
		if !errors.Is(err, source.ErrNotFound) || !strings.Contains(err.Error(), "has no image tagged 3815.2.0-999.99") {
			t.Fatalf("got %v, want ErrNotFound naming the tag", err)
		}
	})

	t.Run("a download cut mid-blob resumes with a Range request distribution answers", func(t *testing.T) {
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		layer := m.Layers[len(m.Layers)-1].Digest
		proxy := cuttingProxy(t, host, "/blobs/"+layer.String())
		fetched, err := newSource(t, proxy.host).Image(ctx, tag)
		if err != nil {
			t.Fatal(err)
		}
		if err := readAll(fetched); err != nil {
			t.Fatal(err)
		}
		if r, codes := proxy.ranges(); len(r) != 1 || !strings.HasPrefix(r[0], "bytes=") || codes[0] != http.StatusPartialContent {
			t.Fatalf("Range headers %q answered with %v, want one resume answered with 206", r, codes)
		}
	})
}

// proxy forwards to a registry, cutting the first download of one blob
// in half, and records the Range headers of that blob's later requests
// and the status codes the registry answered them with.
type proxy struct {
	host  string
	mu    sync.Mutex
	cut   bool
	seen  []string
	codes []int
}

func (p *proxy) ranges() ([]string, []int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...), append([]int(nil), p.codes...)
}

func cuttingProxy(t *testing.T, upstream, suffix string) *proxy {
	t.Helper()
	p := &proxy{}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: upstream})
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Header.Get("Range") != "" {
			p.mu.Lock()
			p.codes = append(p.codes, resp.StatusCode)
			p.mu.Unlock()
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, suffix) {
			rp.ServeHTTP(w, r)
			return
		}
		p.mu.Lock()
		first := !p.cut
		p.cut = true
		if !first {
			p.seen = append(p.seen, r.Header.Get("Range"))
		}
		p.mu.Unlock()
		if !first {
			rp.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		rp.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes()[:rec.Body.Len()/2])
		w.(http.Flusher).Flush()
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(srv.Close)
	p.host = strings.TrimPrefix(srv.URL, "http://")
	return p
}
