package publish

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

// driverTree lays out a small tree shaped like a real driver.
func driverTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]int{
		"bin/nvidia-smi":                                 700,
		"bin/nvidia-persistenced":                        300,
		"lib64/libcuda.so.550.54.14":                     9000,
		"lib64/libnvidia-ml.so.550.54.14":                4000,
		"lib64/libnvidia-ptxjitcompiler.so.550.54.14":    6000,
		"lib64/libnvidia-gpucomp.so.550.54.14":           5000,
		"lib64/vdpau/libvdpau_nvidia.so.550.54.14":       1000,
		"lib/modules/6.1.77-flatcar/video/nvidia.ko":     3000,
		"lib/modules/6.1.77-flatcar/video/nvidia-uvm.ko": 1000,
		"firmware/nvidia/550.54.14/gsp_ga10x.bin":        8000,
		"etc/modprobe.d/nvidia.conf":                     40,
	}
	for name, size := range files {
		p := filepath.Join(dir, name)
		must(t, os.MkdirAll(filepath.Dir(p), 0o755))
		must(t, os.WriteFile(p, []byte(strings.Repeat(name[:1], size)), 0o755))
	}
	must(t, os.Symlink("libcuda.so.550.54.14", filepath.Join(dir, "lib64/libcuda.so.1")))
	must(t, os.Symlink("libcuda.so.1", filepath.Join(dir, "lib64/libcuda.so")))
	must(t, os.Symlink("libnvidia-ml.so.550.54.14", filepath.Join(dir, "lib64/libnvidia-ml.so.1")))
	must(t, os.Link(filepath.Join(dir, "lib64/libcuda.so.550.54.14"), filepath.Join(dir, "lib64/libcuda.hardlink")))
	must(t, os.Chmod(filepath.Join(dir, "bin/nvidia-smi"), 0o4755))
	return dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// contents lists each layer's tar entries.
func contents(t *testing.T, img v1.Image) [][]*tar.Header {
	t.Helper()
	layers, err := img.Layers()
	must(t, err)
	var out [][]*tar.Header
	for _, l := range layers {
		rc, err := l.Uncompressed()
		must(t, err)
		tr := tar.NewReader(rc)
		var hdrs []*tar.Header
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			must(t, err)
			hdrs = append(hdrs, h)
		}
		rc.Close()
		out = append(out, hdrs)
	}
	return out
}

func TestBuild(t *testing.T) {
	t.Parallel()
	t.Run("a driver tree becomes disjoint, labelled layers", func(t *testing.T) {
		b, err := Build(driverTree(t), Options{Platform: amd64, Labels: map[string]string{LabelDriver: "550.54.14"}, LibraryLayers: 2})
		must(t, err)
		defer b.Close()
		var names []string
		for _, l := range b.Layers {
			names = append(names, l.Name)
		}
		if strings.Join(names, ",") != "modules,firmware,binaries,libraries 1/2,libraries 2/2" {
			t.Fatalf("layers %q", names)
		}
		cfg, err := b.Image.ConfigFile()
		must(t, err)
		if cfg.Config.Labels[LabelDriver] != "550.54.14" || cfg.Config.Labels[LayoutLabel] != LayoutDisjoint || cfg.OS != "linux" || cfg.Architecture != "amd64" {
			t.Fatalf("config %+v", cfg)
		}
		m, err := b.Image.Manifest()
		must(t, err)
		if m.Annotations[LabelDriver] != "550.54.14" || m.MediaType != types.OCIManifestSchema1 || m.Layers[0].MediaType != types.OCILayerZStd {
			t.Fatalf("manifest %+v", m)
		}

		seen := map[string]int{}
		for i, hdrs := range contents(t, b.Image) {
			for _, h := range hdrs {
				if h.Typeflag == tar.TypeDir {
					continue
				}
				if prev, dup := seen[h.Name]; dup {
					t.Errorf("%s is in layers %d and %d", h.Name, prev, i)
				}
				seen[h.Name] = i
				if h.Mode&^0o777 != 0 {
					t.Errorf("%s keeps mode %o", h.Name, h.Mode)
				}
				if h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
					t.Errorf("%s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
				}
			}
		}
		if seen["lib64/libcuda.so.1"] != seen["lib64/libcuda.so.550.54.14"] {
			t.Error("a SONAME link is not in its target's layer")
		}
		if len(seen) != 15 {
			t.Errorf("%d non-directory entries, want 15: %v", len(seen), seen)
		}
		lib1, lib2 := b.Layers[3].Bytes, b.Layers[4].Bytes
		if lib1 == 0 || lib2 == 0 || max(lib1, lib2) > 2*min(lib1, lib2) {
			t.Errorf("library layers unbalanced: %d and %d bytes", lib1, lib2)
		}
	})

	t.Run("the same tree gives the same digest", func(t *testing.T) {
		dir := driverTree(t)
		a, err := Build(dir, Options{Platform: amd64})
		must(t, err)
		defer a.Close()
		b, err := Build(dir, Options{Platform: amd64})
		must(t, err)
		defer b.Close()
		da, _ := a.Image.Digest()
		db, _ := b.Image.Digest()
		if da != db {
			t.Fatalf("%s != %s", da, db)
		}
	})

	t.Run("gzip layers are plain OCI gzip", func(t *testing.T) {
		b, err := Build(driverTree(t), Options{Platform: amd64, Compression: Gzip})
		must(t, err)
		defer b.Close()
		m, _ := b.Image.Manifest()
		if m.Layers[0].MediaType != types.OCILayer {
			t.Fatal(m.Layers[0].MediaType)
		}
		if len(contents(t, b.Image)) != len(m.Layers) {
			t.Fatal("layers unreadable")
		}
	})

	for _, tc := range []struct {
		name string
		lay  func(dir string) error
		want string
	}{
		{"an absolute symlink is refused", func(d string) error { return os.Symlink("/usr/lib/libc.so.6", filepath.Join(d, "lib64/libc.so.6")) }, "is absolute"},
		{"a symlink leaving the tree is refused", func(d string) error { return os.Symlink("../../etc/shadow", filepath.Join(d, "lib64/x")) }, "escapes the tree"},
		{"a symlink with .. after a name is refused", func(d string) error { return os.Symlink("vdpau/../libcuda.so.1", filepath.Join(d, "lib64/y")) }, "may only lead"},
		{"a fifo is refused", func(d string) error { return syscall.Mkfifo(filepath.Join(d, "bin/fifo"), 0o644) }, "bin/fifo"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := driverTree(t)
			must(t, tc.lay(dir))
			_, err := Build(dir, Options{Platform: amd64})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
