// Package hostfs is the one way nvidia-driverd reaches the files of the
// host it manages, mounted at a directory (--root: "/" on the host,
// /rootfs in a container, a fixture tree in tests).
//
// Every host path, read or written, is resolved inside that directory the
// way chroot(2) would see it: symlinks are followed one component at a
// time, an absolute target is re-rooted at the directory, and ".." stops
// there. So a host whose /opt is a link to /var/opt (Fedora CoreOS and
// other ostree hosts) gets its store under <root>/var/opt, and /var/run ->
// /run means <root>/run, never this machine's own /run.
//
// Host files are read bounded and without blocking: a FIFO, a device node
// or a file larger than the limit of its kind in the place of a host file
// is an error naming the path, not a hang or an allocation of gigabytes.
package hostfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// maxSymlinks bounds how many symlinks one lookup follows, as Linux does
// (MAXSYMLINKS), so that a link loop ends in ELOOP.
const maxSymlinks = 40

// Root is a host tree mounted at a directory. Its methods take host paths
// (absolute, as the host sees them: "/etc/os-release"); relative ones are
// taken from the host's /. A Root is safe for concurrent use.
type Root struct {
	dir  string   // the directory, cleaned, as given
	root *os.Root // confines every lookup to dir
}

// Open opens the host tree at dir, which must be an absolute path of an
// existing directory. The caller must Close it.
func Open(dir string) (*Root, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("open host root %q: not an absolute path", dir)
	}
	dir = filepath.Clean(dir)
	r, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open host root: %w", err)
	}
	return &Root{dir: dir, root: r}, nil
}

// Close releases the directory handle.
func (r *Root) Close() error { return r.root.Close() }

// Dir returns the directory the host is mounted at.
func (r *Root) Dir() string { return r.dir }

// IsHost reports whether the tree is this machine's own root, "/".
func (r *Root) IsHost() bool { return r.dir == "/" }

// Join returns where host path p appears on this machine, without
// resolving anything: for messages, and for paths known to hold no
// symlink.
func (r *Root) Join(p string) string {
	return filepath.Join(r.dir, filepath.FromSlash("/"+p))
}

// Host returns the host path of real, a path on this machine that lies
// in the tree (the inverse of Join); "/" for the directory itself or a
// path outside it.
func (r *Root) Host(real string) string {
	rel, err := filepath.Rel(r.dir, real)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "/"
	}
	return "/" + filepath.ToSlash(rel)
}

// Path resolves host path p to the path on this machine to open, every
// symlink along it followed inside the tree, the last one included.
// Components from the first missing one on are kept as they are, so the
// path of something to create resolves too. It returns an error naming p
// for a symlink loop (ELOOP) or a component that cannot be examined.
func (r *Root) Path(p string) (string, error) { return r.path(p, true) }

// Lpath is Path for the entry p itself: the directories leading to it are
// resolved, a symlink at p is not followed (a link to replace, a device
// node to check with lstat).
func (r *Root) Lpath(p string) (string, error) { return r.path(p, false) }

func (r *Root) path(p string, follow bool) (string, error) {
	rel, err := r.resolve(p, follow)
	if err != nil {
		return "", r.pathError(p, err)
	}
	return filepath.Join(r.dir, rel), nil
}

// Stat returns the file info of host path p, symlinks followed inside the
// tree. Errors name p and wrap the cause (fs.ErrNotExist).
func (r *Root) Stat(p string) (fs.FileInfo, error) { return r.stat(p, true) }

// Lstat is Stat without following a symlink at p itself.
func (r *Root) Lstat(p string) (fs.FileInfo, error) { return r.stat(p, false) }

func (r *Root) stat(p string, follow bool) (fs.FileInfo, error) {
	rel, err := r.resolve(p, follow)
	if err != nil {
		return nil, r.pathError(p, err)
	}
	fi, err := r.root.Lstat(rel)
	if err != nil {
		return nil, r.pathError(p, err)
	}
	return fi, nil
}

