// Package hostinfo reads facts about a host from a directory tree mounted
// at root: the OS release, the running kernel release, the loaded kernel
// modules and the NVIDIA GPUs on the PCI bus.
//
// Every function takes the host's root directory as its first argument.
// In production it is "/"; tests pass a fixture tree or t.TempDir(). All
// host paths, including symlink targets, are interpreted inside root.
package hostinfo

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// maxSymlinks bounds how many symlinks one path lookup may follow, as the
// Linux kernel does (MAXSYMLINKS), so that link loops end in ELOOP.
const maxSymlinks = 40

// hostRoot reads files of a host tree mounted at dir.
//
// Symlinks are resolved by hand rather than by os.Root: a host's
// /etc/os-release is usually a link to ../usr/lib/os-release, but absolute
// links such as /etc/localtime -> /usr/share/zoneinfo/UTC must mean
// <root>/usr/share/..., and os.Root refuses absolute links outright. So
// resolve walks the path one component at a time, re-roots absolute
// targets at dir and stops ".." at dir, the way chroot(2) would. The
// resulting symlink-free path is then opened through os.Root, which
// guarantees that a link swapped in after resolution still cannot reach
// outside dir.
type hostRoot struct {
	dir  string   // root as given by the caller, for messages
	root *os.Root // handle that confines every access to dir
}

// openHost opens the host tree at dir. It returns an error naming dir if
// dir cannot be opened as a directory. The caller must call close.
func openHost(dir string) (*hostRoot, error) {
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open host root: %w", err)
	}
	return &hostRoot{dir: dir, root: r}, nil
}

func (h *hostRoot) close() { h.root.Close() }

// hostPath returns the path under which name appears on this machine,
// for use in messages: filepath.Join(dir, name).
func (h *hostRoot) hostPath(name string) string {
	return filepath.Join(h.dir, filepath.FromSlash("/"+name))
}

// pathError describes the failure of an access to name with the host path
// and the bare cause ("/root/etc/os-release: no such file or directory").
// The cause stays wrapped, so errors.Is(err, fs.ErrNotExist) works.
func (h *hostRoot) pathError(name string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s: %w", h.hostPath(name), err)
}

// resolve returns name, a path inside the host tree, with every symlink
// along it followed inside the tree. The result is relative to dir, uses
// the OS separator and names no symlink ("." for dir itself).
//
// It returns an error wrapping fs.ErrNotExist if a component is missing,
// syscall.ELOOP after maxSymlinks links, and the lstat or readlink error
// otherwise. Errors are not yet decorated with a path; see pathError.
func (h *hostRoot) resolve(name string) (string, error) {
	var done []string       // resolved components, none a symlink
	todo := splitPath(name) // components still to walk
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case ".":
			continue
		case "..":
			if len(done) > 0 {
				done = done[:len(done)-1]
			}
			continue
		}
		p := filepath.Join(append(done, c)...)
		fi, err := h.root.Lstat(p)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			done = append(done, c)
			continue
		}
		links++
		if links > maxSymlinks {
			return "", syscall.ELOOP
		}
		target, err := h.root.Readlink(p)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			done = done[:0]
		}
		todo = append(splitPath(target), todo...)
	}
	if len(done) == 0 {
		return ".", nil
	}
	return filepath.Join(done...), nil
}

// splitPath splits p into its non-empty components.
func splitPath(p string) []string {
	return strings.FieldsFunc(p, func(r rune) bool { return r == filepath.Separator })
}

// readFile returns the contents of name, symlinks resolved inside the tree.
// Errors name the host path and wrap the cause (fs.ErrNotExist for a
// missing file or directory along the way).
func (h *hostRoot) readFile(name string) ([]byte, error) {
	p, err := h.resolve(name)
	if err != nil {
		return nil, h.pathError(name, err)
	}
	b, err := h.root.ReadFile(p)
	if err != nil {
		return nil, h.pathError(name, err)
	}
	return b, nil
}

// readTrimmed is readFile with surrounding whitespace removed, the usual
// shape of a sysfs or procfs attribute.
func (h *hostRoot) readTrimmed(name string) (string, error) {
	b, err := h.readFile(name)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// readDir returns the entries of directory name, symlinks along the way
// resolved inside the tree, in directory order. Errors are as for readFile.
func (h *hostRoot) readDir(name string) ([]fs.DirEntry, error) {
	p, err := h.resolve(name)
	if err != nil {
		return nil, h.pathError(name, err)
	}
	f, err := h.root.Open(p)
	if err != nil {
		return nil, h.pathError(name, err)
	}
	defer f.Close()
	entries, err := f.ReadDir(-1)
	if err != nil {
		return nil, h.pathError(name, err)
	}
	return entries, nil
}

// readlink returns the target text of symlink name without following it;
// the components before the last one are resolved inside the tree. Errors
// are as for readFile; name not being a symlink is an error wrapping
// syscall.EINVAL, as readlink(2) reports it.
func (h *hostRoot) readlink(name string) (string, error) {
	dir, err := h.resolve(filepath.Dir(filepath.FromSlash(name)))
	if err != nil {
		return "", h.pathError(name, err)
	}
	target, err := h.root.Readlink(filepath.Join(dir, filepath.Base(name)))
	if err != nil {
		return "", h.pathError(name, err)
	}
	return target, nil
}

// Within reports whether clean path p is dir or lies below it.
func Within(p, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// HostPath returns real path p, which lies within root, as the host sees
// it (without the root prefix).
func HostPath(root, p string) string {
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == "." {
		return "/"
	}
	return "/" + rel
}
