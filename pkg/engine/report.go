package engine

import (
	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
)

// Report is what `status` and `plan` print; its JSON field names are a
// stable interface that scripts use.
type Report struct {
	OS        OSReport                `json:"os"`
	Kernel    KernelReport            `json:"kernel"`
	Driver    DriverReport            `json:"driver"`
	Current   *TreeReport             `json:"current"`
	Previous  *TreeReport             `json:"previous,omitempty"`
	Installed []TreeReport            `json:"installed"`
	Loaded    map[string]LoadedReport `json:"loaded"`
	GPUs      []GPUReport             `json:"gpus"`
	Plan      Decision                `json:"plan"`
	Problems  []string                `json:"problems,omitempty"`
}

// OSReport identifies the operating system.
type OSReport struct {
	ID      string `json:"id"`
	Family  string `json:"family"` // flatcar, coreos or generic
	Name    string `json:"name"`
	Version string `json:"version"`
	BuildID string `json:"build_id,omitempty"`
}

// KernelReport describes the running kernel.
type KernelReport struct {
	Release  string `json:"release"`
	Vermagic string `json:"vermagic"`
	// FlagsKnown is false when no in-tree module showed the kernel's
	// vermagic flags; then Vermagic is the release alone.
	FlagsKnown bool `json:"flags_known"`
}

// DriverReport names the driver version wanted and the one running.
type DriverReport struct {
	Version string `json:"version"`
	// Loaded is the version of the loaded nvidia module, from
	// /sys/module/nvidia/version or /proc/driver/nvidia/version.
	Loaded string `json:"loaded,omitempty"`
}

// TreeReport describes one installed tree.
type TreeReport struct {
	Path          string `json:"path"`
	Driver        string `json:"driver"`
	OSVersion     string `json:"os_version"`
	Vermagic      string `json:"vermagic"`
	MatchesKernel bool   `json:"matches_kernel"`
	Problem       string `json:"problem,omitempty"`
	Digest        string `json:"digest,omitempty"`
}

// LoadedReport describes a loaded module.
type LoadedReport struct {
	Version   string   `json:"version"`
	Refcnt    int      `json:"refcnt"`
	InitState string   `json:"initstate,omitempty"`
	Holders   []string `json:"holders,omitempty"`
}

// GPUReport describes an NVIDIA GPU on the PCI bus.
type GPUReport struct {
	Address string `json:"address"`
	Device  string `json:"device"`
	Driver  string `json:"driver,omitempty"`
}

// NewReport describes the host, the store and the decision.
func NewReport(f Facts, cfg config.Config, d Decision) Report {
	r := Report{
		OS: OSReport{ID: f.OS.ID, Family: f.OS.Family(), Name: f.OS.PrettyName,
			Version: f.OS.OSVersion(), BuildID: f.OS.BuildID},
		Kernel:    KernelReport{Release: f.Kernel.Release, Vermagic: f.Kernel.Vermagic(), FlagsKnown: f.Kernel.Flags != nil},
		Driver:    DriverReport{Version: d.Driver, Loaded: f.LoadedVersion()},
		Installed: []TreeReport{},
		Loaded:    map[string]LoadedReport{},
		GPUs:      []GPUReport{},
		Plan:      d,
		Problems:  f.Store.Problems,
	}
	if r.Driver.Version == "" {
		r.Driver.Version = cfg.DriverVersion
	}
	for _, t := range f.Store.Trees {
		tr := treeReport(t, f.Kernel, cfg.Modules)
		r.Installed = append(r.Installed, tr)
		switch t.Path {
		case f.Store.Current:
			r.Current = &tr
		case f.Store.Previous:
			r.Previous = &tr
		}
	}
	for name, m := range f.Loaded {
		r.Loaded[name] = LoadedReport{Version: m.Version, Refcnt: m.Refcnt, InitState: m.InitState, Holders: m.Holders}
	}
	for _, g := range f.GPUs {
		r.GPUs = append(r.GPUs, GPUReport{Address: g.Address, Device: g.Device, Driver: g.Driver})
	}
	return r
}

func treeReport(t store.Tree, k Kernel, modules []string) TreeReport {
	fit := Judge(t, k, modules)
	tr := TreeReport{Path: t.Path, Driver: t.Driver, OSVersion: t.OSVersion,
		Vermagic: fit.Vermagic, MatchesKernel: fit.Matches, Problem: fit.Problem}
	if t.Meta != nil {
		tr.Digest = t.Meta.Digest
	}
	return tr
}
