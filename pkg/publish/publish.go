// Package publish builds a driver image from a driver tree: the producer
// side, replacing `docker build` + `docker push`. The image's filesystem
// root is the tree; see docs/image-format.md.
//
// Layers are laid out for the fastest install: kernel modules, firmware and
// binaries each get a layer, and the libraries (by far the largest part)
// are split into LibraryLayers layers of balanced size, so the installer
// can stream and unpack them on every core at once. No path other than a
// directory is in two layers and there are no whiteouts; the image says so
// with the LayoutLabel label, which lets the installer apply layers
// concurrently.
package publish

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// Labels and annotations of a driver image.
const (
	LabelDriver   = "org.nvidia-driverd.driver-version"
	LabelOSID     = "org.nvidia-driverd.os-id"
	LabelOSVer    = "org.nvidia-driverd.os-version"
	LabelKernel   = "org.nvidia-driverd.kernel-release"
	LabelVermagic = "org.nvidia-driverd.vermagic"
	LabelFormat   = "org.nvidia-driverd.format"
	LayoutLabel   = "org.nvidia-driverd.layers"
	// LayoutDisjoint is LayoutLabel's value for images whose layers never
	// write the same non-directory path and hold no whiteouts.
	LayoutDisjoint = "disjoint"
	// FormatVersion is the artifact format this package writes.
	FormatVersion = "1"
)

// Compression of the layers.
type Compression string

// The compressions publish can write.
const (
	Zstd Compression = "zstd"
	Gzip Compression = "gzip"
)

// Options shape the image.
type Options struct {
	// Labels go into the image config and the manifest annotations.
	Labels map[string]string
	// Compression defaults to Zstd, the fastest to install.
	Compression Compression
	// LibraryLayers is how many layers lib64/ is split into; 0 means 4.
	LibraryLayers int
	// Platform of the image; OS and Architecture required.
	Platform v1.Platform
	// MTime stamps every entry and the image, so that the same tree gives
	// the same image; the zero value means the Unix epoch.
	MTime time.Time
	// TempDir holds the compressed layers until Close; "" means os.TempDir.
	TempDir string
}

// Built is a built image whose layers live in temporary files.
type Built struct {
	Image  v1.Image
	Layers []LayerInfo
	tmp    string
}

// LayerInfo describes one layer for the operator.
type LayerInfo struct {
	Name  string // modules, firmware, binaries, libraries 1/4, ...
	Files int
	Bytes int64 // uncompressed file bytes
	Size  int64 // compressed size
}

// Close removes the layer files.
func (b *Built) Close() error { return os.RemoveAll(b.tmp) }

type kind int

const (
	kindFile kind = iota
	kindDir
	kindSymlink
	kindHardlink
)

type entry struct {
	name   string // slash-separated, relative to the tree
	kind   kind
	mode   fs.FileMode
	size   int64
	target string // symlink target or hardlink path
	mtime  time.Time
	inode  [2]uint64
}

// Build makes an image from the driver tree at dir. It returns an error
// naming the path for anything an installer would refuse: a device, fifo
// or socket, a symlink that is absolute or leaves the tree.
func Build(dir string, opts Options) (*Built, error) {
	if opts.Compression == "" {
		opts.Compression = Zstd
	}
	if opts.Compression != Zstd && opts.Compression != Gzip {
		return nil, fmt.Errorf("compression %q: want zstd or gzip", opts.Compression)
	}
	if opts.LibraryLayers == 0 {
		opts.LibraryLayers = 4
	}
	if opts.LibraryLayers < 1 {
		return nil, fmt.Errorf("library layers %d: want at least 1", opts.LibraryLayers)
	}
	if opts.MTime.IsZero() {
		opts.MTime = time.Unix(0, 0)
	}
	if opts.Platform.OS == "" || opts.Platform.Architecture == "" {
		return nil, errors.New("platform: OS and architecture are required")
	}
	entries, err := scan(dir, opts.MTime)
	if err != nil {
		return nil, err
	}
	groups := split(entries, opts.LibraryLayers)

	tmp, err := os.MkdirTemp(opts.TempDir, "nvidia-driverd-publish-")
	if err != nil {
		return nil, err
	}
	b := &Built{tmp: tmp}
	img, err := b.assemble(dir, groups, opts)
	if err != nil {
		b.Close()
		return nil, err
	}
	b.Image = img
	return b, nil
}

func (b *Built) assemble(dir string, groups []group, opts Options) (v1.Image, error) {
	var adds []mutate.Addendum
	for _, g := range groups {
		l, err := writeLayer(b.tmp, dir, g.withParents(), opts.Compression)
		if err != nil {
			return nil, fmt.Errorf("build layer %s: %w", g.name, err)
		}
		b.Layers = append(b.Layers, LayerInfo{Name: g.name, Files: g.files, Bytes: g.bytes, Size: l.size})
		adds = append(adds, mutate.Addendum{
			Layer:     l,
			MediaType: l.mediaType,
			History:   v1.History{Created: v1.Time{Time: opts.MTime}, CreatedBy: "nvidia-driverd publish", Comment: g.name},
		})
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	img, err := mutate.Append(base, adds...)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture, cfg.Variant = opts.Platform.OS, opts.Platform.Architecture, opts.Platform.Variant
	cfg.Created = v1.Time{Time: opts.MTime}
	labels := map[string]string{LabelFormat: FormatVersion, LayoutLabel: LayoutDisjoint}
	for k, v := range opts.Labels {
		labels[k] = v
	}
	cfg.Config.Labels = labels
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return nil, err
	}
	return mutate.Annotations(img, labels).(v1.Image), nil
}

