package hostinfo

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

// Module describes a kernel module as sysfs shows it under
// /sys/module/<name>.
type Module struct {
	Name       string            // the kernel's spelling: dashes become underscores
	Version    string            // version ("" if absent)
	SrcVersion string            // srcversion ("" if absent)
	Refcnt     int               // refcnt (-1 if absent, as for a built-in module)
	InitState  string            // initstate: "live", "coming", "going" ("" for a built-in module)
	Holders    []string          // entries of holders/, sorted (nil if none)
	Parameters map[string]string // parameters/<p>, without the trailing newline; unreadable ones skipped (nil if none)
}

// LoadedModule reads <root>/sys/module/<name>, name spelled as the kernel
// does (modinfo.CheckName: "nvidia-uvm" finds nvidia_uvm).
//
// It returns (Module{}, false, nil) if the directory does not exist. For a
// module built into the kernel (the directory exists, but has no initstate)
// it returns the module with Refcnt -1 and InitState "", and true. For a
// loaded module it returns its details and true. Absent attribute files
// leave their fields at "" (Refcnt -1), and parameters that cannot be read
// are skipped.
//
// It returns an error if the normalised name is empty, "." or "..", or
// holds a '/'; and an error naming the path if the module directory or any
// other file in it exists but cannot be read, or refcnt is not a number.
func (h *Host) LoadedModule(name string) (Module, bool, error) {
	norm, err := modinfo.CheckName(name)
	if err != nil {
		return Module{}, false, fmt.Errorf("read module: %w", err)
	}
	dir := path.Join(sysModuleDir, norm)
	if _, err := h.fs.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return Module{}, false, nil
	} else if err != nil {
		return Module{}, false, fmt.Errorf("read module %s: %w", norm, err)
	}
	m := Module{Name: norm, Refcnt: -1}
	attrs := []struct {
		file string
		dst  *string
	}{
		{"version", &m.Version},
		{"srcversion", &m.SrcVersion},
		{"initstate", &m.InitState},
	}
	for _, a := range attrs {
		v, err := optionalAttr(h, path.Join(dir, a.file))
		if err != nil {
			return Module{}, false, fmt.Errorf("read module %s: %w", norm, err)
		}
		*a.dst = v
	}

	refcnt, err := optionalAttr(h, path.Join(dir, "refcnt"))
	if err != nil {
		return Module{}, false, fmt.Errorf("read module %s: %w", norm, err)
	}
	if refcnt != "" {
		if m.Refcnt, err = strconv.Atoi(refcnt); err != nil {
			return Module{}, false, fmt.Errorf("read module %s: %s: %w", norm, h.hostPath(path.Join(dir, "refcnt")), err)
		}
	}
	if m.InitState == "" {
		m.Refcnt = -1 // built in: the kernel has no refcnt to report
	}

	if m.Holders, err = optionalDirNames(h, path.Join(dir, "holders")); err != nil {
		return Module{}, false, fmt.Errorf("read module %s: %w", norm, err)
	}
	if m.Parameters, err = readParameters(h, path.Join(dir, "parameters")); err != nil {
		return Module{}, false, fmt.Errorf("read module %s: %w", norm, err)
	}
	return m, true, nil
}

// optionalAttr returns the trimmed contents of the file name, "" if it
// does not exist, or an error naming the path if it cannot be read.
func optionalAttr(h *Host, name string) (string, error) {
	v, err := h.readTrimmed(name)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	return v, err
}

// optionalDirNames returns the sorted entry names of directory name, nil
// if it does not exist or is empty, or an error naming the path if it
// cannot be read.
func optionalDirNames(h *Host, name string) ([]string, error) {
	entries, err := h.fs.ReadDir(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names, nil
}

// readParameters returns the values in directory name, one file per
// parameter, each without its trailing newline. It returns nil if the
// directory does not exist or holds no readable parameter, and an error
// naming the path if the directory cannot be read. A parameter that cannot
// be read (sysfs refuses reads of write-only ones) is left out.
func readParameters(h *Host, name string) (map[string]string, error) {
	params, err := optionalDirNames(h, name)
	if err != nil {
		return nil, err
	}
	var values map[string]string
	for _, p := range params {
		b, err := h.readFile(path.Join(name, p))
		if err != nil {
			continue
		}
		if values == nil {
			values = make(map[string]string)
		}
		values[p] = strings.TrimSuffix(string(b), "\n")
	}
	return values, nil
}

// NvidiaProcVersion returns the version of the loaded NVIDIA kernel module,
// such as "550.54.14", from the first line of
// <root>/proc/driver/nvidia/version. Both the proprietary and the open
// module's lines are understood:
//
//	NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024
//	NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@...)
//
// The version is the first field after "NVRM version:" made of two or more
// dot-separated decimal numbers.
//
// It returns ("", nil) if the file does not exist, as when the module is
// not loaded. It returns an error naming the file if it cannot be read or
// its first line does not have that form.
func (h *Host) NvidiaProcVersion() (string, error) {
	b, err := h.readFile(nvidiaVersionPath)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read nvidia version: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	if rest, ok := strings.CutPrefix(strings.TrimSpace(first), "NVRM version:"); ok {
		for _, f := range strings.Fields(rest) {
			if isDriverVersion(f) {
				return f, nil
			}
		}
	}
	return "", fmt.Errorf("read nvidia version: %s: no version in first line %q", h.hostPath(nvidiaVersionPath), first)
}

// isDriverVersion reports whether s is two or more dot-separated runs of
// decimal digits, like "550.54.14" or "390.157".
func isDriverVersion(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// LoadedModules returns those of names that are loaded or built in, keyed
// by normalised name (see LoadedModule); names not present are left out.
// It returns a non-nil map, or the first error LoadedModule would return.
func (h *Host) LoadedModules(names []string) (map[string]Module, error) {
	mods := make(map[string]Module, len(names))
	for _, name := range names {
		m, ok, err := h.LoadedModule(name)
		if err != nil {
			return nil, err
		}
		if ok {
			mods[m.Name] = m
		}
	}
	return mods, nil
}
