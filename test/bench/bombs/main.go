// Command bombs runs nvidia-driverd against hostile registries and prints
// how long each install took and the peak memory it used:
//
//	go run ./test/bench/bombs [-bin bin/nvidia-driverd] [-limit 60s]
//
// Each case serves, from go-containerregistry's registry on 127.0.0.1,
// a driver image for a sample Flatcar host and answers some requests
// itself: a stall, a trickle, a redirect loop, a huge manifest or config,
// many layers, a layer that decompresses to gigabytes of zeros, names
// thousands deep. The binary runs `install --no-activate` under GNU time
// (peak RSS) and is killed after -limit. Run it against two builds to
// compare them; the engine's TestHostileRegistry asserts the bounds.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
)

const (
	kernel = "6.1.77-flatcar"
	driver = "550.54.14"
	osVer  = "3815.2.0"
	tag    = osVer + "-" + driver
)

var labels = map[string]string{publish.LabelDriver: driver, publish.LabelOSID: "flatcar", publish.LabelOSVer: osVer,
	publish.LabelKernel: kernel, publish.LabelVermagic: kernel + " SMP preempt mod_unload"}

// fault answers r instead of the registry when it returns true; isLayer
// tells layer downloads from the config's.
type fault func(backend http.Handler, isLayer func(*http.Request) bool, w http.ResponseWriter, r *http.Request) bool

type bomb struct {
	name  string
	image func(work string) (v1.Image, error) // nil: a real driver image
	fault fault
}

