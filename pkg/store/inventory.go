// This file reads the store: what is installed, what `current` and
// `previous` point at, and what a crash left behind. It never writes.

package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

// Names inside the store directory.
const (
	CurrentLink  = "current"              // symlink to the active tree, relative
	PreviousLink = "previous"             // symlink to the tree active before it
	StagingDir   = ".staging"             // trees being unpacked; never used
	MetaFile     = ".nvidia-driverd.json" // per-tree record, inside the tree
)

// Meta is the record written beside a tree when it was installed.
type Meta struct {
	Digest        string    `json:"digest"`          // image manifest digest
	Reference     string    `json:"reference"`       // what was pulled
	Source        string    `json:"source"`          // registry or oci-layout path
	InstalledAt   time.Time `json:"installed_at"`    //
	KernelRelease string    `json:"kernel_release"`  // kernel the modules were checked against
	Vermagic      string    `json:"vermagic"`        // vermagic they showed
	Files         int       `json:"files,omitempty"` // regular files unpacked
	Bytes         int64     `json:"bytes,omitempty"` // their bytes
}

// Module is one kernel module file of a tree.
type Module struct {
	Name   string        // kernel name of the module (underscores)
	Path   string        // host path
	Kernel string        // the lib/modules/<release> directory it sits in
	Info   *modinfo.Info // nil when Err is set
	Err    error         // why the file could not be read
}

// Tree is one installed driver tree.
type Tree struct {
	Path      string   // host path, <store>/<driver>/<os-version>
	Driver    string   // driver version, from the directory name
	OSVersion string   // OS version (or kernel release on generic hosts)
	Meta      *Meta    // nil for trees installed by other means
	MetaErr   error    // why an existing MetaFile could not be read
	Modules   []Module // sorted by kernel, then name
}

// Inventory is the state of the store as found on disk.
type Inventory struct {
	Dir      string // host path of the store
	Trees    []Tree // sorted by path
	Current  string // host path `current` resolves to, "" without a link
	Previous string // host path `previous` resolves to, "" without a link
	Staging  []string
	// Problems are oddities worth reporting that do not stop a scan: a
	// dangling link, an unreadable entry.
	Problems []string
}

// Tree returns the installed tree at host path p, or nil.
func (inv Inventory) Tree(p string) *Tree {
	for i := range inv.Trees {
		if inv.Trees[i].Path == p {
			return &inv.Trees[i]
		}
	}
	return nil
}

// ModuleVersion returns the version= field of the tree's module name
// (its kernel name; dashes are taken as underscores) for kernel, that is
// under lib/modules/<kernel>/. It returns "" when the tree has no such
// module, when the module could not be read, or when it has no version.
func (t Tree) ModuleVersion(name, kernel string) string {
	name = modinfo.KernelName(name)
	for _, m := range t.Modules {
		if m.Name == name && m.Kernel == kernel && m.Info != nil {
			return m.Info.Version
		}
	}
	return ""
}

// ReadTree reads the tree at host path path in host tree host as Scan
// reads an installed tree, wherever it lies (a tree about to be
// published, a staged one); driver and osVersion are recorded as given.
// Unreadable modules and metadata are recorded in the Tree, and a missing
// directory reads as a tree without modules.
func ReadTree(host *hostfs.Root, path, driver, osVersion string) Tree {
	real, err := host.Path(path)
	if err != nil {
		return Tree{Path: path, Driver: driver, OSVersion: osVersion, MetaErr: err}
	}
	return readTree(path, real, driver, osVersion)
}

