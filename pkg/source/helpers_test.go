package source

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
)

// testTag is the tag every test image is pushed under.
const testTag = "3815.2.0-550.54.14"

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64"}
)

// driverImage builds a small driver image for platform p: four layers
// (modules, firmware, binaries, libraries) of incompressible bytes, so
// that a blob is large enough to be cut in the middle. The image's
// labels name the platform's architecture under "test.arch".
func driverImage(t *testing.T, p v1.Platform) v1.Image {
	t.Helper()
	dir := t.TempDir()
	var seed [32]byte
	copy(seed[:], p.Architecture)
	rnd := rand.New(rand.NewChaCha8(seed))
	for _, f := range []struct {
		name string
		size int
	}{
		{"bin/nvidia-smi", 20 << 10},
		{"lib64/libcuda.so.550.54.14", 64 << 10},
		{"lib/modules/6.1.77-flatcar/video/nvidia.ko", 16 << 10},
		{"firmware/nvidia/550.54.14/gsp_ga10x.bin", 8 << 10},
	} {
		b := make([]byte, f.size)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		path := filepath.Join(dir, f.name)
		must(t, os.MkdirAll(filepath.Dir(path), 0o755))
		must(t, os.WriteFile(path, b, 0o755))
	}
	must(t, os.Symlink("libcuda.so.550.54.14", filepath.Join(dir, "lib64/libcuda.so.1")))
	b, err := publish.Build(dir, publish.Options{
		Platform:      p,
		LibraryLayers: 1,
		TempDir:       t.TempDir(),
		Labels: map[string]string{
			publish.LabelDriver: "550.54.14",
			publish.LabelOSVer:  "3815.2.0",
			"test.arch":         p.Architecture,
		},
	})
	must(t, err)
	t.Cleanup(func() { b.Close() })
	return b.Image
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func digestOf(t *testing.T, img interface{ Digest() (v1.Hash, error) }) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	must(t, err)
	return d
}

// readAll reads every layer of img to the end, as an installer would, and
// returns the first error.
func readAll(img *Image) error {
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

// seenRequest is one request a testRegistry received.
type seenRequest struct {
	method, path, rangeHeader string
}

// rule is a fault: it answers the requests whose method and path suffix
// match, the first times of them (every one when times is 0).
type rule struct {
	method, suffix string
	times          int
	do             func(w http.ResponseWriter, r *http.Request, next http.Handler)
	hits           int
}

// testRegistry is go-containerregistry's in-memory registry behind an
// httptest server, with a middleware that logs every request and injects
// faults.
type testRegistry struct {
	srv   *httptest.Server
	host  string // 127.0.0.1:port
	inner http.Handler

	mu    sync.Mutex
	seen  []seenRequest
	rules []*rule
}

// startRegistry starts a registry over plain HTTP, or over TLS with
// httptest's self-signed certificate.
func startRegistry(t *testing.T, useTLS bool) *testRegistry {
	t.Helper()
	r := &testRegistry{inner: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	if useTLS {
		r.srv = httptest.NewUnstartedServer(r)
		r.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshake noise
		r.srv.StartTLS()
	} else {
		r.srv = httptest.NewServer(r)
	}
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(strings.TrimPrefix(r.srv.URL, "http://"), "https://")
	return r
}

func (r *testRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.seen = append(r.seen, seenRequest{req.Method, req.URL.Path, req.Header.Get("Range")})
	var match *rule
	for _, ru := range r.rules {
		if (ru.method == "" || ru.method == req.Method) && strings.HasSuffix(req.URL.Path, ru.suffix) && (ru.times == 0 || ru.hits < ru.times) {
			ru.hits++
			match = ru
			break
		}
	}
	r.mu.Unlock()
	if match != nil {
		match.do(w, req, r.inner)
		return
	}
	r.inner.ServeHTTP(w, req)
}

// fault adds a rule; rules are tried in the order they were added.
func (r *testRegistry) fault(method, suffix string, times int, do func(w http.ResponseWriter, r *http.Request, next http.Handler)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rules = append(r.rules, &rule{method: method, suffix: suffix, times: times, do: do})
}

// reset forgets the requests seen so far and the faults.
func (r *testRegistry) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen, r.rules = nil, nil
}

// forgetRequests forgets the requests seen so far, keeping the faults.
func (r *testRegistry) forgetRequests() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = nil
}

