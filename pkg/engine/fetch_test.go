package engine

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

const (
	kernel   = "6.1.77-flatcar"
	driver   = "550.54.14"
	osVer    = "3815.2.0"
	tag      = osVer + "-" + driver
	vermagic = kernel + " SMP preempt mod_unload"
)

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// driverTree lays out a realistic tree: modules for kernel k, libraries
// with SONAME links, nested directories, binaries, firmware.
func driverTree(t *testing.T, k, vm string) string {
	t.Helper()
	dir := t.TempDir()
	mods := filepath.Join(dir, "lib/modules", k, "kernel/drivers/video")
	must(t, os.MkdirAll(mods, 0o755))
	for _, m := range []struct {
		file, name string
		deps       []string
	}{{"nvidia", "nvidia", nil}, {"nvidia-modeset", "nvidia_modeset", []string{"nvidia"}},
		{"nvidia-uvm", "nvidia_uvm", []string{"nvidia"}}, {"nvidia-drm", "nvidia_drm", []string{"nvidia-modeset"}}} {
		kofixture.Build(t, mods, kofixture.Module{Name: m.file, Fields: kofixture.Standard(m.name, driver, vm+" ", m.deps...)})
	}
	for i := range 40 {
		lib := fmt.Sprintf("lib64/libnvidia-part%02d.so.%s", i, driver)
		write(t, dir, lib, bytes.Repeat([]byte{byte(i)}, 1000+i*997))
		must(t, os.Symlink(filepath.Base(lib), filepath.Join(dir, fmt.Sprintf("lib64/libnvidia-part%02d.so.1", i))))
	}
	write(t, dir, "lib64/libcuda.so."+driver, bytes.Repeat([]byte("cuda"), 50000))
	must(t, os.Symlink("libcuda.so."+driver, filepath.Join(dir, "lib64/libcuda.so.1")))
	must(t, os.Symlink("libcuda.so.1", filepath.Join(dir, "lib64/libcuda.so")))
	write(t, dir, "lib64/vdpau/libvdpau_nvidia.so."+driver, []byte("vdpau"))
	write(t, dir, "lib64/xorg/modules/drivers/nvidia_drv.so", []byte("xorg"))
	write(t, dir, "bin/nvidia-smi", []byte("#!/bin/sh\n"))
	write(t, dir, "firmware/nvidia/"+driver+"/gsp_ga10x.bin", bytes.Repeat([]byte{7}, 30000))
	write(t, dir, "etc/modprobe.d/nvidia.conf", []byte("options nvidia NVreg_EnableMSI=1\n"))
	return dir
}

func write(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, name)
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, data, 0o755))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func labels(k, vm string) map[string]string {
	return map[string]string{publish.LabelDriver: driver, publish.LabelOSID: "flatcar",
		publish.LabelOSVer: osVer, publish.LabelKernel: k, publish.LabelVermagic: vm}
}

// testRegistry is an in-process registry that counts blob downloads.
type testRegistry struct {
	srv   *httptest.Server
	host  string
	blobs atomic.Int64
	// fault, when set, may answer a request instead of the registry.
	fault func(w http.ResponseWriter, r *http.Request) bool
	// backend is the registry itself.
	backend http.Handler
}