// Scan reads the store at host path dir in host tree host, resolved
// inside it as Open resolves it. A
// missing store is an empty inventory, not an error; an unreadable store
// directory is an error. Unreadable modules and metadata are recorded in
// the trees rather than failing the scan, so one bad tree cannot hide the
// others.
func Scan(host *hostfs.Root, dir string) (Inventory, error) {
	inv := Inventory{Dir: dir}
	fsDir, err := host.Path(dir)
	if err != nil {
		return inv, fmt.Errorf("scan store: %w", err)
	}
	drivers, err := os.ReadDir(fsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return inv, nil
	}
	if err != nil {
		return inv, fmt.Errorf("scan store: %w", err)
	}
	for _, d := range drivers {
		name := d.Name()
		switch {
		case name == StagingDir:
			inv.Staging = stagingEntries(fsDir, dir, &inv)
		case strings.HasPrefix(name, "."), !d.IsDir():
			// links and private files
		default:
			trees, err := os.ReadDir(filepath.Join(fsDir, name))
			if err != nil {
				inv.Problems = append(inv.Problems, fmt.Sprintf("read %s: %v", filepath.Join(dir, name), err))
				continue
			}
			for _, t := range trees {
				if t.IsDir() && !strings.HasPrefix(t.Name(), ".") {
					inv.Trees = append(inv.Trees, readTree(filepath.Join(dir, name, t.Name()), filepath.Join(fsDir, name, t.Name()), name, t.Name()))
				}
			}
		}
	}
	sort.Slice(inv.Trees, func(i, j int) bool { return inv.Trees[i].Path < inv.Trees[j].Path })
	inv.Current = resolveLink(fsDir, dir, CurrentLink, &inv)
	inv.Previous = resolveLink(fsDir, dir, PreviousLink, &inv)
	return inv, nil
}

func stagingEntries(fsDir, dir string, inv *Inventory) []string {
	entries, err := os.ReadDir(filepath.Join(fsDir, StagingDir))
	if err != nil {
		inv.Problems = append(inv.Problems, fmt.Sprintf("read %s: %v", filepath.Join(dir, StagingDir), err))
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, filepath.Join(dir, StagingDir, e.Name()))
	}
	return out
}

// resolveLink returns the host path a store link names, provided it names
// an installed tree. A relative target is taken relative to the store; an
// absolute one (as the original CoreOS installer wrote) as a host path.
func resolveLink(fsDir, dir, link string, inv *Inventory) string {
	target, err := os.Readlink(filepath.Join(fsDir, link))
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	if err != nil {
		inv.Problems = append(inv.Problems, fmt.Sprintf("read link %s: %v", filepath.Join(dir, link), err))
		return ""
	}
	p := target
	if !filepath.IsAbs(p) {
		p = filepath.Join(dir, p)
	}
	p = filepath.Clean(p)
	if inv.Tree(p) == nil {
		inv.Problems = append(inv.Problems, fmt.Sprintf("%s points to %s, which is not an installed tree", filepath.Join(dir, link), target))
		return ""
	}
	return p
}

// maxMetaBytes bounds a tree's MetaFile read.
const maxMetaBytes = 1 << 20

// readTree reads the tree at host path path, found at real path fsPath.
func readTree(path, fsPath, driver, osVersion string) Tree {
	t := Tree{Path: path, Driver: driver, OSVersion: osVersion}
	if data, err := hostfs.ReadRegular(filepath.Join(fsPath, MetaFile), maxMetaBytes); err == nil {
		var m Meta
		if err := json.Unmarshal(data, &m); err != nil {
			t.MetaErr = fmt.Errorf("read %s: %w", filepath.Join(path, MetaFile), err)
		} else {
			t.Meta = &m
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		t.MetaErr = fmt.Errorf("read %s: %w", filepath.Join(path, MetaFile), err)
	}

	kernels, err := os.ReadDir(filepath.Join(fsPath, "lib", "modules"))
	if err != nil {
		return t
	}
	for _, k := range kernels {
		if !k.IsDir() {
			continue
		}
		kdir := filepath.Join(path, "lib", "modules", k.Name())
		fsKdir := filepath.Join(fsPath, "lib", "modules", k.Name())
		_ = filepath.WalkDir(fsKdir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil // an unreadable sub-directory hides only its own modules
			}
			base, ok := modinfo.ModuleName(d.Name())
			if !ok {
				return nil
			}
			rel, _ := filepath.Rel(fsKdir, p)
			m := Module{Name: base, Path: filepath.Join(kdir, rel), Kernel: k.Name()}
			m.Info, m.Err = modinfo.ReadPlain(p)
			if m.Err != nil {
				m.Info = nil
			}
			t.Modules = append(t.Modules, m)
			return nil
		})
	}
	sort.Slice(t.Modules, func(i, j int) bool {
		a, b := t.Modules[i], t.Modules[j]
		if a.Kernel != b.Kernel {
			return a.Kernel < b.Kernel
		}
		return a.Name < b.Name
	})
	return t
}
