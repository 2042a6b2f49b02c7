package kmod

import (
	"time"

	"fmt"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

// Host is what kmod reads of the running host and where it writes;
// *hostinfo.Host is the real one.
type Host interface {
	// LoadedModule reads /sys/module/<name>; ok is false when absent.
	LoadedModule(name string) (m hostinfo.Module, ok bool, err error)
	// ModuleNames lists /sys/module.
	ModuleNames() ([]string, error)
	// ModuleIndex reads the kernel's modules.dep and modules.builtin.
	ModuleIndex(release string) (hostinfo.ModuleIndex, error)
	// ModuleSigning says whether unsigned modules are refused, and why.
	ModuleSigning() (enforced bool, why string)
	// NvidiaGPUInfo reads /proc/driver/nvidia/gpus/<addr>/information.
	NvidiaGPUInfo(addr string) (info hostinfo.GPUInfo, ok bool, err error)
	// CharDeviceMajor reads a character device's major from /proc/devices.
	CharDeviceMajor(name string) (uint32, error)
	// FS is the host tree device nodes are created in.
	FS() *hostfs.Root
	// KernelLog reads the kernel log's records since a time (what a
	// failed finit_module made the module say).
	KernelLog(since time.Duration, keep func(string) bool, max int) ([]hostinfo.KernelMessage, error)
	// TrustedKeys lists the keys module signatures are checked against.
	TrustedKeys() []hostinfo.TrustedKey
}

var _ Host = (*hostinfo.Host)(nil)

// normName returns a module name as the kernel writes it in /sys/module
// (modinfo.CheckName), or an error for a name no module has.
func normName(name string) (string, error) { return modinfo.CheckName(name) }

// sysModule is what /sys/module/<name> says about a module.
type sysModule struct {
	present   bool   // the directory exists
	initState string // "live", "coming" or "going"; "" when built in or absent
	version   string // "" when the module has none
	refcnt    int    // -1 when sysfs shows none
	holders   []string
}

// builtIn reports whether the module is built into the kernel: sysfs has a
// directory for it (for its parameters) but no initstate.
func (m sysModule) builtIn() bool { return m.present && m.initState == "" }

// live reports whether the module is loaded and fully initialised.
func (m sysModule) live() bool { return m.initState == "live" }

// readSysModule reads /sys/module/<name>, name already normalised. It
// returns the zero sysModule when the directory does not exist, and an
// error naming the path when it or one of its attributes cannot be read.
func readSysModule(h Host, name string) (sysModule, error) {
	m, ok, err := h.LoadedModule(name)
	if err != nil || !ok {
		return sysModule{}, err
	}
	return sysModule{present: true, initState: m.InitState, version: m.Version, refcnt: m.Refcnt, holders: m.Holders}, nil
}

// refcntOf returns the refcnt of loaded module m, or an error when sysfs
// shows none (a kernel without CONFIG_MODULE_UNLOAD, which cannot unload
// anyway).
func refcntOf(name string, m sysModule) (int, error) {
	if m.refcnt < 0 {
		return 0, fmt.Errorf("read /sys/module/%s/refcnt: missing (kernel without CONFIG_MODULE_UNLOAD?)", name)
	}
	return m.refcnt, nil
}
