package kmod

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// explain turns the error of finit_module for node n, loaded with flags,
// into an error naming the module and path, saying what the kernel's
// errno means here, and wrapping err (and ErrUnsigned for a signature
// refusal).
func (p *planner) explain(n *node, flags int, err error) error {
	name, path := n.step.Name, n.step.Path
	var errno unix.Errno
	errors.As(err, &errno)
	switch {
	case errno == unix.EKEYREJECTED:
		return fmt.Errorf("load module %s: %s: %w, or signed with a key the kernel does not trust: %w", name, path, ErrUnsigned, err)
	case errno == unix.EPERM && p.enforced:
		return fmt.Errorf("load module %s: %s: %w (%s): %w", name, path, ErrUnsigned, p.why, err)
	case flags&compressedFile != 0 && (errno == unix.EOPNOTSUPP || errno == unix.EINVAL):
		return fmt.Errorf("load module %s: %s: the kernel cannot load compressed modules (needs Linux 5.17+ with CONFIG_MODULE_DECOMPRESS): %w", name, path, err)
	}
	return fmt.Errorf("load module %s: %s: %s: %w", name, path, p.meaning(n, errno), err)
}

// meaning says what errno from finit_module means for node n.
func (p *planner) meaning(n *node, errno unix.Errno) string {
	switch errno {
	case unix.ENOEXEC:
		return "invalid module format: the kernel refused its ELF or its vermagic (see dmesg)"
	case unix.EPERM:
		return "not permitted: needs CAP_SYS_MODULE, and kernel.modules_disabled must be 0"
	case unix.ENODEV:
		return "no NVIDIA GPU the module can drive"
	case unix.ENOENT:
		return p.unknownSymbol(n)
	case unix.EBUSY, unix.EAGAIN:
		return "the kernel is busy loading or unloading this module; retry"
	}
	return "finit_module"
}

// unknownSymbol explains ENOENT from finit_module, which means the module
// uses a symbol no loaded module exports: it names the first module of
// depends= that is neither live nor built in, or else points at dmesg.
func (p *planner) unknownSymbol(n *node) string {
	for _, d := range n.deps {
		if !p.present(d) {
			return fmt.Sprintf("unknown symbol: dependency %s is not loaded", d)
		}
	}
	return "unknown symbol (see dmesg)"
}

// present reports whether module name is live or built into the kernel,
// by sysfs or by the plan; an unreadable sysfs counts as absent.
func (p *planner) present(name string) bool {
	if n, ok := p.byName[name]; ok && n.step.Skipped == skippedBuiltIn {
		return true
	}
	sys, err := readSysModule(p.req.Host, name)
	return err == nil && (sys.live() || sys.builtIn())
}
