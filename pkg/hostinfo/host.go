// Package hostinfo is the one reader of the host's own facts: os-release,
// the running kernel's release and vermagic flags, /proc, /sys and the
// kernel's module directory. A Host is opened once per look at the host
// (one assessment), and every other package that needs a host fact asks
// it, through a small interface of its own.
//
// Every path is resolved inside the host root through package hostfs:
// symlinks, absolute ones included, stay inside it. Every file is read
// bounded, with a limit per kind of file (the table below), and without
// blocking.
package hostinfo

import (
	"fmt"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
)

// The host files this package reads, and the most it reads of each kind.
const (
	etcOSRelease      = "/etc/os-release"
	usrLibOSRelease   = "/usr/lib/os-release"
	kernelReleasePath = "/proc/sys/kernel/osrelease"
	nvidiaVersionPath = "/proc/driver/nvidia/version"
	nvidiaGPUsDir     = "/proc/driver/nvidia/gpus"
	procDevicesPath   = "/proc/devices"
	sysModuleDir      = "/sys/module"
	pciDevicesPath    = "/sys/bus/pci/devices"
	lockdownPath      = "/sys/kernel/security/lockdown"
	sigEnforcePath    = "/sys/module/module/parameters/sig_enforce"
	cmdlinePath       = "/proc/cmdline"
	devDir            = "/dev"

	limitAttr       = 64 << 10 // a sysfs or procfs attribute, os-release, GPU information
	limitProcList   = 1 << 20  // /proc/devices
	limitModulesDep = 32 << 20 // modules.dep, modules.builtin (a distribution kernel's are ~1 MiB)
)

// ModuleDirs are where a kernel's modules live on a host, in the order
// looked at: /lib/modules/<release>, then /usr/lib/modules/<release>
// (Flatcar and merged-/usr hosts).
var ModuleDirs = []string{"/lib/modules", "/usr/lib/modules"}

// Host reads the facts of a host tree. Its methods are safe for
// concurrent use.
type Host struct {
	fs    *hostfs.Root
	owned bool // Close closes fs
}

// Open opens the host tree at root ("/" on the host itself). The caller
// must Close it.
func Open(root string) (*Host, error) {
	r, err := hostfs.Open(root)
	if err != nil {
		return nil, err
	}
	return &Host{fs: r, owned: true}, nil
}

// New reads the host tree r; closing the Host leaves r open.
func New(r *hostfs.Root) *Host { return &Host{fs: r} }

// Close releases the host tree, when Open opened it.
func (h *Host) Close() error {
	if h.owned {
		return h.fs.Close()
	}
	return nil
}

// FS returns the host tree, for the packages that write to it.
func (h *Host) FS() *hostfs.Root { return h.fs }

// hostPath returns where host path name appears on this machine, for
// messages.
func (h *Host) hostPath(name string) string { return h.fs.Join(name) }

// readFile returns the contents of host file name, at most limitAttr
// bytes. Errors name the path and wrap the cause (fs.ErrNotExist,
// hostfs.ErrNotRegular, hostfs.ErrTooLarge).
func (h *Host) readFile(name string) ([]byte, error) { return h.fs.ReadFile(name, limitAttr) }

// readTrimmed is readFile with surrounding whitespace removed, the usual
// shape of a sysfs or procfs attribute.
func (h *Host) readTrimmed(name string) (string, error) {
	b, err := h.readFile(name)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// errorf prefixes err with what was being read.
func errorf(what string, err error) error { return fmt.Errorf("%s: %w", what, err) }
