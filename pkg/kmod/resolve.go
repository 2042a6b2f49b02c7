package kmod

import (
	"fmt"
	"path"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

// skippedBuiltIn is Step.Skipped for a module built into the kernel.
const skippedBuiltIn = "built in"

// treeNode reads the driver tree's module name at path and checks it
// against the running kernel and sysfs. It returns the node, skipped when
// the same version is live, or an error naming the module and path when
// the file cannot be read, fails check, has an invalid depends= entry, is
// built into the kernel, is loaded in another version (wrapping
// ErrOtherVersion), or is coming or going.
func (p *planner) treeNode(name, path string) (*node, error) {
	info, err := modinfo.ReadPlain(path)
	if err != nil {
		return nil, fmt.Errorf("check module %s: %w", name, err)
	}
	if err := p.check(name, path, info); err != nil {
		return nil, err
	}
	n := &node{step: Step{Name: name, Path: path, Params: p.params(name)}}
	for _, d := range info.Depends {
		dn, err := normName(d)
		if err != nil {
			return nil, fmt.Errorf("check module %s: %s: depends=: %w", name, path, err)
		}
		n.deps = append(n.deps, dn)
	}
	sys, err := readSysModule(p.req.Host, name)
	if err != nil {
		return nil, err
	}
	switch {
	case !sys.present:
		return n, nil
	case sys.builtIn():
		return nil, fmt.Errorf("check module %s: %s: the kernel has a built-in module of that name", name, path)
	case !sys.live():
		return nil, fmt.Errorf("check module %s: %s: the loaded module is %s, not live; retry later", name, path, sys.initState)
	case sys.version != info.Version:
		return nil, fmt.Errorf("check module %s: %s: version %q is loaded, the tree has %q; unload it first: %w", name, path, sys.version, info.Version, ErrOtherVersion)
	}
	n.step.Skipped = strings.TrimSpace("already loaded " + sys.version)
	return n, nil
}

// check compares what the driver tree's module name at path says about
// itself with the running kernel. It returns nil when the module can be
// loaded, or an error naming the module and path when its name= differs
// from name, its vermagic is missing or does not match the running
// kernel's release and flags (wrapping *modinfo.MismatchError), or it has
// no signature while module signing is enforced (wrapping ErrUnsigned).
func (p *planner) check(name, path string, info *modinfo.Info) error {
	if info.Name != "" {
		if own, err := normName(info.Name); err != nil || own != name {
			return fmt.Errorf("check module %s: %s: the file calls itself %q", name, path, info.Name)
		}
	}
	vm, err := modinfo.ParseVermagic(info.Vermagic)
	if err != nil {
		return fmt.Errorf("check module %s: %s: %w", name, path, err)
	}
	if err := modinfo.Check(vm, p.req.Release, p.req.Flags); err != nil {
		return fmt.Errorf("check module %s: %s: %w", name, path, err)
	}
	if p.enforced && info.Signature == nil {
		return fmt.Errorf("check module %s: %s: %w (%s): the module has no signature, so the kernel would refuse it; not trying (the kernel trusts %s)",
			name, path, ErrUnsigned, p.why, p.trustedKeys())
	}
	return nil
}

// hostNode resolves name, needed by module neededBy, among the host
// kernel's modules: skipped when built in (a sysfs directory without
// initstate, or listed in modules.builtin) or already live, else the file
// modules.dep names. It returns an error naming both modules when sysfs
// cannot be read, the module is coming or going, modules.dep cannot be
// read, or the module is nowhere to be found.
func (p *planner) hostNode(name, neededBy string) (*node, error) {
	n := &node{step: Step{Name: name, InTree: true}}
	sys, err := readSysModule(p.req.Host, name)
	if err != nil {
		return nil, err
	}
	switch {
	case sys.builtIn():
		n.step.Skipped = skippedBuiltIn
		return n, nil
	case sys.live():
		n.step.Skipped = strings.TrimSpace("already loaded " + sys.version)
		return n, nil
	case sys.present:
		return nil, fmt.Errorf("resolve module %s (needed by %s): the loaded module is %s, not live; retry later", name, neededBy, sys.initState)
	}
	idx, err := p.hostIndex()
	if err != nil {
		return nil, err
	}
	if idx.Builtin[name] {
		n.step.Skipped = skippedBuiltIn
		return n, nil
	}
	e, ok := idx.Entries[name]
	if !ok {
		return nil, fmt.Errorf("resolve module %s (needed by %s): not in the driver tree, not loaded, not built in, and not in %s",
			name, neededBy, p.depFiles(idx))
	}
	n.step.Path, n.step.Params, n.deps = e.Path, p.params(name), e.Deps
	return n, nil
}

// hostIndex returns the host's modules.dep index, reading it on first use.
func (p *planner) hostIndex() (*hostinfo.ModuleIndex, error) {
	if p.host != nil {
		return p.host, nil
	}
	idx, err := p.req.Host.ModuleIndex(p.req.Release)
	if err != nil {
		return nil, err
	}
	p.host = &idx
	return p.host, nil
}

// depFiles names the modules.dep file searched, for messages.
func (p *planner) depFiles(idx *hostinfo.ModuleIndex) string {
	if idx.Dir != "" {
		return p.req.Host.FS().Join(path.Join(idx.Dir, "modules.dep"))
	}
	files := make([]string, len(idx.Looked))
	for i, f := range idx.Looked {
		files[i] = p.req.Host.FS().Join(f)
	}
	return strings.Join(files, " or ")
}
