package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

// treeVersion names the generated tree in the cache; bump it whenever the
// layout, the sizes or the content generator change.
const treeVersion = 1

// seed seeds every file's content.
const seed = 0x6e76_6964_6961_0550

// The driver and host the tree is for.
const (
	driver    = "550.54.14"
	osID      = "flatcar"
	osVersion = "3815.2.0"
	// kernelFlags are the vermagic flags of the sample host's kernel.
	kernelFlags = "SMP preempt mod_unload"
)

const mib = 1 << 20

// library is a shared library in lib64/: lib<name>.so.<driver>, with a
// SONAME link lib<name>.so.<soname> when soname is set and a development
// link lib<name>.so when dev is.
type library struct {
	name   string
	soname string
	mib    float64
	dev    bool
}

// libraries are a driver's lib64/, sized like 550-series drivers: a few
// very large compute and compiler libraries, a handful of medium graphics
// cores, many small ones.
var libraries = []library{
	{"libnvidia-gpucomp", "", 120, false},
	{"libcuda", "1", 95, true},
	{"libnvidia-nvvm", "4", 75, true},
	{"libnvidia-ptxjitcompiler", "1", 60, true},
	{"libnvidia-rtcore", "", 55, false},
	{"libnvidia-glcore", "", 38, false},
	{"libnvidia-eglcore", "", 32, false},
	{"libnvoptix", "1", 18, false},
	{"libnvidia-glvkspirv", "", 15, false},
	{"libcudadebugger", "1", 11, false},
	{"libnvcuvid", "1", 8, true},
	{"libnvidia-opencl", "1", 6, false},
	{"libnvidia-ngx", "1", 4, false},
	{"libnvidia-ml", "1", 2.1, true},
	{"libEGL_nvidia", "0", 1.3, false},
	{"libGLX_nvidia", "0", 1.2, false},
	{"libnvidia-glsi", "", 0.6, false},
	{"libnvidia-api", "1", 0.6, false},
	{"libnvidia-pkcs11", "", 0.5, false},
	{"libnvidia-pkcs11-openssl3", "", 0.5, false},
	{"libnvidia-gtk3", "", 0.4, false},
	{"libnvidia-cfg", "1", 0.3, true},
	{"libnvidia-encode", "1", 0.25, true},
	{"libnvidia-fbc", "1", 0.15, true},
	{"libnvidia-allocator", "1", 0.15, true},
	{"libGLESv2_nvidia", "2", 0.1, false},
	{"libGLESv1_CM_nvidia", "1", 0.07, false},
	{"libnvidia-opticalflow", "1", 0.07, true},
	{"libnvidia-egl-wayland", "1", 0.05, false},
	{"libnvidia-egl-gbm", "1", 0.03, false},
	{"libnvidia-tls", "", 0.02, false},
}

// plainFile is any other file of the tree, by path.
type plainFile struct {
	path string
	mib  float64
	mode fs.FileMode
}

var plainFiles = []plainFile{
	{"bin/nvidia-imex", 12.5, 0o755},
	{"bin/nvidia-powerd", 2.2, 0o755},
	{"bin/nvidia-settings", 1.6, 0o755},
	{"bin/nvidia-ngx-updater", 1.1, 0o755},
	{"bin/nvidia-smi", 0.8, 0o755},
	{"bin/nvidia-installer", 0.45, 0o755},
	{"bin/nvidia-debugdump", 0.3, 0o755},
	{"bin/nvidia-imex-ctl", 0.3, 0o755},
	{"bin/nvidia-persistenced", 0.25, 0o755},
	{"bin/nvidia-xconfig", 0.25, 0o755},
	{"bin/nvidia-cuda-mps-control", 0.05, 0o755},
	{"bin/nvidia-modprobe", 0.05, 0o755},
	{"bin/nvidia-bug-report.sh", 0.05, 0o755},
	{"bin/nvidia-cuda-mps-server", 0.02, 0o755},
	{"lib64/vdpau/libvdpau_nvidia.so." + driver, 0.8, 0o755},
	{"firmware/nvidia/" + driver + "/gsp_ga10x.bin", 38, 0o644},
	{"firmware/nvidia/" + driver + "/gsp_tu10x.bin", 24, 0o644},
}

// links are symlinks other than the libraries' own.
var links = [][2]string{
	{"lib64/vdpau/libvdpau_nvidia.so.1", "libvdpau_nvidia.so." + driver},
	{"lib64/gbm/nvidia-drm_gbm.so", "../libnvidia-allocator.so.1"},
}

// modules are the kernel modules: the four the daemon loads, and
// nvidia-peermem; nvidia.ko carries the driver's binary core, hence its size.
var modules = []struct {
	file, name string
	depends    []string
	mib        float64
}{
	{"nvidia", "nvidia", nil, 72},
	{"nvidia-uvm", "nvidia_uvm", []string{"nvidia"}, 4},
	{"nvidia-modeset", "nvidia_modeset", []string{"nvidia"}, 2},
	{"nvidia-drm", "nvidia_drm", []string{"nvidia-modeset", "drm_kms_helper", "drm"}, 0.2},
	{"nvidia-peermem", "nvidia_peermem", []string{"nvidia", "ib_core"}, 0.05},
}