// scan lists the tree in lexical order, refusing what cannot be installed.
func scan(dir string, mtime time.Time) ([]entry, error) {
	var out []entry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		name := filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		// Permission bits only: setuid and setgid have no place in a driver
		// tree, and the installer strips them anyway.
		e := entry{name: name, mode: info.Mode().Perm(), mtime: mtime}
		switch t := info.Mode().Type(); {
		case t == 0:
			e.kind, e.size = kindFile, info.Size()
			if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
				e.inode = [2]uint64{uint64(st.Dev), st.Ino}
			}
		case t == fs.ModeDir:
			e.kind = kindDir
		case t == fs.ModeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			// The installer's own rule, so that nothing is published that
			// an install would refuse.
			if err := unpack.CheckSymlink(name, target); err != nil {
				return fmt.Errorf("%s -> %s: %w", name, target, err)
			}
			e.kind, e.target = kindSymlink, target
		default:
			return fmt.Errorf("publish %s: %s is a %s; a driver tree holds only files, directories and symlinks", dir, name, t)
		}
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read driver tree: %w", err)
	}
	return out, nil
}

// group is the content of one layer.
type group struct {
	name    string
	entries []entry
	files   int
	bytes   int64
	dirs    map[string]entry // every directory of the tree, for parents
}

func (g *group) add(e entry) {
	g.entries = append(g.entries, e)
	if e.kind == kindFile {
		g.files++
		g.bytes += e.size
	}
}

// withParents returns the group's entries with every ancestor directory
// added, sorted so that directories precede their contents. Hard links to
// a file earlier in the same layer become link entries.
func (g *group) withParents() []entry {
	seen := map[string]bool{}
	var out []entry
	for _, e := range g.entries {
		for dir := path.Dir(e.name); dir != "."; dir = path.Dir(dir) {
			if !seen[dir] {
				seen[dir] = true
				out = append(out, g.dirs[dir])
			}
		}
		if e.kind == kindDir {
			if seen[e.name] {
				continue
			}
			seen[e.name] = true
		}
		out = append(out, e)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].name < out[j].name })
	first := map[[2]uint64]string{}
	for i, e := range out {
		if e.kind != kindFile || e.inode == [2]uint64{} {
			continue
		}
		if p, ok := first[e.inode]; ok {
			out[i].kind, out[i].target, out[i].size = kindHardlink, p, 0
		} else {
			first[e.inode] = e.name
		}
	}
	return out
}

// split assigns entries to layers: modules (lib/modules, etc), firmware,
// binaries (everything else), and lib64 in n layers balanced by size.
func split(entries []entry, n int) []group {
	dirs := map[string]entry{}
	for _, e := range entries {
		if e.kind == kindDir {
			dirs[e.name] = e
		}
	}
	modules := &group{name: "modules", dirs: dirs}
	firmware := &group{name: "firmware", dirs: dirs}
	binaries := &group{name: "binaries", dirs: dirs}
	libs := make([]*group, n)
	for i := range libs {
		libs[i] = &group{name: fmt.Sprintf("libraries %d/%d", i+1, n), dirs: dirs}
	}
	var libFiles, libOther []entry
	for _, e := range entries {
		switch top, _, _ := strings.Cut(e.name, "/"); {
		case strings.HasPrefix(e.name, "lib/modules/") || e.name == "lib/modules" || top == "etc":
			modules.add(e)
		case top == "firmware":
			firmware.add(e)
		case top == "lib64" && e.name != "lib64":
			if e.kind == kindFile {
				libFiles = append(libFiles, e)
			} else {
				libOther = append(libOther, e)
			}
		default:
			binaries.add(e)
		}
	}
	// Largest first into the lightest layer: within 4/3 of the best split.
	sort.SliceStable(libFiles, func(i, j int) bool { return libFiles[i].size > libFiles[j].size })
	home := map[string]*group{}
	for _, e := range libFiles {
		lightest := libs[0]
		for _, g := range libs[1:] {
			if g.bytes < lightest.bytes {
				lightest = g
			}
		}
		lightest.add(e)
		home[e.name] = lightest
	}
	// Symlinks (SONAME links) travel with their target.
	for _, e := range libOther {
		g := libs[0]
		if e.kind == kindSymlink {
			if h, ok := home[path.Join(path.Dir(e.name), e.target)]; ok {
				g = h
			}
		}
		g.add(e)
	}
	var out []group
	for _, g := range append([]*group{modules, firmware, binaries}, libs...) {
		if len(g.entries) > 0 {
			sort.SliceStable(g.entries, func(i, j int) bool { return g.entries[i].name < g.entries[j].name })
			out = append(out, *g)
		}
	}
	return out
}
