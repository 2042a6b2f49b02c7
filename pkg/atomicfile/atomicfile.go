// Package atomicfile replaces small files so that a crash leaves either the
// old content or the new, never a mix: the content goes to a temporary file
// in the same directory, which is fsynced, renamed over the target, and the
// directory fsynced.
package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Replace makes the file at p hold content with mode perm. The directory
// is created (mode 0755) when missing. It returns false and changes
// nothing when p already holds content, and an error when p cannot be
// read or any step fails; the temporary file is then removed.
func Replace(p string, content []byte, perm fs.FileMode) (changed bool, err error) {
	return ReplaceChecked(p, content, perm, nil)
}

// ReplaceChecked is Replace that first calls check with the path of the
// complete temporary file, which lies beside p; an error from check
// leaves p as it was.
func ReplaceChecked(p string, content []byte, perm fs.FileMode, check func(tmp string) error) (changed bool, err error) {
	old, err := os.ReadFile(p)
	if err == nil && bytes.Equal(old, content) {
		return false, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
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
	if err := fill(tmp, content, perm); err != nil {
		_ = os.Remove(tmp.Name()) // best effort: a hidden leftover only
		return false, fmt.Errorf("write %s: %w", p, err)
	}
	if check != nil {
		if err := check(tmp.Name()); err != nil {
			_ = os.Remove(tmp.Name())
			return false, fmt.Errorf("write %s: %w", p, err)
		}
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		_ = os.Remove(tmp.Name()) // best effort: a hidden leftover only
		return false, fmt.Errorf("write %s: %w", p, err)
	}
	return true, SyncDir(dir)
}

// fill sets f's mode to perm, writes content, fsyncs and closes f. It
// returns the first error, having closed f in every case.
func fill(f *os.File, content []byte, perm fs.FileMode) error {
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

// SyncDir fsyncs directory dir, making names created, renamed or removed
// in it durable. It returns an error when dir cannot be opened or synced.
func SyncDir(dir string) error {
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