// scaled returns m MiB times scale in bytes, at least 64.
func scaled(m, scale float64) int64 {
	return max(64, int64(math.Round(m*scale*mib)))
}

// ensureTree returns the directory of the generated driver tree for kernel
// (whose modules carry vermagic "<kernel> kernelFlags"), with every size
// multiplied by scale, generating it into cache when it is not there. A
// tree is generated under a temporary name and renamed into place, so an
// interrupted run leaves no half tree to be reused.
func ensureTree(cache, kernel string, scale float64) (dir string, generated bool, err error) {
	dir = filepath.Join(cache, fmt.Sprintf("tree-v%d-%s-x%g", treeVersion, kernel, scale))
	if _, err := os.Stat(dir); err == nil {
		return dir, false, nil
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return "", false, err
	}
	if err := generateTree(tmp, kernel, scale); err != nil {
		return "", false, errors.Join(fmt.Errorf("generate driver tree: %w", err), os.RemoveAll(tmp))
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", false, err
	}
	return dir, true, nil
}

// generateTree writes the driver tree into dir.
func generateTree(dir, kernel string, scale float64) error {
	write := func(rel string, size int64, mode fs.FileMode) error {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		_, err = io.CopyN(f, newContent(seed, rel).sized(size), size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	symlink := func(rel, target string) error {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		return os.Symlink(target, p)
	}

	for _, l := range libraries {
		file := l.name + ".so." + driver
		if err := write("lib64/"+file, scaled(l.mib, scale), 0o755); err != nil {
			return err
		}
		if l.soname != "" {
			if err := symlink("lib64/"+l.name+".so."+l.soname, file); err != nil {
				return err
			}
			if l.dev {
				if err := symlink("lib64/"+l.name+".so", l.name+".so."+l.soname); err != nil {
					return err
				}
			}
		}
	}
	for _, f := range plainFiles {
		if err := write(f.path, scaled(f.mib, scale), f.mode); err != nil {
			return err
		}
	}
	for _, l := range links {
		if err := symlink(l[0], l[1]); err != nil {
			return err
		}
	}

	modDir := filepath.Join(dir, "lib/modules", kernel, "video")
	if err := os.MkdirAll(modDir, 0o755); err != nil {
		return err
	}
	vermagic := kernel + " " + kernelFlags + " "
	for _, m := range modules {
		rel := path.Join("lib/modules", kernel, "video", m.file+".ko")
		pad := scaled(m.mib, scale)
		_, err := kofixture.Write(modDir, kofixture.Module{
			Name:    m.file,
			Fields:  kofixture.Standard(m.name, driver, vermagic, m.depends...),
			Pad:     pad,
			PadFrom: newContent(seed, rel).sized(pad),
		})
		if err != nil {
			return fmt.Errorf("build %s: %w", rel, err)
		}
	}
	conf := filepath.Join(dir, "etc/modprobe.d")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(conf, "nvidia.conf"),
		[]byte("options nvidia NVreg_PreserveVideoMemoryAllocations=1\noptions nvidia-drm modeset=1\n"), 0o644)
}

// treeEntry is one entry of a tree, for comparing an installed tree with
// the generated one.
type treeEntry struct {
	rel    string
	mode   fs.FileMode // type bits only
	size   int64       // regular files
	target string      // symlinks
}

// listTree returns the entries below dir, sorted by path.
func listTree(dir string) ([]treeEntry, error) {
	var out []treeEntry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := treeEntry{rel: filepath.ToSlash(rel), mode: info.Mode().Type()}
		switch {
		case info.Mode().IsRegular():
			e.size = info.Size()
		case e.mode == fs.ModeSymlink:
			if e.target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		out = append(out, e)
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].rel < out[j].rel })
	return out, err
}

// sameTree returns an error naming the first entry of want that got lacks
// or holds differently; entries only in got (the store's metadata file)
// are ignored.
func sameTree(want []treeEntry, gotDir string) error {
	got, err := listTree(gotDir)
	if err != nil {
		return err
	}
	byPath := make(map[string]treeEntry, len(got))
	for _, e := range got {
		byPath[e.rel] = e
	}
	for _, w := range want {
		g, ok := byPath[w.rel]
		switch {
		case !ok:
			return fmt.Errorf("%s: %s is missing", gotDir, w.rel)
		case g != w:
			return fmt.Errorf("%s: %s is %+v, want %+v", gotDir, w.rel, g, w)
		}
	}
	return nil
}

// treeFacts sums a tree's regular-file bytes by top-level part.
type treeFacts struct {
	files, links int
	bytes        int64
	parts        map[string]int64 // lib64, lib/modules, bin, firmware, etc
}

func factsOf(entries []treeEntry) treeFacts {
	f := treeFacts{parts: map[string]int64{}}
	for _, e := range entries {
		switch {
		case e.mode == fs.ModeSymlink:
			f.links++
		case e.mode.IsRegular():
			f.files++
			f.bytes += e.size
			part, _, _ := strings.Cut(e.rel, "/")
			if part == "lib" {
				part = "lib/modules"
			}
			f.parts[part] += e.size
		}
	}
	return f
}
