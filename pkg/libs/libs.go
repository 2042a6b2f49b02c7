package libs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
)

// Mode is how a tree's libraries reach the dynamic linker.
type Mode string

const (
	// ModeOverlay mounts read-only overlays of the tree's lib64/ on
	// /usr/lib64 and of its bin/ on /opt/bin.
	ModeOverlay Mode = "overlay"
	// ModeLdconfig writes the DropIn naming the tree's lib64/.
	ModeLdconfig Mode = "ldconfig"
)

// DropIn is the host path of the ld.so.conf.d drop-in this package writes.
const DropIn = "/etc/ld.so.conf.d/nvidia-driverd.conf"

// DefaultMountinfo is the mount table read when Config.Mountinfo is "".
const DefaultMountinfo = "/proc/self/mountinfo"

// DefaultWant returns the SONAMEs that must resolve into the tree when
// Config.Want is empty.
func DefaultWant() []string { return []string{"libcuda.so.1", "libnvidia-ml.so.1"} }

// Config says which tree to activate on which host, and how.
type Config struct {
	FS        *hostfs.Root // the host tree; every host path is resolved inside it
	Store     string       // host path of the store, e.g. /opt/nvidia (to recognise our overlays)
	Tree      string       // host path of the tree to activate, e.g. /opt/nvidia/550.54.14/3815.2.0
	Mode      Mode         // ModeOverlay or ModeLdconfig; Deactivate ignores it
	Mountinfo string       // path of the mount table to read; "" means DefaultMountinfo
	Ldconfig  []string     // ldconfig command line prefix; nil means ldconfig, with -r <root> when the host is not "/"
	Want      []string     // SONAMEs that must resolve after ldconfig; nil means DefaultWant()
}

// Result says what one call changed; a call that found everything in
// place returns the zero Result. Paths are as seen in this mount
// namespace.
type Result struct {
	Mounted  []string // mount points where an overlay was mounted
	Detached []string // mount points where an overlay of ours was detached, once per detach
	DropIn   string   // the drop-in written; "" when left as it was or not wanted
	Removed  string   // the drop-in removed; "" when there was none
}

// Activate makes the tree's libraries visible to the dynamic linker and its
// binaries visible on /opt/bin (overlay mode), runs ldconfig, checks that
// the wanted SONAMEs resolve into the tree (see the package documentation).
//
// It returns what it changed and a nil error when all of that holds
// afterwards, including when nothing needed changing. It returns an error
// when the Config is invalid (Root, Store or Tree not absolute, Tree not
// inside Store or missing, an unknown Mode, a path that cannot go into
// mount options), when the mount table cannot be read, when a mount,
// detach, directory creation or drop-in write fails, when an overlay of
// ours is covered by another mount, when ldconfig fails, when a wanted
// SONAME is missing from the linker cache or resolves elsewhere first. On
// error the
// Result still lists what was changed before it; a rerun converges.
func Activate(m Mounter, c Config) (Result, error) {
	var r Result
	s, err := c.setup(true)
	if err != nil {
		return r, fmt.Errorf("activate %s: %w", c.Tree, err)
	}
	if err := s.placeLibraries(m, &r); err != nil {
		return r, fmt.Errorf("activate %s: %w", s.treeHost, err)
	}
	if err := s.updateCache(true); err != nil {
		return r, fmt.Errorf("activate %s: %w", s.treeHost, err)
	}
	return r, nil
}

// Deactivate detaches every overlay of ours on /usr/lib64 and /opt/bin,
// removes the drop-in and reruns ldconfig, so that the linker cache no
// longer names the tree. It ignores Config.Tree, Mode and Want.
//
// It returns what it changed and a nil error when nothing of ours is left,
// including when there was nothing to undo. It returns an error when the
// Config is invalid, when the mount table cannot be read, when an overlay
// of ours is covered by another mount, when a detach or the removal fails,
// or when ldconfig fails; the Result still lists what was changed before.
func Deactivate(m Mounter, c Config) (Result, error) {
	var r Result
	s, err := c.setup(false)
	if err != nil {
		return r, fmt.Errorf("deactivate: %w", err)
	}
	mounts, err := readMountinfo(s.mountinfo)
	if err != nil {
		return r, fmt.Errorf("deactivate: %w", err)
	}
	for _, o := range overlays() {
		if err := s.reconcileOverlay(m, mounts, o.target, "", &r); err != nil {
			return r, fmt.Errorf("deactivate: %w", err)
		}
	}
	if err := s.removeDropIn(&r); err != nil {
		return r, fmt.Errorf("deactivate: %w", err)
	}
	if err := s.updateCache(false); err != nil {
		return r, fmt.Errorf("deactivate: %w", err)
	}
	return r, nil
}

