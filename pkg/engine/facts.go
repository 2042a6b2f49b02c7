// Package engine decides and, in later stages, does what the daemon does.
//
// Data moves one way: Gather reads the host into Facts, Plan turns facts,
// configuration and remembered state into a Decision without touching
// anything, and the steps that carry a decision out act on the host.
package engine

import (
	"fmt"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/cdi"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
)

// Kernel is what is known of the running kernel.
type Kernel struct {
	Release string
	// Flags are the vermagic flags after the release ("SMP preempt
	// mod_unload modversions"), read from an in-tree module of the running
	// kernel. Nil when no such module was found: then only the release can
	// be compared.
	Flags []string
	// FlagsFrom is the host path of the module the flags were read from.
	FlagsFrom string
}

// Vermagic is the kernel's vermagic as far as it is known.
func (k Kernel) Vermagic() string {
	return modinfo.Vermagic{Release: k.Release, Flags: k.Flags}.String()
}

// Facts are everything Plan needs to know about the host.
type Facts struct {
	OS     hostinfo.OSRelease
	Kernel Kernel
	GPUs   []hostinfo.GPU
	// Loaded are the configured modules that are loaded, by kernel name.
	Loaded map[string]hostinfo.Module
	// NvidiaVersion is the version in /proc/driver/nvidia/version, "" when
	// the nvidia module is not loaded.
	NvidiaVersion string
	Store         store.Inventory
}

// LoadedVersion is the version of the loaded nvidia module, "" when none is
// loaded.
func (f Facts) LoadedVersion() string {
	if m, ok := f.Loaded["nvidia"]; ok && m.Version != "" {
		return m.Version
	}
	return f.NvidiaVersion
}

// Host is what an assessment reads of the host, and what activation
// hands on to kmod and cdi; *hostinfo.Host is the real one. Open one per
// assessment: its methods read the host afresh each time.
type Host interface {
	kmod.Host
	cdi.Host
	OSRelease() (hostinfo.OSRelease, error)
	KernelRelease() (string, error)
	KernelFlags(release string) (flags []string, from string, ok bool)
	NvidiaGPUs() ([]hostinfo.GPU, error)
	LoadedModules(names []string) (map[string]hostinfo.Module, error)
	NvidiaProcVersion() (string, error)
	DeviceHolders(prefix string) ([]hostinfo.DeviceHolder, error)
}

var _ Host = (*hostinfo.Host)(nil)

// Gather reads the facts of host h. It returns an error when the host
// cannot be described at all (no os-release, no kernel release) or a host
// file exists but cannot be read; an absent optional fact (no GPU, no
// module loaded, no store yet) is not an error.
func Gather(h Host, cfg config.Config) (Facts, error) {
	var f Facts
	var err error
	if f.OS, err = h.OSRelease(); err != nil {
		return f, err
	}
	if f.Kernel, err = runningKernel(h); err != nil {
		return f, err
	}
	if f.GPUs, err = h.NvidiaGPUs(); err != nil {
		return f, err
	}
	if f.Loaded, err = h.LoadedModules(cfg.Modules); err != nil {
		return f, err
	}
	if f.NvidiaVersion, err = h.NvidiaProcVersion(); err != nil {
		return f, err
	}
	if f.Store, err = store.Scan(h.FS(), cfg.Store); err != nil {
		return f, fmt.Errorf("store %s: %w", cfg.Store, err)
	}
	return f, nil
}

// runningKernel reads the running kernel's release and, from one of its
// own modules, its vermagic flags.
func runningKernel(h Host) (Kernel, error) {
	release, err := h.KernelRelease()
	if err != nil {
		return Kernel{}, err
	}
	return kernelOf(h, release), nil
}

// kernelOf describes kernel release, which may not be running: its flags
// are known when the host has its modules (the running kernel, or one
// installed for the next boot). Unknown flags leave only the release to
// compare, which still protects the host.
func kernelOf(h Host, release string) Kernel {
	k := Kernel{Release: release}
	if flags, from, ok := h.KernelFlags(release); ok {
		k.Flags, k.FlagsFrom = flags, from
	}
	return k
}
