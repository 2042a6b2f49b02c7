package kmod

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

// Request says which modules to load from which tree into which kernel.
type Request struct {
	// Host is the running host: /sys/module, modules.dep and module
	// signing are asked of it.
	Host Host
	// Release is the running kernel's release.
	Release string
	// Flags are the running kernel's vermagic flags; nil means unknown,
	// and only the release is compared.
	Flags []string
	// TreeModules is the path on this machine of the driver tree's
	// lib/modules/<release> directory.
	TreeModules string
	// Modprobe is the path of the tree's etc/modprobe.d, "" if none.
	Modprobe string
	// Modules are the driver's modules as configured, in either spelling,
	// e.g. nvidia nvidia-uvm nvidia-modeset nvidia-drm. Their order does
	// not matter: the load order comes from their depends= fields.
	Modules []string
	// Params are the configured parameters per module (either spelling),
	// "k=v k2=v2". They win per key over the tree's modprobe.d options.
	Params map[string]string
}

// Step is one module in load order.
type Step struct {
	// Name is the module's name, dashes as underscores.
	Name string
	// Path is the module file; "" for a built-in module.
	Path string
	// Params are the parameters it is loaded with, "k=v k2=v2".
	Params string
	// InTree is true for the host kernel's own modules (from modules.dep,
	// or built in), false for the driver tree's.
	InTree bool
	// Skipped says why the module is not loaded, e.g. "already loaded
	// 550.54.14" or "built in"; "" when it is loaded.
	Skipped string
}

// ErrOtherVersion is wrapped by the error of Plan and Load when a module
// of the tree is loaded in another version: the caller must Unload first.
var ErrOtherVersion = errors.New("another version is loaded")

// ErrUnsigned is wrapped by the error of Plan and Load when the kernel
// refuses, or would refuse, a module for want of a trusted signature.
var ErrUnsigned = errors.New("module not signed by a key the kernel trusts")

// node is a module in the dependency graph.
type node struct {
	step Step
	deps []string // normalised names of the modules it needs
}

// visit states of the depth-first search.
const (
	unvisited = iota
	visiting
	visited
)

// planner resolves a Request into nodes in load order.
type planner struct {
	req      Request
	tree     map[string]string             // driver tree module files by name
	host     *hostinfo.ModuleIndex         // read on first need
	modprobe map[string][]string           // modprobe.d options by module
	config   map[string][]string           // configured parameters by module
	enforced bool                          // unsigned modules are refused
	sigs     map[string]*modinfo.Signature // tree modules' signatures, by name, as verified
	why      string                        // why they are, for messages
	state    map[string]int
	byName   map[string]*node
	nodes    []*node // load order
}

// Plan resolves what Load would do, in order, without loading anything:
// the in-tree prerequisites first (deepest first), then the tree's modules,
// each after the modules its depends= names.
//
// It returns the steps, nil when req.Modules is empty, or an error when
// Root, Release or TreeModules is empty; the tree, modprobe.d, modules.dep
// or sysfs cannot be read; a configured module is not in the tree; a tree
// module cannot be read as a plain .ko, names itself differently from its
// file, or has a vermagic that does not match the running kernel; a tree
// module is unsigned while module signing is enforced (wrapping ErrUnsigned); a
// tree module is loaded in another version (wrapping ErrOtherVersion) or
// is coming or going; the depends= fields form a cycle; or a dependency is
// neither in the tree, loaded, built in nor in modules.dep. Errors name the
// module and its path.
func Plan(req Request) ([]Step, error) {
	p, err := plan(req)
	if err != nil || len(p.nodes) == 0 {
		return nil, err
	}
	steps := make([]Step, len(p.nodes))
	for i, n := range p.nodes {
		steps[i] = n.step
	}
	return steps, nil
}

// plan implements Plan, returning the planner for Load to carry out.
func plan(req Request) (*planner, error) {
	p, err := newPlanner(req)
	if err != nil {
		return nil, err
	}
	roots, err := rootNames(req.Modules)
	if err != nil {
		return nil, err
	}
	for _, name := range roots {
		if err := p.visit(name, nil, nil); err != nil {
			return nil, err
		}
	}
	// In-tree modules depend only on in-tree modules, so moving them all
	// first keeps the order valid, and a missing prerequisite stops Load
	// before any NVIDIA module is loaded.
	slices.SortStableFunc(p.nodes, func(a, b *node) int {
		return boolRank(b.step.InTree) - boolRank(a.step.InTree)
	})
	return p, nil
}

