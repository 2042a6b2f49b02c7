package hostinfo

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

// ModuleIndex is what a kernel's own module directory says of its
// modules: modules.dep and modules.builtin.
type ModuleIndex struct {
	// Dir is the host path of the directory they were read from, ""
	// when neither file exists in any of ModuleDirs.
	Dir string
	// Looked are the host paths of the modules.dep files looked for,
	// for messages.
	Looked []string
	// Entries are the modules of modules.dep, by kernel name.
	Entries map[string]IndexEntry
	// Builtin are the kernel names of the modules built into the kernel.
	Builtin map[string]bool
}

// IndexEntry is one line of modules.dep.
type IndexEntry struct {
	Path string   // the module file, as a path to open on this machine
	Deps []string // kernel names of the modules it needs
}

// ModuleNames returns the names in /sys/module (loaded and built-in
// modules), sorted; nil when the directory does not exist.
func (h *Host) ModuleNames() ([]string, error) {
	entries, err := h.fs.ReadDir(sysModuleDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, errorf("read modules", err)
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, nil
}

// ModuleIndex reads modules.dep and modules.builtin of kernel release from
// the first of ModuleDirs that has either. It returns an index with empty
// maps when none has, or an error naming the file when one exists but
// cannot be read, is too large or has a line without a ':'.
func (h *Host) ModuleIndex(release string) (ModuleIndex, error) {
	idx := ModuleIndex{Entries: map[string]IndexEntry{}, Builtin: map[string]bool{}}
	if release == "" || release == "." || release == ".." || strings.ContainsAny(release, "/\x00") {
		return idx, fmt.Errorf("read host modules: invalid kernel release %q", release)
	}
	for _, base := range ModuleDirs {
		dir := path.Join(base, release)
		depFile := path.Join(dir, "modules.dep")
		idx.Looked = append(idx.Looked, depFile)
		dep, depErr := h.fs.ReadFile(depFile, limitModulesDep)
		builtin, builtinErr := h.fs.ReadFile(path.Join(dir, "modules.builtin"), limitModulesDep)
		if errors.Is(depErr, fs.ErrNotExist) && errors.Is(builtinErr, fs.ErrNotExist) {
			continue
		}
		for _, err := range []error{depErr, builtinErr} {
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return idx, errorf("read host modules", err)
			}
		}
		idx.Dir = dir
		idx.Builtin = parseBuiltin(string(builtin))
		if err := h.parseDep(&idx, string(dep)); err != nil {
			return idx, fmt.Errorf("read host modules: %s: %w", h.hostPath(depFile), err)
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
		if name, ok := modinfo.ModuleName(path.Base(line)); ok {
			names[name] = true
		}
	}
	return names
}

// parseDep adds the lines of modules.dep to idx.Entries:
//
//	kernel/drivers/char/ipmi/ipmi_devintf.ko.xz: kernel/drivers/char/ipmi/ipmi_msghandler.ko.xz
//
// Relative paths are taken relative to idx.Dir, absolute ones as host
// paths; both are resolved inside the host root. It returns an error
// naming the line number of a line without ':'.
func (h *Host) parseDep(idx *ModuleIndex, data string) error {
	sc := bufio.NewScanner(strings.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		file, deps, ok := strings.Cut(line, ":")
		file = strings.TrimSpace(file)
		name, named := modinfo.ModuleName(path.Base(file))
		if !ok || !named {
			return fmt.Errorf("line %d: not \"<module>.ko: <dependencies>\": %q", n, line)
		}
		if !path.IsAbs(file) {
			file = path.Join(idx.Dir, file)
		}
		real, err := h.fs.Path(file)
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		e := IndexEntry{Path: real}
		for _, d := range strings.Fields(deps) {
			if dn, ok := modinfo.ModuleName(path.Base(d)); ok {
				e.Deps = append(e.Deps, dn)
			}
		}
		idx.Entries[name] = e
	}
	return sc.Err()
}

// ModuleSigning reports whether the running kernel refuses unsigned
// modules, and why: kernel lockdown in integrity or confidentiality mode
// (what Secure Boot turns on in most distributions), read from
// /sys/kernel/security/lockdown, or module.sig_enforce, read from
// /sys/module/module/parameters/sig_enforce.
//
// It returns true and a reason such as "lockdown=integrity" or
// "module.sig_enforce=Y" (both, joined by ", ", when both apply), or false
// and "" when neither does. A file that is missing or cannot be read
// counts as not enforcing: the kernel still enforces what it enforces, and
// loading then reports its refusal after trying.
func (h *Host) ModuleSigning() (bool, string) {
	var why []string
	if mode := h.lockdownMode(); mode == "integrity" || mode == "confidentiality" {
		why = append(why, "lockdown="+mode)
	}
	if s, err := h.readTrimmed(sigEnforcePath); err == nil && (s == "Y" || s == "1") {
		// Set on the command line, or built in (CONFIG_MODULE_SIG_FORCE).
		from := "built into the kernel"
		if cmdline, err := h.readTrimmed(cmdlinePath); err == nil {
			for _, w := range strings.Fields(cmdline) {
				if strings.HasPrefix(w, "module.sig_enforce=") {
					from = w + " on the kernel command line"
				}
			}
		}
		why = append(why, "module.sig_enforce=Y, "+from)
	}
	return len(why) > 0, strings.Join(why, ", ")
}

// lockdownMode returns the selected lockdown mode, the bracketed word of
// /sys/kernel/security/lockdown ("none [integrity] confidentiality"), or
// "" when the file is missing or unreadable or selects none.
func (h *Host) lockdownMode() string {
	s, err := h.readTrimmed(lockdownPath)
	if err != nil {
		return ""
	}
	for _, w := range strings.Fields(s) {
		if len(w) > 2 && strings.HasPrefix(w, "[") && strings.HasSuffix(w, "]") {
			return w[1 : len(w)-1]
		}
	}
	return ""
}
