package libs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
)

// Mounter is mount(2)/umount2(2), faked in tests that only check calls.
type Mounter interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
	Unmount(target string, flags int) error
}

// Syscalls is the real Mounter.
type Syscalls struct{}

// Mount calls mount(2) and returns its error.
func (Syscalls) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}

// Unmount calls umount2(2) and returns its error.
func (Syscalls) Unmount(target string, flags int) error {
	return unix.Unmount(target, flags)
}

// Flags of the calls this package makes. A mount point is passed resolved,
// so the detach need not follow a symlink.
const (
	overlayFlags = uintptr(unix.MS_RDONLY)
	detachFlags  = unix.MNT_DETACH | unix.UMOUNT_NOFOLLOW
)

// overlay is one overlay of overlay mode: the tree's directory layer shown
// on host directory target.
type overlay struct {
	layer  string
	target string
}

// overlays returns the overlays of overlay mode.
func overlays() []overlay {
	return []overlay{
		{layer: "lib64", target: "/usr/lib64"},
		{layer: "bin", target: "/opt/bin"},
	}
}

// placeLibraries puts the tree's libraries where the mode wants them: in
// overlay mode it mounts the overlays and removes the drop-in, in ldconfig
// mode it detaches our overlays and writes the drop-in. It records what it
// changed in r and returns the first error of those steps.
func (s setup) placeLibraries(m Mounter, r *Result) error {
	mounts, err := readMountinfo(s.mountinfo)
	if err != nil {
		return err
	}
	for _, o := range overlays() {
		layer := ""
		if s.mode == ModeOverlay {
			layer = o.layer
		}
		if err := s.reconcileOverlay(m, mounts, o.target, layer, r); err != nil {
			return err
		}
	}
	if s.mode == ModeOverlay {
		return s.removeDropIn(r)
	}
	return s.writeDropIn(r)
}

// reconcileOverlay makes host directory target show the tree's directory
// layer over the host's own, through one read-only overlay of ours, or,
// when layer is "" or the tree has no such directory, show no overlay of
// ours. mounts is the mount table read before any change.
//
// It changes nothing when the topmost mount on target is already the one
// wanted and no other overlay of ours lies beneath it. Otherwise it
// detaches every overlay of ours on top of target, recording each in
// r.Detached, then mounts the wanted overlay, if any, recording it in
// r.Mounted; target is created (mode 0755) when an overlay is wanted and
// it is missing. It returns an error when the tree's directory or target
// resolves outside the tree or root, a path cannot go into mount options,
// target cannot be created, an overlay of ours lies beneath a mount not
// ours, or a detach or the mount fails.
func (s setup) reconcileOverlay(m Mounter, mounts []mount, target, layer string, r *Result) error {
	layerDir, err := s.layerDir(layer)
	if err != nil {
		return err
	}
	point, err := s.mountPoint(target, layerDir != "")
	if err != nil || point == "" {
		return err
	}
	var lower []string
	if layerDir != "" {
		lower = []string{layerDir, point}
		for _, p := range lower {
			if err := checkPath(p); err != nil {
				return fmt.Errorf("mount overlay on %s: %w", point, err)
			}
		}
	}
	stack := stackAt(mounts, point)
	n, err := s.oursOnTop(stack, point)
	if err != nil {
		return err
	}
	if n == 1 && lower != nil && slices.Equal(stack[0].lower, lower) {
		return nil
	}
	for range n {
		if err := m.Unmount(point, detachFlags); err != nil {
			return fmt.Errorf("detach overlay on %s: %w", point, err)
		}
		r.Detached = append(r.Detached, point)
	}
	if lower == nil {
		return nil
	}
	data := "lowerdir=" + strings.Join(lower, ":")
	if err := m.Mount("overlay", point, "overlay", overlayFlags, data); err != nil {
		return fmt.Errorf("mount overlay on %s with %s: %w", point, data, err)
	}
	r.Mounted = append(r.Mounted, point)
	return nil
}

// layerDir returns the real path of the tree's directory layer, "" when
// layer is "" or the tree has no such directory. It returns an error when
// the directory resolves outside the tree or cannot be examined.
func (s setup) layerDir(layer string) (string, error) {
	if layer == "" {
		return "", nil
	}
	p := filepath.Join(s.tree, layer)
	real, err := s.fs.Path(filepath.Join(s.treeHost, layer))
	if err != nil {
		return "", err
	}
	if _, err := os.Lstat(real); errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if !hostfs.Within(real, s.tree) {
		return "", fmt.Errorf("resolve %s: %s lies outside the tree", p, real)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", p, err)
	}
	if !fi.IsDir() {
		return "", nil
	}
	return real, nil
}

// mountPoint returns the real path of host directory target, creating it
// and its missing parents (mode 0755) when create is set. It returns ""
// when target is missing and create is not set, and an error when target
// resolves outside the root or cannot be created.
func (s setup) mountPoint(target string, create bool) (string, error) {
	real, err := s.fs.Path(target)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(real)
	switch {
	case err == nil && fi.IsDir():
		return real, nil
	case err == nil:
		return "", fmt.Errorf("resolve %s: %s is not a directory", s.fs.Join(target), real)
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("resolve %s: %w", s.fs.Join(target), err)
	case !create:
		return "", nil
	}
	if err := os.MkdirAll(real, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", real, err)
	}
	return real, nil
}

// oursOnTop returns how many overlays of ours lie on top of stack (the
// mounts on one mount point, topmost first), all of which a detach of the
// mount point reaches one by one. It returns an error when an overlay of
// ours lies beneath a mount that is not ours: detaching the mount point
// would detach that mount.
func (s setup) oursOnTop(stack []mount, point string) (int, error) {
	n := 0
	for n < len(stack) && s.isOurMount(stack[n]) {
		n++
	}
	for _, below := range stack[n:] {
		if s.isOurMount(below) {
			top := stack[n]
			return 0, fmt.Errorf("detach overlay on %s: a %s mount of %s that is not ours covers it; leaving both", point, top.fstype, top.source)
		}
	}
	return n, nil
}

// isOurMount reports whether mnt is an overlay whose first lower layer
// lies inside the store.
func (s setup) isOurMount(mnt mount) bool {
	return mnt.fstype == "overlay" && len(mnt.lower) > 0 && s.isOurs(mnt.lower[0])
}