// Readlink returns the target of symlink p, unresolved; the directories
// leading to it are resolved inside the tree. p not being a symlink is an
// error wrapping syscall.EINVAL, as readlink(2) says.
func (r *Root) Readlink(p string) (string, error) {
	rel, err := r.resolve(p, false)
	if err != nil {
		return "", r.pathError(p, err)
	}
	t, err := r.root.Readlink(rel)
	if err != nil {
		return "", r.pathError(p, err)
	}
	return t, nil
}

// ReadDir returns the entries of directory p, sorted by name.
func (r *Root) ReadDir(p string) ([]fs.DirEntry, error) {
	rel, err := r.resolve(p, true)
	if err != nil {
		return nil, r.pathError(p, err)
	}
	f, err := r.root.Open(rel)
	if err != nil {
		return nil, r.pathError(p, err)
	}
	defer f.Close()
	entries, err := f.ReadDir(-1)
	if err != nil {
		return nil, r.pathError(p, err)
	}
	sortEntries(entries)
	return entries, nil
}

// ReadFile returns the contents of host file p, at most limit bytes. It is
// opened without blocking and must be a regular file: a FIFO, socket or
// device in its place, or a file longer than limit, is an error naming p
// (ErrNotRegular, ErrTooLarge). Procfs and sysfs files, which say they are
// empty, are read up to the limit.
func (r *Root) ReadFile(p string, limit int64) ([]byte, error) {
	rel, err := r.resolve(p, true)
	if err != nil {
		return nil, r.pathError(p, err)
	}
	f, err := r.root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, r.pathError(p, err)
	}
	defer f.Close()
	b, err := readBounded(f, limit)
	if err != nil {
		return nil, r.pathError(p, err)
	}
	return b, nil
}

// ReadRegular reads the file at path on this machine (not a host path: a
// file inside a driver tree, say) as ReadFile does: non-blocking, regular
// files only, at most limit bytes. Errors name path.
func ReadRegular(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, err // *fs.PathError names path
	}
	defer f.Close()
	b, err := readBounded(f, limit)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// ErrNotRegular is wrapped when a host file is a FIFO, socket or device.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is wrapped when a host file is longer than its limit.
var ErrTooLarge = errors.New("file too large")

func readBounded(f *os.File, limit int64) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w (%s)", ErrNotRegular, kind(fi.Mode()))
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, fi.Size(), limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	return b, nil
}

func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m.IsDir():
		return "a directory"
	}
	return m.Type().String()
}

// pathError names host path p (as it appears on this machine) and keeps
// the bare cause wrapped, so errors.Is(err, fs.ErrNotExist) works:
// "/rootfs/etc/os-release: no such file or directory".
func (r *Root) pathError(p string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s: %w", r.Join(p), err)
}

// resolve returns p relative to the tree ("." for its top), every symlink
// along it followed inside the tree; with follow unset a symlink as the
// last component is kept. Components from the first missing one on are
// taken lexically. The errors are bare (see pathError).
func (r *Root) resolve(p string, follow bool) (string, error) {
	var done []string    // resolved components, none a symlink
	todo := splitPath(p) // components still to walk
	links := 0
	missingAt := -1 // len(done) when a component did not exist; -1 while all did
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
			if len(done) <= missingAt {
				// Back among components that exist: the rest must be
				// resolved again, or a link there would lead out.
				missingAt = -1
			}
			continue
		}
		if missingAt >= 0 || (!follow && len(todo) == 0) {
			done = append(done, c)
			continue
		}
		cur := filepath.Join(append(done, c)...)
		fi, err := r.root.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			missingAt = len(done)
			done = append(done, c)
			continue
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			done = append(done, c)
			continue
		}
		if links++; links > maxSymlinks {
			return "", syscall.ELOOP
		}
		target, err := r.root.Readlink(cur)
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
	return strings.FieldsFunc(p, func(r rune) bool { return r == '/' })
}

func sortEntries(e []fs.DirEntry) {
	slices.SortFunc(e, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
}

// Within reports whether clean path p is dir or lies below it.
func Within(p, dir string) bool {
	if dir == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == dir || strings.HasPrefix(p, dir+"/")
}