// setup is a Config checked, with defaults filled in and paths resolved.
type setup struct {
	fs        *hostfs.Root // the host tree
	root      string       // its directory in this namespace
	storeHost string       // host path of the store
	ours      []string     // directories whose contents are ours: the store as a host path and as real paths
	tree      string       // real path of the tree in this namespace; "" in Deactivate
	treeHost  string       // host path of the tree's real path; "" in Deactivate
	mode      Mode
	mountinfo string
	ldconfig  []string
	want      []string
}

// setup checks c and resolves its paths inside the host tree; withTree
// also requires and resolves Tree and Mode. It returns an error when FS is
// nil, Store or Tree is not absolute, Store is "/", Tree does not exist or
// does not resolve, Tree does not lie inside Store, or Mode is unknown.
func (c Config) setup(withTree bool) (setup, error) {
	var s setup
	if c.FS == nil {
		return s, errors.New("check config: no host tree")
	}
	if !filepath.IsAbs(c.Store) {
		return s, fmt.Errorf("check config: store %q must be absolute", c.Store)
	}
	s.fs = c.FS
	root := c.FS.Dir()
	s.root = root
	s.storeHost = filepath.Clean(c.Store)
	if s.storeHost == "/" {
		return s, errors.New("check config: store is /")
	}
	storeJoined := c.FS.Join(s.storeHost)
	storeReal, err := c.FS.Path(s.storeHost)
	if err != nil {
		return s, err
	}
	s.ours = uniq([]string{s.storeHost, storeJoined, storeReal})
	s.mountinfo = c.Mountinfo
	if s.mountinfo == "" {
		s.mountinfo = DefaultMountinfo
	}
	s.ldconfig = c.Ldconfig
	if len(s.ldconfig) == 0 {
		s.ldconfig = []string{"ldconfig"}
		if root != "/" {
			s.ldconfig = append(s.ldconfig, "-r", root)
		}
	}
	s.want = c.Want
	if len(s.want) == 0 {
		s.want = DefaultWant()
	}
	if !withTree {
		return s, nil
	}
	if c.Mode != ModeOverlay && c.Mode != ModeLdconfig {
		return s, fmt.Errorf("check config: unknown mode %q", c.Mode)
	}
	s.mode = c.Mode
	s.tree, s.treeHost, err = resolveTree(c.FS, storeReal, c.Tree)
	return s, err
}

// resolveTree returns the real path of host path tree under root, and
// that path as a host path. It returns an error when tree is not
// absolute, does not resolve, resolves outside root, is not a directory,
// or does not lie strictly inside storeReal (then its overlays would not be recognised as
// ours later).
func resolveTree(fs *hostfs.Root, storeReal, tree string) (real, host string, err error) {
	if !filepath.IsAbs(tree) {
		return "", "", fmt.Errorf("check config: tree %q must be absolute", tree)
	}
	if real, err = fs.Path(tree); err != nil {
		return "", "", fmt.Errorf("resolve tree: %w", err)
	}
	if real == storeReal || !hostfs.Within(real, storeReal) {
		return "", "", fmt.Errorf("resolve tree %s: %s is not inside the store %s", tree, real, storeReal)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", "", fmt.Errorf("resolve tree %s: %w", tree, err)
	}
	if !fi.IsDir() {
		return "", "", fmt.Errorf("resolve tree %s: %s is not a directory", tree, real)
	}
	return real, fs.Host(real), nil
}

// isOurs reports whether path p lies inside the store, in any of the forms
// the store's paths take.
func (s setup) isOurs(p string) bool {
	for _, dir := range s.ours {
		if hostfs.Within(p, dir) {
			return true
		}
	}
	return false
}

// uniq returns ss without repeats, in order.
func uniq(ss []string) []string {
	var out []string
	for _, s := range ss {
		dup := false
		for _, o := range out {
			dup = dup || o == s
		}
		if !dup {
			out = append(out, s)
		}
	}
	return out
}

// checkPath returns an error when path p holds a character that overlayfs
// mount options or ld.so.conf would interpret: ':', ',', '\', white space
// or a control character.
func checkPath(p string) error {
	for _, r := range p {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`:,\`, r) {
			return fmt.Errorf("path %q holds %q, which mount options and ld.so.conf cannot carry", p, r)
		}
	}
	return nil
}
