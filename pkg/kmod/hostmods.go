package kmod

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

// hostEntry is one line of the host's modules.dep.
type hostEntry struct {
	path string   // the module file on this machine
	deps []string // normalised names of the modules it needs
}

// hostIndex is what the running kernel's own module directory says:
// modules.dep and modules.builtin.
type hostIndex struct {
	dir     string               // where they were read; "" when neither exists
	entries map[string]hostEntry // by normalised module name
	builtin map[string]bool      // normalised names of built-in modules
}

// hostModuleDirs returns where the running kernel's modules live under
// root: <root>/lib/modules/<release>, then <root>/usr/lib/modules/<release>
// (Flatcar and merged-/usr hosts).
func hostModuleDirs(root, release string) []string {
	return []string{
		filepath.Join(root, "lib", "modules", release),
		filepath.Join(root, "usr", "lib", "modules", release),
	}
}

// readHostIndex reads modules.dep and modules.builtin from the first of
// hostModuleDirs that has either. It returns an index with empty maps and
// dir "" when none has, or an error naming the file when one exists but
// cannot be read or has a line without a ':'.
func readHostIndex(root, release string) (*hostIndex, error) {
	idx := &hostIndex{entries: map[string]hostEntry{}, builtin: map[string]bool{}}
	for _, dir := range hostModuleDirs(root, release) {
		dep, depErr := os.ReadFile(filepath.Join(dir, "modules.dep"))
		builtin, builtinErr := os.ReadFile(filepath.Join(dir, "modules.builtin"))
		if errors.Is(depErr, fs.ErrNotExist) && errors.Is(builtinErr, fs.ErrNotExist) {
			continue
		}
		for _, err := range []error{depErr, builtinErr} {
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("read host modules: %w", err)
			}
		}
		idx.dir = dir
		idx.builtin = parseBuiltin(string(builtin))
		if err := idx.parseDep(root, string(dep)); err != nil {
			return nil, fmt.Errorf("read host modules: %s: %w", filepath.Join(dir, "modules.dep"), err)
		}
		return idx, nil
	}
	return idx, nil
}

// parseBuiltin returns the names of the modules listed in modules.builtin,
// one path (kernel/drivers/video/video.ko) a line.
func parseBuiltin(data string) map[string]bool {
	names := make(map[string]bool)
	for _, line := range strings.Fields(data) {
		if name, ok := modinfo.ModuleName(filepath.Base(line)); ok {
			names[name] = true
		}
	}
	return names
}

// parseDep adds the lines of modules.dep to idx.entries:
//
//	kernel/drivers/char/ipmi/ipmi_devintf.ko.xz: kernel/drivers/char/ipmi/ipmi_msghandler.ko.xz
//
// Relative paths are taken relative to idx.dir, absolute ones relative to
// root. It returns an error naming the line number of a line without ':'.
func (idx *hostIndex) parseDep(root, data string) error {
	sc := bufio.NewScanner(strings.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		file, deps, ok := strings.Cut(line, ":")
		name, named := modinfo.ModuleName(filepath.Base(strings.TrimSpace(file)))
		if !ok || !named {
			return fmt.Errorf("line %d: not \"<module>.ko: <dependencies>\": %q", n, line)
		}
		e := hostEntry{path: idx.resolve(root, strings.TrimSpace(file))}
		for _, d := range strings.Fields(deps) {
			if dn, ok := modinfo.ModuleName(filepath.Base(d)); ok {
				e.deps = append(e.deps, dn)
			}
		}
		idx.entries[name] = e
	}
	return sc.Err()
}

// resolve returns the path on this machine of a path in modules.dep.
func (idx *hostIndex) resolve(root, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Join(root, p)
	}
	return filepath.Join(idx.dir, p)
}