// requests returns the requests seen whose method and path suffix match.
func (r *testRegistry) requests(method, suffix string) []seenRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []seenRequest
	for _, s := range r.seen {
		if (method == "" || s.method == method) && strings.HasSuffix(s.path, suffix) {
			out = append(out, s)
		}
	}
	return out
}

func (r *testRegistry) count(method, suffix string) int { return len(r.requests(method, suffix)) }

// repo names the test repository on this registry.
func (r *testRegistry) repo() string { return r.host + "/nvidia-driver" }

func manifestPath(tag string) string { return "/manifests/" + tag }
func blobPath(d v1.Hash) string      { return "/blobs/" + d.String() }
func layerDigests(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	m, err := img.Manifest()
	must(t, err)
	var out []v1.Hash
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

// status answers with code, the headers given as name, value pairs, and a
// registry error body (always UNAVAILABLE: clients go by the status).
func status(code int, header ...string) func(http.ResponseWriter, *http.Request, http.Handler) {
	return func(w http.ResponseWriter, _ *http.Request, _ http.Handler) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		fmt.Fprintf(w, `{"errors":[{"code":"UNAVAILABLE","message":"injected %d"}]}`, code)
	}
}

// capture runs the real registry for req and returns its response.
func capture(next http.Handler, req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	next.ServeHTTP(rec, req)
	return rec
}

// cutHalfway sends the real response's status and headers (Content-Length
// included) and the first half of its body, then drops the connection.
func cutHalfway(w http.ResponseWriter, req *http.Request, next http.Handler) {
	rec := capture(next, req)
	body := rec.Body.Bytes()
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(body[:len(body)/2])
	w.(http.Flusher).Flush()
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	conn.Close()
}

// ignoreRange serves the whole blob with 200, as a server without Range
// support does.
func ignoreRange(w http.ResponseWriter, req *http.Request, next http.Handler) {
	req = req.Clone(req.Context())
	req.Header.Del("Range")
	req.Header.Del("If-Range")
	next.ServeHTTP(w, req)
}

// corrupt serves the real response with every body byte inverted: same
// length, other digest.
func corrupt(w http.ResponseWriter, req *http.Request, next http.Handler) {
	rec := capture(next, req)
	body := bytes.Clone(rec.Body.Bytes())
	for i := range body {
		body[i] ^= 0xff
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(body)
}

// sleeps records the waits of a retryTransport and returns at once.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	s.d = append(s.d, d)
	s.mu.Unlock()
	return ctx.Err()
}

func (s *sleeps) all() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.d...)
}

// anonymous finds no credentials, so that tests never read the Docker
// config of the user running them.
var anonymous = authn.NewMultiKeychain()

// newSource returns a Registry for repo whose retries do not wait but are
// recorded. A nil Keychain in opts means anonymous, not the Docker config.
func newSource(t *testing.T, repo string, opts Options) (*Registry, *sleeps) {
	t.Helper()
	if opts.Keychain == nil {
		opts.Keychain = anonymous
	}
	r, err := NewRegistry(repo, opts)
	must(t, err)
	s := &sleeps{}
	r.rt.(*retryTransport).sleep = s.sleep
	return r, s
}

// push uploads img under tag to reg's test repository.
func push(t *testing.T, reg *testRegistry, repo, tag string, img v1.Image) v1.Hash {
	t.Helper()
	r, _ := newSource(t, repo, Options{Insecure: []string{reg.host}})
	d, err := r.Push(context.Background(), tag, img)
	must(t, err)
	return d
}

// wantErr fails unless err is non-nil and mentions every one of parts.
func wantErr(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one mentioning %q", parts)
	}
	t.Logf("error: %v", err)
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Fatalf("error %q does not mention %q", err, p)
		}
	}
}
