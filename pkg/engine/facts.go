// Package engine decides and, in later stages, does what the daemon does.
//
// Data moves one way: Gather reads the host into Facts, Plan turns facts,
// configuration and remembered state into a Decision without touching
// anything, and the steps that carry a decision out act on the host.
package engine

import (
	"fmt"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
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

// Gather reads the facts of the host mounted at root. It returns an error
// when the host cannot be described at all (no os-release, no kernel
// release) or a host file exists but cannot be read; an absent optional
// fact (no GPU, no module loaded, no store yet) is not an error.
func Gather(root string, cfg config.Config) (Facts, error) {
	var f Facts
	var err error
	if f.OS, err = hostinfo.ReadOSRelease(root); err != nil {
		return f, err
	}
	if f.Kernel.Release, err = hostinfo.KernelRelease(root); err != nil {
		return f, err
	}
	if path, fsPath, ok := hostinfo.InTreeModule(root, f.Kernel.Release); ok {
		// A module the running kernel shipped shows its vermagic flags. One
		// that cannot be read leaves the flags unknown; the release still
		// protects the host.
		if info, err := modinfo.Read(fsPath); err == nil {
			if vm, err := modinfo.ParseVermagic(info.Vermagic); err == nil && vm.Release == f.Kernel.Release {
				f.Kernel.Flags = append([]string{}, vm.Flags...)
				f.Kernel.FlagsFrom = path
			}
		}
	}
	if f.GPUs, err = hostinfo.NvidiaGPUs(root); err != nil {
		return f, err
	}
	if f.Loaded, err = hostinfo.LoadedModules(root, cfg.Modules); err != nil {
		return f, err
	}
	if f.NvidiaVersion, err = hostinfo.NvidiaProcVersion(root); err != nil {
		return f, err
	}
	if f.Store, err = store.Scan(root, cfg.Store); err != nil {
		return f, fmt.Errorf("store %s: %w", cfg.Store, err)
	}
	return f, nil
}
