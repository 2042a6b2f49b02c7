package libs

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// ErrUnresolved is wrapped by the error Activate returns when a wanted
// SONAME does not resolve into the tree after ldconfig.
var ErrUnresolved = errors.New("SONAME does not resolve into the driver tree")

// updateCache runs ldconfig and, when check is set, checks with ldconfig
// -p that every wanted SONAME resolves into the tree's library directory.
// It returns an error when ldconfig fails, or wrapping ErrUnresolved when
// the check fails.
func (s setup) updateCache(check bool) error {
	if _, err := run(s.ldconfig); err != nil {
		return err
	}
	if !check {
		return nil
	}
	out, err := run(append(slices.Clone(s.ldconfig), "-p"))
	if err != nil {
		return err
	}
	dirs, err := s.libDirs()
	if err != nil {
		return err
	}
	return checkResolved(parseCache(out), s.want, dirs)
}

// libDirs returns the directory the wanted SONAMEs must resolve into, as a
// host path and as a real path, since the cache names paths in whichever
// form its configuration did: /usr/lib64 in overlay mode, <tree>/lib64 in
// ldconfig mode. It returns an error when /usr/lib64 cannot be resolved.
func (s setup) libDirs() ([]string, error) {
	if s.mode == ModeLdconfig {
		return uniq([]string{filepath.Join(s.treeHost, "lib64"), filepath.Join(s.tree, "lib64")}), nil
	}
	point, err := s.mountPoint("/usr/lib64", false)
	if err != nil {
		return nil, err
	}
	if point == "" {
		point = s.fs.Join("/usr/lib64")
	}
	return uniq([]string{"/usr/lib64", point, s.fs.Host(point)}), nil
}

// run runs argv and returns its standard output. It returns an error
// carrying the command's standard error when it cannot start or exits
// non-zero.
func run(argv []string) (string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("run %s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// cacheEntry is one library of the linker cache as ldconfig -p prints it:
//
//	libcuda.so.1 (libc6,x86-64) => /usr/lib64/libcuda.so.1
type cacheEntry struct {
	soname string
	arch   string // the flags without hwcap and OS ABI, e.g. "libc6,x86-64"
	path   string
}

// parseCache returns the entries of ldconfig -p output, in its order,
// which is the order the dynamic linker searches. Lines that are not
// entries (the count, the generator) are skipped.
func parseCache(out string) []cacheEntry {
	var entries []cacheEntry
	for _, line := range strings.Split(out, "\n") {
		left, path, ok := strings.Cut(strings.TrimSpace(line), " => ")
		if !ok {
			continue
		}
		name, tags, ok := strings.Cut(left, " (")
		if !ok || name == "" || path == "" {
			continue
		}
		entries = append(entries, cacheEntry{soname: name, arch: archOf(strings.TrimSuffix(tags, ")")), path: path})
	}
	return entries
}

// archOf returns the flags of an entry's tags ("libc6,x86-64, hwcap:
// ..., OS ABI: Linux 3.2.0") without the attributes, which carry a ':'.
func archOf(tags string) string {
	var flags []string
	for _, f := range strings.Split(tags, ",") {
		if f = strings.TrimSpace(f); f != "" && !strings.Contains(f, ":") {
			flags = append(flags, f)
		}
	}
	return strings.Join(flags, ",")
}

// checkResolved returns nil when every SONAME of want resolves into one of
// dirs: it has an entry there, and no entry of the same architecture
// before it points elsewhere (the dynamic linker takes the first). It
// returns an error wrapping ErrUnresolved naming every SONAME that is
// missing or resolves elsewhere first.
func checkResolved(entries []cacheEntry, want, dirs []string) error {
	var problems []string
	for _, name := range want {
		if p := resolveProblem(entries, name, dirs); p != "" {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("check linker cache: %s: %w", strings.Join(problems, "; "), ErrUnresolved)
	}
	return nil
}

// resolveProblem returns "" when SONAME name resolves into one of dirs, or
// else a sentence saying where it resolves instead.
func resolveProblem(entries []cacheEntry, name string, dirs []string) string {
	var seen []cacheEntry
	for _, e := range entries {
		if e.soname != name {
			continue
		}
		if slices.Contains(dirs, filepath.Dir(e.path)) {
			for _, before := range seen {
				if before.arch == e.arch {
					return fmt.Sprintf("%s resolves to %s before %s", name, before.path, e.path)
				}
			}
			return ""
		}
		seen = append(seen, e)
	}
	if len(seen) == 0 {
		return fmt.Sprintf("%s is not in the cache", name)
	}
	return fmt.Sprintf("%s resolves to %s, not into %s", name, seen[0].path, dirs[0])
}
