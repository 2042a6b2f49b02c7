package libs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// dropInContent returns the drop-in naming the tree's lib64 directory as
// a host path, which ldconfig -r <root> and the host's ldconfig read
// alike. It returns an error when that path cannot go into ld.so.conf.
func (s setup) dropInContent() ([]byte, error) {
	dir := filepath.Join(s.treeHost, "lib64")
	if err := checkPath(dir); err != nil {
		return nil, fmt.Errorf("write %s: %w", DropIn, err)
	}
	return []byte("# Written by nvidia-driverd for the active driver tree; rewritten on every switch.\n" + dir + "\n"), nil
}

// writeDropIn makes the drop-in name the tree, recording its path in
// r.DropIn when it changed it. It returns an error when the content
// cannot be built or the file cannot be written.
func (s setup) writeDropIn(r *Result) error {
	content, err := s.dropInContent()
	if err != nil {
		return err
	}
	p := filepath.Join(s.root, DropIn)
	changed, err := replaceFile(p, content, 0o644)
	if err != nil {
		return err
	}
	if changed {
		r.DropIn = p
	}
	return nil
}

// removeDropIn removes the drop-in, recording its path in r.Removed when
// there was one. It returns an error when it cannot be removed or the
// removal cannot be made durable.
func (s setup) removeDropIn(r *Result) error {
	p := filepath.Join(s.root, DropIn)
	err := os.Remove(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove drop-in: %w", err)
	}
	r.Removed = p
	return syncDir(filepath.Dir(p))
}

// replaceFile makes the file at p hold content with mode perm, atomically:
// it writes a temporary file in p's directory (created, mode 0755, when
// missing), fsyncs it, renames it over p and fsyncs the directory, so a
// crash leaves the old file or the new one. It returns false and changes
// nothing when p already holds content. It returns an error when p cannot
// be read, or any step fails; the temporary file is then removed.
func replaceFile(p string, content []byte, perm os.FileMode) (bool, error) {
	old, err := os.ReadFile(p)
	if err == nil && bytes.Equal(old, content) {
		return false, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", p, err)
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", p, err)
	}
	if err := fillFile(tmp, content, perm); err != nil {
		_ = os.Remove(tmp.Name()) // best effort: a hidden leftover only
		return false, fmt.Errorf("write %s: %w", p, err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		_ = os.Remove(tmp.Name()) // best effort: a hidden leftover only
		return false, fmt.Errorf("write %s: %w", p, err)
	}
	return true, syncDir(dir)
}

// fillFile sets f's mode to perm, writes content, fsyncs and closes f. It
// returns the first error, having closed f in every case.
func fillFile(f *os.File, content []byte, perm os.FileMode) error {
	err := f.Chmod(perm)
	if err == nil {
		_, err = f.Write(content)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncDir fsyncs directory dir, making names created, renamed or removed
// in it durable. It returns an error when dir cannot be opened or synced.
func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	err = unix.Fsync(fd)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
