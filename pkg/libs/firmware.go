package libs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxFirmwarePath is the longest path firmware_class takes: its parameter
// is a 256-byte C string.
const maxFirmwarePath = 255

// setFirmware points the kernel's firmware search path at the tree's
// firmware directory when the path is empty or points into the store,
// recording the path written in r.Firmware. It leaves the path alone and
// says why in r.FirmwareSkipped when the tree has no firmware directory,
// the parameter does not exist under the root, or the path was set by
// someone else; it changes nothing when the path is already right. It
// returns an error when the parameter cannot be read or written or the
// path is too long or cannot be written as a path.
func (s setup) setFirmware(r *Result) error {
	want := filepath.Join(s.treeHost, "firmware")
	if fi, err := os.Stat(filepath.Join(s.tree, "firmware")); err != nil || !fi.IsDir() {
		r.FirmwareSkipped = fmt.Sprintf("the tree has no firmware directory %s", want)
		return nil
	}
	param, err := s.fs.Path(FirmwareParam)
	if err != nil {
		return err
	}
	data, err := s.fs.ReadFile(FirmwareParam, 4096)
	if errors.Is(err, os.ErrNotExist) {
		r.FirmwareSkipped = fmt.Sprintf("there is no firmware_class path parameter %s", param)
		return nil
	}
	if err != nil {
		return fmt.Errorf("read firmware search path: %w", err)
	}
	cur := strings.TrimSpace(string(data))
	switch {
	case cur == want:
		return nil
	case cur != "" && !s.isOurs(filepath.Clean(cur)):
		r.FirmwareSkipped = fmt.Sprintf("the firmware search path is %s, set by someone else", cur)
		return nil
	}
	if err := writeFirmwarePath(param, want); err != nil {
		return err
	}
	r.Firmware = want
	return nil
}

// writeFirmwarePath writes path p into the firmware_class parameter file
// param, one write(2) that the kernel takes whole. It returns an error
// when p is too long or holds characters that cannot be written as a
// path, or when the write fails.
func writeFirmwarePath(param, p string) error {
	if len(p) > maxFirmwarePath {
		return fmt.Errorf("set firmware search path %s: longer than %d bytes", p, maxFirmwarePath)
	}
	if err := checkPath(p); err != nil {
		return fmt.Errorf("set firmware search path: %w", err)
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