func newRegistry(t *testing.T) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.backend = reg
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			r.blobs.Add(1)
		}
		if r.fault != nil && r.fault(w, req) {
			return
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

func (r *testRegistry) source(t *testing.T) *source.Registry {
	t.Helper()
	s, err := source.NewRegistry(r.host+"/nvidia-driver", source.Options{Insecure: []string{r.host}, Platform: amd64,
		Retry: source.Retry{Attempts: 2, Base: 1, Max: 1}})
	must(t, err)
	return s
}

func (r *testRegistry) push(t *testing.T, tg string, img v1.Image) v1.Hash {
	t.Helper()
	d, err := r.source(t).Push(context.Background(), tg, img)
	must(t, err)
	return d
}

func build(t *testing.T, dir string, l map[string]string) v1.Image {
	t.Helper()
	b, err := publish.Build(dir, publish.Options{Platform: amd64, Labels: l})
	must(t, err)
	t.Cleanup(func() { b.Close() })
	return b.Image
}

// host is a store with an old tree current, as after an OS update.
type installHost struct {
	root  string
	store *store.Store
	old   string
}

func newHost(t *testing.T) *installHost {
	t.Helper()
	h := &installHost{root: t.TempDir()}
	var err error
	h.store, err = store.Open(hostfixture.Open(t, h.root).FS(), "/opt/nvidia")
	must(t, err)
	st, err := h.store.Stage("old")
	must(t, err)
	write(t, st.FSPath(), "lib64/libcuda.so.1", []byte("old driver"))
	h.old, err = st.Commit(driver, "3760.2.0", store.Meta{Digest: "sha256:" + strings.Repeat("0", 64)})
	must(t, err)
	_, err = h.store.Switch(h.old)
	must(t, err)
	return h
}

// assertOldCurrent checks that the old tree is still current and intact
// and that nothing half-made is left.
func (h *installHost) assertOldCurrent(t *testing.T) {
	t.Helper()
	inv, err := store.Scan(hostfixture.Open(t, h.root).FS(), "/opt/nvidia")
	must(t, err)
	if inv.Current != h.old {
		t.Errorf("current is %q, want the old tree %q", inv.Current, h.old)
	}
	if b, err := os.ReadFile(filepath.Join(h.root, h.old, "lib64/libcuda.so.1")); err != nil || string(b) != "old driver" {
		t.Errorf("old tree damaged: %q, %v", b, err)
	}
	if len(inv.Trees) != 1 {
		t.Errorf("trees %v, want only the old one", inv.Trees)
	}
	if left, _ := os.ReadDir(filepath.Join(h.root, "opt/nvidia/.staging")); len(left) != 0 {
		t.Errorf("staging leftovers: %v", left)
	}
}

func target() Target {
	return Target{Driver: driver, OSID: "flatcar", OSVersion: osVer, TreeName: osVer, Tag: tag,
		Kernel: Kernel{Release: kernel, Flags: strings.Fields("SMP preempt mod_unload")}}
}

func (h *installHost) fetcher(src source.Source) *Fetcher {
	return &Fetcher{Source: src, Store: h.store, Modules: config.Default().Modules}
}

// snapshotTree describes a tree: type, mode, content or link target.
func snapshotTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	must(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." || rel == store.MetaFile {
			return nil
		}
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			out[rel] = "dir"
		case info.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[rel] = "-> " + target
		default:
			b, _ := os.ReadFile(p)
			out[rel] = fmt.Sprintf("%o %x", info.Mode().Perm(), b)
		}
		return nil
	}))
	return out
}