// boolRank is 1 for true and 0 for false.
func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// newPlanner checks req and reads the tree index, the parameters and the
// enforcement state. It returns an error for an incomplete req or when
// those cannot be read.
func newPlanner(req Request) (*planner, error) {
	switch {
	case req.Host == nil:
		return nil, errors.New("plan modules: Request.Host is nil")
	case req.Release == "":
		return nil, errors.New("plan modules: Request.Release is empty")
	case req.TreeModules == "":
		return nil, errors.New("plan modules: Request.TreeModules is empty")
	}
	p := &planner{req: req, state: map[string]int{}, byName: map[string]*node{}}
	var err error
	if p.tree, err = indexTree(req.TreeModules); err != nil {
		return nil, err
	}
	if p.modprobe, err = readModprobeDir(req.Modprobe); err != nil {
		return nil, err
	}
	if p.config, err = configParams(req.Params); err != nil {
		return nil, err
	}
	p.enforced, p.why = req.Host.ModuleSigning()
	return p, nil
}

// rootNames returns the configured module names normalised, sorted and
// without repeats, so that the plan does not depend on their order. It
// returns an error for an invalid name.
func rootNames(modules []string) ([]string, error) {
	var names []string
	for _, m := range modules {
		n, err := normName(m)
		if err != nil {
			return nil, fmt.Errorf("plan modules: %w", err)
		}
		names = append(names, n)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// indexTree returns the module files under dir by normalised module name.
// Only regular files count: a symlink in a tree from an image could point
// anywhere on the host. It returns an error naming dir when it cannot be
// walked, and one naming both files when two have the same module name.
func indexTree(dir string) (map[string]string, error) {
	mods := make(map[string]string)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		name, ok := modinfo.ModuleName(d.Name())
		if !ok {
			return nil
		}
		if prev, dup := mods[name]; dup {
			return fmt.Errorf("module %s is in two files: %s and %s", name, prev, path)
		}
		mods[name] = path
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index driver tree %s: %w", dir, err)
	}
	return mods, nil
}

// visit adds name and, before it, everything it depends on to p.nodes.
// parent is the module that needs it (nil for a configured module), chain
// the path of names from a configured module to parent. It returns an
// error naming the cycle when name is already on the chain, or the error
// of resolving name or its dependencies.
func (p *planner) visit(name string, parent *node, chain []string) error {
	switch p.state[name] {
	case visited:
		return nil
	case visiting:
		cycle := slices.Concat(chain[slices.Index(chain, name):], []string{name})
		return fmt.Errorf("resolve module dependencies: cycle %s", strings.Join(cycle, " -> "))
	}
	p.state[name] = visiting
	n, err := p.resolve(name, parent)
	if err != nil {
		return err
	}
	chain = append(slices.Clip(chain), name)
	for _, d := range n.deps {
		if err := p.visit(d, n, chain); err != nil {
			return err
		}
	}
	p.state[name] = visited
	p.byName[name] = n
	p.nodes = append(p.nodes, n)
	return nil
}

// resolve returns the node for name: a module of the driver tree, unless
// it is needed by an in-tree module (whose dependencies are in-tree too),
// else a module of the host. It returns an error when a configured module
// is not in the tree, or the error of treeNode or hostNode.
func (p *planner) resolve(name string, parent *node) (*node, error) {
	path, inTree := p.tree[name]
	switch {
	case inTree && (parent == nil || !parent.step.InTree):
		return p.treeNode(name, path)
	case parent == nil:
		return nil, fmt.Errorf("resolve module %s: not in driver tree %s", name, p.req.TreeModules)
	}
	return p.hostNode(name, parent.step.Name)
}

// params returns the parameters module name is loaded with.
func (p *planner) params(name string) string {
	return mergeParams(p.modprobe[name], p.config[name])
}