func main() {
	bin := flag.String("bin", "bin/nvidia-driverd", "the nvidia-driverd to run")
	limit := flag.Duration("limit", 60*time.Second, "kill an install after this long")
	fixtures := flag.String("fixtures", "test/fixtures/hosts", "committed host fixtures")
	flag.Parse()
	work, err := os.MkdirTemp("", "bombs-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "case\twall\tpeak RSS\tend")
	for i, b := range bombs() {
		wall, rss, end, err := run(b, *bin, *fixtures, filepath.Join(work, strconv.Itoa(i)), *limit)
		if err != nil {
			log.Fatalf("%s: %v", b.name, err)
		}
		fmt.Fprintf(tw, "%s\t%.1f s\t%d MiB\t%s\n", b.name, wall.Seconds(), rss>>20, end)
		tw.Flush()
	}
}

// run serves b, installs from it and measures the install.
func run(b bomb, bin, fixtures, work string, limit time.Duration) (time.Duration, int64, string, error) {
	if err := os.MkdirAll(work, 0o755); err != nil {
		return 0, 0, "", err
	}
	defer os.RemoveAll(work)
	img, err := driverImage(work)
	if b.image != nil {
		img, err = b.image(work)
	}
	if err != nil {
		return 0, 0, "", err
	}
	config, err := img.ConfigName()
	if err != nil {
		return 0, 0, "", err
	}
	backend := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	isLayer := func(r *http.Request) bool {
		return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") && !strings.HasSuffix(r.URL.Path, config.String())
	}
	var armed atomic.Bool // the fault answers once the image is pushed
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if armed.Load() && b.fault != nil && b.fault(backend, isLayer, w, r) {
			return
		}
		backend.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	reg, err := source.NewRegistry(host+"/nvidia-driver", source.Options{Insecure: []string{host}})
	if err != nil {
		return 0, 0, "", err
	}
	if _, err := reg.Push(context.Background(), tag, img); err != nil {
		return 0, 0, "", err
	}
	armed.Store(true)
	root := filepath.Join(work, "host")
	if err := hostfixture.Make(fixtures, root, hostfixture.Specs["flatcar-updated"]); err != nil {
		return 0, 0, "", err
	}
	// GNU time measures the install's own peak RSS (a child Go starts
	// would be charged the harness's at exec); past limit the install,
	// time's child, is killed, and time still reports.
	cmd := exec.Command("/usr/bin/time", "-f", "%e %M", bin, "--root", root, "--log-level", "error",
		"--repository", host+"/nvidia-driver", "--insecure-registries", host, "install", "--no-activate")
	cmd.Env = append(os.Environ(), "NVIDIA_DRIVERD_STALL_TIMEOUT=5s") // builds without the key ignore it
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, "", err
	}
	killed := false
	timer := time.AfterFunc(limit, func() {
		killed = true
		children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		for _, f := range strings.Fields(string(children)) {
			if pid, err := strconv.Atoi(f); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	runErr := cmd.Wait()
	timer.Stop()
	wall := time.Since(start)
	var rss int64
	var msgs []string
	for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(l, "Command exited") || strings.HasPrefix(l, "Command terminated"):
		case len(f) == 2 && strings.Contains(f[0], "."):
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			rss = kb << 10
		case l != "":
			msgs = append(msgs, l)
		}
	}
	end := "exit 0"
	switch {
	case killed:
		end = fmt.Sprintf("killed after %v", limit)
	case runErr != nil:
		end = runErr.Error()
	}
	if len(msgs) > 0 {
		msg := msgs[len(msgs)-1]
		if len(msg) > 100 {
			msg = "..." + msg[len(msg)-100:]
		}
		end += ": " + msg
	}
	return wall, rss, end, nil
}

func bombs() []bomb {
	slowly := func(first, chunk int, pause time.Duration) fault {
		return func(backend http.Handler, isLayer func(*http.Request) bool, w http.ResponseWriter, r *http.Request) bool {
			if !isLayer(r) {
				return false
			}
			rec := httptest.NewRecorder()
			backend.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(rec.Code)
			n := min(first, len(body))
			w.Write(body[:n])
			w.(http.Flusher).Flush()
			for n < len(body) {
				select {
				case <-r.Context().Done():
					return true
				case <-time.After(pause):
				}
				if chunk > 0 {
					m := min(n+chunk, len(body))
					if _, err := w.Write(body[n:m]); err != nil {
						return true
					}
					w.(http.Flusher).Flush()
					n = m
				}
			}
			return true
		}
	}
	manifest := func(m v1.Manifest) fault {
		body, _ := json.Marshal(m)
		return func(_ http.Handler, _ func(*http.Request) bool, w http.ResponseWriter, r *http.Request) bool {
			if !strings.HasSuffix(r.URL.Path, "/manifests/"+tag) {
				return false
			}
			w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
			return true
		}
	}
	big := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config: v1.Descriptor{MediaType: types.OCIConfigJSON, Size: 1 << 30, Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}}}
	many := v1.Manifest{SchemaVersion: 2, MediaType: types.OCIManifestSchema1,
		Config: v1.Descriptor{MediaType: types.OCIConfigJSON, Size: 2, Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("b", 64)}}}
	for i := range 5001 {
		many.Layers = append(many.Layers, v1.Descriptor{MediaType: types.OCILayer, Size: 32, Digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%064x", i)}})
	}
	return []bomb{
		{name: "headers, then a stalled manifest", fault: func(_ http.Handler, _ func(*http.Request) bool, w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/manifests/") || r.Method != http.MethodGet {
				return false
			}
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return true
		}},
		{name: "a layer stalled half way", image: bigImage, fault: slowly(1<<20, 0, 50*time.Millisecond)},
		{name: "a layer trickled at 5 bytes/s", image: bigImage, fault: slowly(0, 5, time.Second)},
		{name: "a redirect loop", fault: func(_ http.Handler, isLayer func(*http.Request) bool, w http.ResponseWriter, r *http.Request) bool {
			if !isLayer(r) {
				return false
			}
			http.Redirect(w, r, r.URL.String(), http.StatusTemporaryRedirect)
			return true
		}},
		{name: "a 100 MB manifest", fault: func(_ http.Handler, _ func(*http.Request) bool, w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			w.Header().Set("Content-Type", string(types.OCIManifestSchema1))
			w.Header().Set("Content-Length", strconv.Itoa(100<<20+2))
			w.WriteHeader(http.StatusOK)
			w.Write([]byte(`{"schemaVersion": 2, "annotations": {"x": "`))
			io.Copy(w, io.LimitReader(repeat('a'), 100<<20-42))
			w.Write([]byte(`"}}`))
			return true
		}},
		{name: "a 1 GB config", fault: func(b http.Handler, isLayer func(*http.Request) bool, w http.ResponseWriter, r *http.Request) bool {
			if manifest(big)(b, isLayer, w, r) {
				return true
			}
			if !strings.Contains(r.URL.Path, "/blobs/sha256:"+strings.Repeat("a", 64)) {
				return false
			}
			w.Header().Set("Content-Length", strconv.Itoa(1<<30))
			w.WriteHeader(http.StatusOK)
			w.Write([]byte(`{"a": "`))
			io.Copy(w, io.LimitReader(repeat('a'), 1<<30-9))
			w.Write([]byte(`"}`))
			return true
		}},
		{name: "5,001 layers", fault: manifest(many)},
		{name: "a layer with 2 GB of zeros after its tar", image: func(string) (v1.Image, error) {
			return imageOf(zstdLayer(2<<30, func(tw *tar.Writer) error {
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/x", Mode: 0o755, Size: 1}); err != nil {
					return err
				}
				_, err := tw.Write([]byte("x"))
				return err
			}))
		}},
		{name: "1,000 names 2,000 deep", image: func(string) (v1.Image, error) {
			return imageOf(zstdLayer(0, func(tw *tar.Writer) error {
				for i := range 1000 {
					if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.Repeat("d/", 2000) + strconv.Itoa(i), Mode: 0o644, Format: tar.FormatPAX}); err != nil {
						return err
					}
				}
				return nil
			}))
		}},
	}
}

// driverImage is a real, small driver image for the sample host.
func driverImage(work string) (v1.Image, error) {
	dir := filepath.Join(work, "tree")
	if err := hostfixture.DriverTree(dir, driver, kernel, labels[publish.LabelVermagic]); err != nil {
		return nil, err
	}
	b, err := publish.Build(dir, publish.Options{Platform: v1.Platform{OS: "linux", Architecture: "amd64"}, Labels: labels})
	if err != nil {
		return nil, err
	}
	return b.Image, nil
}

// bigImage is an image whose one layer holds 4 MiB of incompressible
// bytes.
func bigImage(string) (v1.Image, error) {
	data := make([]byte, 4<<20)
	x := uint64(88172645463325252)
	for i := range data {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		data[i] = byte(x)
	}
	return imageOf(zstdLayer(0, func(tw *tar.Writer) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "lib64/libbig.so", Mode: 0o644, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}))
}

func zstdLayer(pad int64, entries func(*tar.Writer) error) (v1.Layer, error) {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	if err := entries(tw); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if _, err := io.Copy(zw, io.LimitReader(repeat(0), pad)); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return static.NewLayer(buf.Bytes(), types.OCILayerZStd), nil
}

func imageOf(l v1.Layer, err error) (v1.Image, error) {
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Config.Labels = "linux", "amd64", labels
	return mutate.ConfigFile(img, cfg)
}

// repeat is an endless stream of one byte.
type repeat byte

func (r repeat) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}
