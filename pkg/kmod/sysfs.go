package kmod

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

// normName returns a module name as the kernel writes it in /sys/module,
// dashes replaced by underscores. It returns an error when the name is
// empty, "." or "..", or holds a '/' or a NUL, which no module name does
// and which would reach outside /sys/module.
func normName(name string) (string, error) {
	n := modinfo.KernelName(strings.TrimSpace(name))
	if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") {
		return "", fmt.Errorf("invalid module name %q", name)
	}
	return n, nil
}

// sysModulePath returns <root>/sys/module/<name>[/<attr>...].
func sysModulePath(root, name string, attr ...string) string {
	return filepath.Join(append([]string{root, "sys", "module", name}, attr...)...)
}

// readAttr returns the contents of the file at path without surrounding
// white space, and true. It returns "", false, nil when the file does not
// exist, and an error naming path when it cannot be read.
func readAttr(path string) (string, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), true, nil
}

// sysModule is what <root>/sys/module/<name> says about a module.
type sysModule struct {
	present   bool   // the directory exists
	initState string // "live", "coming" or "going"; "" when built in or absent
	version   string // "" when the module has none
}

// builtIn reports whether the module is built into the kernel: sysfs has a
// directory for it (for its parameters) but no initstate.
func (m sysModule) builtIn() bool { return m.present && m.initState == "" }

// live reports whether the module is loaded and fully initialised.
func (m sysModule) live() bool { return m.initState == "live" }

// readSysModule reads <root>/sys/module/<name>, name already normalised.
// It returns the zero sysModule when the directory does not exist, and an
// error naming the path when it or one of its attributes cannot be read.
func readSysModule(root, name string) (sysModule, error) {
	dir := sysModulePath(root, name)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return sysModule{}, nil
	} else if err != nil {
		return sysModule{}, fmt.Errorf("read module %s: %w", name, err)
	}
	m := sysModule{present: true}
	var err error
	if m.initState, _, err = readAttr(filepath.Join(dir, "initstate")); err != nil {
		return sysModule{}, fmt.Errorf("read module %s: %w", name, err)
	}
	if m.version, _, err = readAttr(filepath.Join(dir, "version")); err != nil {
		return sysModule{}, fmt.Errorf("read module %s: %w", name, err)
	}
	return m, nil
}

// readRefcnt returns the refcnt of loaded module name. It returns an error
// naming the path when the file cannot be read, is missing (a kernel
// without CONFIG_MODULE_UNLOAD, which cannot unload anyway) or is not a
// number.
func readRefcnt(root, name string) (int, error) {
	path := sysModulePath(root, name, "refcnt")
	s, ok, err := readAttr(path)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("read %s: missing (kernel without CONFIG_MODULE_UNLOAD?)", path)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	return n, nil
}

// readHolders returns the sorted names in <root>/sys/module/<name>/holders:
// the loaded modules that use name. It returns nil when there are none or
// the directory does not exist, and an error naming the path when it
// cannot be read.
func readHolders(root, name string) ([]string, error) {
	path := sysModulePath(root, name, "holders")
	entries, err := os.ReadDir(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var names []string
	for _, e := range entries { // os.ReadDir sorts them
		names = append(names, e.Name())
	}
	return names, nil
}
