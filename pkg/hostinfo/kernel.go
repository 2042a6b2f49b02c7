package hostinfo

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// kernelReleasePath is where procfs reports the running kernel's release,
// the string uname -r prints.
const kernelReleasePath = "/proc/sys/kernel/osrelease"

// KernelRelease returns the running kernel's release, such as
// "6.1.77-flatcar", from <root>/proc/sys/kernel/osrelease with surrounding
// whitespace removed.
//
// If that file does not exist and root is "/" (after filepath.Clean), it
// returns the release from uname(2) instead, or uname's error. If the file
// does not exist under any other root, it returns an error wrapping
// fs.ErrNotExist and naming the path. It returns an error naming the path
// if the file cannot be read or holds only whitespace.
func KernelRelease(root string) (string, error) {
	h, err := openHost(root)
	if err != nil {
		return "", fmt.Errorf("read kernel release: %w", err)
	}
	defer h.close()

	release, err := h.readTrimmed(kernelReleasePath)
	switch {
	case errors.Is(err, fs.ErrNotExist) && filepath.Clean(root) == "/":
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
