package hostinfo

import (
	"errors"
	"io/fs"
	"path"
	"path/filepath"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

// errFound stops a directory walk at the first hit.
var errFound = errors.New("found")

// InTreeModule finds one module file that kernel release shipped, under
// <root>/lib/modules/<release>/kernel or <root>/usr/lib/modules/<release>/kernel
// (Flatcar keeps modules under /usr). Its vermagic shows the kernel's
// vermagic flags, which /proc does not.
//
// It returns the module's path on the host (hostPath, for messages), the
// path to open on this machine (fsPath), and ok = false when no regular
// .ko, .ko.xz, .ko.zst or .ko.gz file exists there. The first file in
// lexical order is taken, so the answer is stable.
func (h *Host) InTreeModule(release string) (hostPath, fsPath string, ok bool) {
	if release == "" || strings.ContainsRune(release, '/') || release == "." || release == ".." {
		return "", "", false
	}
	for _, base := range ModuleDirs {
		dir := path.Join(base, release, "kernel")
		start, err := h.fs.Path(dir)
		if err != nil {
			continue
		}
		var hit string
		_ = filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // skip what cannot be read
			}
			if d.Type().IsRegular() && isModuleFile(d.Name()) {
				hit = p
				return errFound
			}
			return nil
		})
		if hit != "" {
			rel, _ := filepath.Rel(start, hit)
			return path.Join(dir, filepath.ToSlash(rel)), hit, true
		}
	}
	return "", "", false
}

// KernelFlags returns the vermagic flags of kernel release ("SMP preempt
// mod_unload modversions"), read from one of its own in-tree modules (see
// InTreeModule), and the host path of that module. ok is false when no
// such module exists or its vermagic cannot be read or names another
// release: then only the release can be compared, which still protects
// the host.
func (h *Host) KernelFlags(release string) (flags []string, from string, ok bool) {
	host, fsPath, found := h.InTreeModule(release)
	if !found {
		return nil, "", false
	}
	info, err := modinfo.Read(fsPath)
	if err != nil {
		return nil, "", false
	}
	vm, err := modinfo.ParseVermagic(info.Vermagic)
	if err != nil || vm.Release != release {
		return nil, "", false
	}
	return append([]string{}, vm.Flags...), host, true
}

func isModuleFile(name string) bool {
	_, ok := modinfo.ModuleName(name)
	return ok
}
