// Package firmware points the kernel's firmware loader at a driver tree.
//
// The loader looks first in the one directory written to
// /sys/module/firmware_class/parameters/path, shared by everything on the
// host, and resolves it in the initial mount namespace: so the path
// written is a host path, <tree>/firmware. Point writes it when it is
// empty or already points into the store; when someone else set it, it is
// left alone and Result.Skipped says why. Nothing clears it: a path into a
// removed tree only makes the loader fall back to /lib/firmware, and
// clearing it needs a write that the kernel would take as a path.
//
// The package logs nothing; what it did is in its return values.
package firmware

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
)

// Param is the kernel's firmware search path parameter, a host path.
const Param = "/sys/module/firmware_class/parameters/path"

// maxPath is the longest path firmware_class takes: its parameter is a
// 256-byte C string.
const maxPath = 255

// Result says what Point did.
type Result struct {
	Written string // the search path written, a host path; "" when left as it was
	Skipped string // why it was left alone; "" when written or already right
}

// Point points the kernel's firmware search path at tree's firmware
// directory (tree and store are host paths in host tree h) when the path
// is empty or points into store; it changes nothing when the path is
// already right. It returns an error when the parameter cannot be read or
// written, or the path is too long or holds white space or control
// characters.
func Point(h *hostfs.Root, store, tree string) (Result, error) {
	var r Result
	want := filepath.Join(tree, "firmware")
	if fi, err := h.Stat(want); err != nil || !fi.IsDir() {
		r.Skipped = fmt.Sprintf("the tree has no firmware directory %s", want)
		return r, nil
	}
	data, err := h.ReadFile(Param, 4096)
	if errors.Is(err, fs.ErrNotExist) {
		r.Skipped = fmt.Sprintf("there is no firmware_class path parameter %s", h.Join(Param))
		return r, nil
	}
	if err != nil {
		return r, fmt.Errorf("read firmware search path: %w", err)
	}
	cur := strings.TrimSpace(string(data))
	switch {
	case cur == want:
		return r, nil
	case cur != "" && !inStore(h, store, filepath.Clean(cur)):
		r.Skipped = fmt.Sprintf("the firmware search path is %s, set by someone else", cur)
		return r, nil
	}
	param, err := h.Path(Param)
	if err != nil {
		return r, fmt.Errorf("set firmware search path: %w", err)
	}
	if err := write(param, want); err != nil {
		return r, err
	}
	r.Written = want
	return r, nil
}

// inStore reports whether host path p lies in the store, as its host path
// or its resolved one.
func inStore(h *hostfs.Root, store, p string) bool {
	if hostfs.Within(p, store) {
		return true
	}
	real, err := h.Path(store)
	return err == nil && hostfs.Within(p, h.Host(real))
}

// write writes path p into the parameter file param, one write(2) that
// the kernel takes whole.
func write(param, p string) error {
	if len(p) > maxPath {
		return fmt.Errorf("set firmware search path %s: longer than %d bytes", p, maxPath)
	}
	for _, c := range p {
		if c <= ' ' || c == 0x7f {
			return fmt.Errorf("set firmware search path: %q holds %q, which cannot be written as a path", p, c)
		}
	}
	f, err := os.OpenFile(param, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return fmt.Errorf("set firmware search path: %w", err)
	}
	_, err = f.WriteString(p)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("set firmware search path in %s: %w", param, err)
	}
	return nil
}
