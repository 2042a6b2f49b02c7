// Package hostfixture lays out sample host trees for tests and the demo: a
// committed host fixture (test/fixtures/hosts/<name>: os-release, /proc,
// /sys) plus kernel modules built with kofixture, driver trees in a store,
// and a config file.
package hostfixture

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

// Tree is a driver tree to install in the store.
type Tree struct {
	Driver    string // directory level 1 and the modules' version=
	OSVersion string // directory level 2
	Kernel    string // lib/modules/<Kernel>
	Vermagic  string // the modules' vermagic= ("" means Kernel + the host's flags)
}

// Spec describes one sample host.
type Spec struct {
	About  string // one line for the demo
	Base   string // fixture under test/fixtures/hosts
	Flags  string // vermagic flags of the kernel's own modules; "" builds none
	Unload bool   // drop the loaded nvidia modules (as after a reboot)
	Store  string // store directory, default /opt/nvidia
	Trees  []Tree
	// Current is the text of the store's current link, "" for none.
	Current string
	// Staging names directories left half-written under <store>/.staging.
	Staging []string
	// Config is written to etc/nvidia-driverd/config.yaml when not empty.
	Config string
}

const repo = "registry.example.com/gpu/nvidia-driver"

// Specs are the sample hosts, by name.
var Specs = map[string]Spec{
	"flatcar-ready": {
		About: "Flatcar 3815.2.0 with driver 550.54.14 installed and loaded",
		Base:  "flatcar", Flags: "SMP preempt mod_unload",
		Trees:   []Tree{{Driver: "550.54.14", OSVersion: "3815.2.0", Kernel: "6.1.77-flatcar"}},
		Current: "550.54.14/3815.2.0",
		Config:  "driver-version: 550.54.14\nrepository: " + repo + "\n",
	},
	"flatcar-updated": {
		About: "Flatcar just rebooted from 3760.2.0 into 3815.2.0: the installed driver was built for the old kernel",
		Base:  "flatcar", Flags: "SMP preempt mod_unload", Unload: true,
		Trees:   []Tree{{Driver: "550.54.14", OSVersion: "3760.2.0", Kernel: "6.1.73-flatcar"}},
		Current: "550.54.14/3760.2.0",
		Config:  "driver-version: 550.54.14\nrepository: " + repo + "\n",
	},
	"flatcar-prefetched": {
		About: "Flatcar rebooted into 3815.2.0 with the driver for it fetched before the reboot",
		Base:  "flatcar", Flags: "SMP preempt mod_unload", Unload: true,
		Trees: []Tree{
			{Driver: "550.54.14", OSVersion: "3760.2.0", Kernel: "6.1.73-flatcar"},
			{Driver: "550.54.14", OSVersion: "3815.2.0", Kernel: "6.1.77-flatcar"},
		},
		Current: "550.54.14/3760.2.0",
		Config:  "driver-version: 550.54.14\nrepository: " + repo + "\n",
	},
	"flatcar-crashed": {
		About: "Flatcar where an install was cut off mid-way, leaving a staging directory",
		Base:  "flatcar", Flags: "SMP preempt mod_unload", Unload: true,
		Staging: []string{"550.54.14-3815.2.0-7f3a"},
		Config:  "driver-version: 550.54.14\nrepository: " + repo + "\n",
	},
	"flatcar-wrong-vermagic": {
		About: "Flatcar whose installed tree holds modules built for another kernel, placed under this kernel's directory",
		Base:  "flatcar", Flags: "SMP preempt mod_unload", Unload: true,
		Trees:   []Tree{{Driver: "550.54.14", OSVersion: "3815.2.0", Kernel: "6.1.77-flatcar", Vermagic: "6.1.73-flatcar SMP preempt mod_unload"}},
		Current: "550.54.14/3815.2.0",
		Config:  "driver-version: 550.54.14\nrepository: " + repo + "\n",
	},
	"coreos-legacy": {
		About: "CoreOS Container Linux with a tree laid down by the original installer (absolute current link), no driver-version set",
		Base:  "coreos", Flags: "SMP mod_unload",
		Trees:   []Tree{{Driver: "384.111", OSVersion: "1576.5.0", Kernel: "4.14.11-coreos"}},
		Current: "/opt/nvidia/384.111/1576.5.0",
	},
	"debian-generic": {
		About: "Debian 12 without an NVIDIA GPU; images keyed by kernel release",
		Base:  "debian", Flags: "SMP preempt mod_unload modversions",
		Config: "driver-version: 550.54.14\nrepository: " + repo + "\n" +
			"tag-template: \"{{.OSID}}{{.OSVersion}}-{{.KernelRelease}}-{{.DriverVersion}}\"\n",
	},
}

