package hostinfo

import (
	"errors"
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"
)

// KernelRelease returns the running kernel's release, such as
// "6.1.77-flatcar", from <root>/proc/sys/kernel/osrelease with surrounding
// whitespace removed.
//
// If that file does not exist and root is "/" (after filepath.Clean), it
// returns the release from uname(2) instead, or uname's error. If the file
// does not exist under any other root, it returns an error wrapping
// fs.ErrNotExist and naming the path. It returns an error naming the path
// if the file cannot be read or holds only whitespace.
func (h *Host) KernelRelease() (string, error) {
	release, err := h.readTrimmed(kernelReleasePath)
	switch {
	case errors.Is(err, fs.ErrNotExist) && h.fs.IsHost():
		return unameRelease()
	case err != nil:
		return "", fmt.Errorf("read kernel release: %w", err)
	case release == "":
		return "", fmt.Errorf("read kernel release: %s: file is empty", h.hostPath(kernelReleasePath))
	}
	return release, nil
}

// unameRelease returns the release field of uname(2), or an error if the
// call fails or the field is empty.
func unameRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("read kernel release: uname: %w", err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	if release == "" {
		return "", errors.New("read kernel release: uname: empty release")
	}
	return release, nil
}