func TestFetch(t *testing.T) {
	t.Parallel()
	t.Run("publish then fetch gives back the same tree, checked and committed", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		src := driverTree(t, kernel, vermagic)
		digest := reg.push(t, tag, build(t, src, labels(kernel, vermagic)))
		var progressed atomic.Int64
		f := h.fetcher(reg.source(t))
		f.Progress = func(done, total int64) { progressed.Store(done) }
		got, err := f.Fetch(context.Background(), target())
		must(t, err)
		if got.Tree != "/opt/nvidia/"+driver+"/"+osVer || got.Digest != digest.String() || got.Reused || got.Bytes == 0 {
			t.Fatalf("%+v", got)
		}
		if progressed.Load() != got.Bytes {
			t.Errorf("progress ended at %d of %d", progressed.Load(), got.Bytes)
		}
		want, have := snapshotTree(t, src), snapshotTree(t, filepath.Join(h.root, got.Tree))
		if len(want) != len(have) {
			t.Errorf("%d entries, want %d", len(have), len(want))
		}
		for k, v := range want {
			if have[k] != v {
				t.Errorf("%s: got %.40q, want %.40q", k, have[k], v)
			}
		}
		inv, err := store.Scan(hostfixture.Open(t, h.root).FS(), "/opt/nvidia")
		must(t, err)
		tr := inv.Tree(got.Tree)
		if tr == nil || tr.Meta == nil || tr.Meta.Digest != digest.String() || tr.Meta.KernelRelease != kernel || tr.Meta.Vermagic != vermagic {
			t.Fatalf("tree %+v", tr)
		}
		if inv.Current != h.old {
			t.Error("Fetch touched current")
		}
	})

	t.Run("a tree with the same digest is reused without downloading", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		reg.push(t, tag, build(t, driverTree(t, kernel, vermagic), labels(kernel, vermagic)))
		f := h.fetcher(reg.source(t))
		first, err := f.Fetch(context.Background(), target())
		must(t, err)
		before := reg.blobs.Load()
		again, err := f.Fetch(context.Background(), target())
		must(t, err)
		// The config blob is read for its labels; no layer is.
		if !again.Reused || again.Tree != first.Tree || reg.blobs.Load() != before+1 {
			t.Fatalf("%+v, %d blob downloads", again, reg.blobs.Load()-before)
		}
	})

	t.Run("an image labelled for another kernel is refused before any download", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		reg.push(t, tag, build(t, driverTree(t, "6.1.73-flatcar", "6.1.73-flatcar SMP preempt mod_unload"),
			labels("6.1.73-flatcar", "6.1.73-flatcar SMP preempt mod_unload")))
		before := reg.blobs.Load()
		_, err := h.fetcher(reg.source(t)).Fetch(context.Background(), target())
		if err == nil || !strings.Contains(err.Error(), "6.1.73-flatcar") || reg.blobs.Load() != before+1 {
			t.Fatalf("err %v, %d blob downloads (the config only)", err, reg.blobs.Load()-before)
		}
		h.assertOldCurrent(t)
	})

	t.Run("unlabelled modules for another kernel are refused after unpacking", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		// Modules in this kernel's directory that were built for another:
		// the kernel would load them with CONFIG_MODVERSIONS.
		reg.push(t, tag, build(t, driverTree(t, kernel, "6.1.73-flatcar SMP preempt mod_unload"), nil))
		_, err := h.fetcher(reg.source(t)).Fetch(context.Background(), target())
		if err == nil || !strings.Contains(err.Error(), `vermagic release "6.1.73-flatcar"`) {
			t.Fatalf("got %v", err)
		}
		h.assertOldCurrent(t)
	})

	t.Run("a digest that failed before is refused", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		d := reg.push(t, tag, build(t, driverTree(t, kernel, vermagic), labels(kernel, vermagic)))
		f := h.fetcher(reg.source(t))
		f.BadDigests = map[string]string{d.String(): "nvidia: probe failed"}
		if _, err := f.Fetch(context.Background(), target()); err == nil || !strings.Contains(err.Error(), "probe failed") {
			t.Fatalf("got %v", err)
		}
		h.assertOldCurrent(t)
	})

	t.Run("a prefetch takes the kernel from the image label", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		reg.push(t, tag, build(t, driverTree(t, kernel, vermagic), labels(kernel, vermagic)))
		tg := target()
		tg.Kernel = Kernel{}
		got, err := h.fetcher(reg.source(t)).Fetch(context.Background(), tg)
		must(t, err)
		if got.Tree == "" {
			t.Fatal("no tree")
		}
		if got.KernelRelease != kernel {
			t.Errorf("Fetched.KernelRelease %q, want the label's %q", got.KernelRelease, kernel)
		}
	})

	t.Run("a corrupted layer fails the fetch and leaves the old tree current", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		img := build(t, driverTree(t, kernel, vermagic), labels(kernel, vermagic))
		reg.push(t, tag, img)
		layers, _ := img.Layers()
		victim, _ := layers[len(layers)-1].Digest()
		reg.fault = func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, victim.String()) {
				return false
			}
			rec := httptest.NewRecorder()
			registry.New().ServeHTTP(rec, r)
			body, _ := layers[len(layers)-1].Compressed()
			b, _ := io.ReadAll(body)
			b[len(b)/2] ^= 0xff
			w.Header().Set("Content-Length", fmt.Sprint(len(b)))
			w.Write(b)
			return true
		}
		_, err := h.fetcher(reg.source(t)).Fetch(context.Background(), target())
		if err == nil || !strings.Contains(err.Error(), victim.String()) {
			t.Fatalf("got %v", err)
		}
		h.assertOldCurrent(t)
	})

	t.Run("a hostile layer is refused and leaves the old tree current", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		img := handImage(t, map[string]string{publish.LayoutLabel: publish.LayoutDisjoint},
			[]tarEntry{{name: "lib64/libc.so.6", link: "/lib64/libc.so.6"}})
		reg.push(t, tag, img)
		_, err := h.fetcher(reg.source(t)).Fetch(context.Background(), target())
		if !errors.Is(err, unpack.ErrRefused) {
			t.Fatalf("got %v", err)
		}
		h.assertOldCurrent(t)
	})

	t.Run("a disjoint promise broken by two layers writing one file is refused", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		img := handImage(t, map[string]string{publish.LayoutLabel: publish.LayoutDisjoint},
			[]tarEntry{{name: "bin/nvidia-smi", body: "a"}}, []tarEntry{{name: "bin/nvidia-smi", body: "b"}})
		reg.push(t, tag, img)
		_, err := h.fetcher(reg.source(t)).Fetch(context.Background(), target())
		if !errors.Is(err, unpack.ErrRefused) {
			t.Fatalf("got %v", err)
		}
		h.assertOldCurrent(t)
	})

	t.Run("an image of the original CoreOS installer is taken from its subdir", func(t *testing.T) {
		reg, h := newRegistry(t), newHost(t)
		src := driverTree(t, kernel, vermagic)
		legacy := t.TempDir()
		must(t, os.MkdirAll(filepath.Join(legacy, "opt/nvidia", driver), 0o755))
		must(t, os.Rename(src, filepath.Join(legacy, "opt/nvidia", driver, osVer)))
		write(t, legacy, "etc/os-release", []byte("ID=coreos\n"))
		reg.push(t, tag, build(t, legacy, nil))
		tg := target()
		tg.Subdir = "opt/nvidia/" + driver + "/" + osVer
		got, err := h.fetcher(reg.source(t)).Fetch(context.Background(), tg)
		must(t, err)
		if _, err := os.Stat(filepath.Join(h.root, got.Tree, "lib64/libcuda.so.1")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(h.root, got.Tree, "etc/os-release")); err == nil {
			t.Fatal("content outside the subdir was installed")
		}
	})

	t.Run("an OCI layout is installed through the same path", func(t *testing.T) {
		h := newHost(t)
		dir := filepath.Join(t.TempDir(), "layout")
		_, err := source.WriteLayout(dir, tag, build(t, driverTree(t, kernel, vermagic), labels(kernel, vermagic)))
		must(t, err)
		got, err := h.fetcher(source.NewLayout(dir, source.Options{Platform: amd64})).Fetch(context.Background(), target())
		must(t, err)
		if !strings.HasPrefix(got.Image, dir+":"+tag+"@sha256:") {
			t.Fatalf("%+v", got)
		}
	})
}

type tarEntry struct{ name, body, link string }

// handImage builds an image layer by layer from tar entries, for content
// publish would never produce.
func handImage(t *testing.T, l map[string]string, layers ...[]tarEntry) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	for _, entries := range layers {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range entries {
			h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
			if e.link != "" {
				h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
			}
			must(t, tw.WriteHeader(h))
			_, err := tw.Write([]byte(e.body))
			must(t, err)
		}
		must(t, tw.Close())
		var err error
		img, err = mutate.AppendLayers(img, static.NewLayer(buf.Bytes(), types.OCIUncompressedLayer))
		must(t, err)
	}
	cfg, err := img.ConfigFile()
	must(t, err)
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Config.Labels = "linux", "amd64", l
	img, err = mutate.ConfigFile(img, cfg)
	must(t, err)
	return img
}