// Names returns the names of Specs, sorted.
func Names() []string {
	names := make([]string, 0, len(Specs))
	for n := range Specs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// DriverModule is one NVIDIA kernel module: its file name (without .ko),
// its module name and the modules its depends= names.
type DriverModule struct {
	File, Name string
	Depends    []string
}

// DriverModules are the NVIDIA modules with their dependencies, as the
// real driver builds them.
var DriverModules = []DriverModule{
	{"nvidia", "nvidia", nil},
	{"nvidia-modeset", "nvidia_modeset", []string{"nvidia"}},
	{"nvidia-uvm", "nvidia_uvm", []string{"nvidia"}},
	{"nvidia-drm", "nvidia_drm", []string{"nvidia-modeset", "drm_kms_helper", "drm"}},
}

// Make lays out host s at dst, copying the base fixture from fixtures (the
// test/fixtures/hosts directory).
func Make(fixtures, dst string, s Spec) error {
	if err := copyTree(filepath.Join(fixtures, s.Base), dst); err != nil {
		return err
	}
	release, err := os.ReadFile(filepath.Join(dst, "proc/sys/kernel/osrelease"))
	if err != nil {
		return err
	}
	kernel := string(trimNewline(release))
	if s.Flags != "" {
		if err := inTreeModule(dst, s.Base, kernel, s.Flags); err != nil {
			return err
		}
	}
	if s.Unload {
		for _, m := range DriverModules {
			if err := os.RemoveAll(filepath.Join(dst, "sys/module", m.Name)); err != nil {
				return err
			}
		}
		if err := os.RemoveAll(filepath.Join(dst, "proc/driver/nvidia")); err != nil {
			return err
		}
	}
	store := s.Store
	if store == "" {
		store = "/opt/nvidia"
	}
	for _, t := range s.Trees {
		vermagic := t.Vermagic
		if vermagic == "" {
			vermagic = t.Kernel + " " + s.Flags
		}
		dir := filepath.Join(dst, store, t.Driver, t.OSVersion, "lib/modules", t.Kernel, "video")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, m := range DriverModules {
			fields := kofixture.Standard(m.Name, t.Driver, vermagic+" ", m.Depends...)
			if _, err := kofixture.Write(dir, kofixture.Module{Name: m.File, Fields: fields}); err != nil {
				return err
			}
		}
	}
	if s.Current != "" {
		if err := os.Symlink(s.Current, filepath.Join(dst, store, "current")); err != nil {
			return err
		}
	}
	for _, st := range s.Staging {
		dir := filepath.Join(dst, store, ".staging", st, "lib64")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "libcuda.so.550.54.14"), []byte("half"), 0o644); err != nil {
			return err
		}
	}
	if s.Config != "" {
		dir := filepath.Join(dst, "etc/nvidia-driverd")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "config.yaml"), []byte(s.Config), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// inTreeModule builds one module of the running kernel where the host
// keeps them: Flatcar under /usr/lib/modules with /lib a link to usr/lib,
// others under /lib/modules (xz-compressed on Debian, as newer releases
// ship them).
func inTreeModule(dst, base, kernel, flags string) error {
	m := kofixture.Module{Name: "fat", Fields: kofixture.Standard("fat", "", kernel+" "+flags+" ")}
	dir := filepath.Join(dst, "lib/modules", kernel, "kernel/fs/fat")
	switch base {
	case "flatcar":
		if err := os.Symlink("usr/lib", filepath.Join(dst, "lib")); err != nil {
			return err
		}
		dir = filepath.Join(dst, "usr/lib/modules", kernel, "kernel/fs/fat")
	case "debian":
		m.Compress = "xz"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_, err := kofixture.Write(dir, m)
	return err
}

// copyTree copies src to dst, keeping symlinks as links.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		default:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, 0o644)
		}
	})
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// Describe returns a line naming the spec for messages.
func Describe(name string) string {
	if s, ok := Specs[name]; ok {
		return fmt.Sprintf("%s: %s", name, s.About)
	}
	return name
}

// DriverTree lays out a small driver tree at dst as a driver build would
// leave it: the four modules for kernel (with vermagic), libraries with
// SONAME links, a binary and firmware.
func DriverTree(dst, driver, kernel, vermagic string) error {
	dir := filepath.Join(dst, "lib/modules", kernel, "video")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, m := range DriverModules {
		fields := kofixture.Standard(m.Name, driver, vermagic+" ", m.Depends...)
		if _, err := kofixture.Write(dir, kofixture.Module{Name: m.File, Fields: fields}); err != nil {
			return err
		}
	}
	// Real shared objects with the driver's SONAMEs, so that ldconfig and
	// the dynamic linker treat them as they would the real libraries.
	for _, lib := range []string{"libcuda.so", "libnvidia-ml.so"} {
		if err := sharedObject(filepath.Join(dst, "lib64"), lib, driver); err != nil {
			return err
		}
	}
	files := map[string]string{
		"bin/nvidia-smi":                         "#!/bin/sh\ncat /sys/module/nvidia/version\n",
		"firmware/nvidia/" + driver + "/gsp.bin": "stub firmware",
	}
	for name, body := range files {
		p := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// sharedObject compiles dir/<lib>.<driver> with SONAME <lib>.1 and links
// <lib>.1 to it, as the driver ships them.
func sharedObject(dir, lib, driver string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	file := lib + "." + driver
	cmd := exec.Command("gcc", "-shared", "-fPIC", "-nostdlib", "-Wl,-soname,"+lib+".1", "-o", filepath.Join(dir, file), "-x", "c", "-")
	cmd.Stdin = strings.NewReader("const char nvidia_driverd_stub_version[] = \"" + driver + "\";\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", file, err, out)
	}
	return os.Symlink(file, filepath.Join(dir, lib+".1"))
}
