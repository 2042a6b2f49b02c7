package engine

import (
	"fmt"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
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
	// Prefetch is the latest prefetch for a staged OS update or a new
	// kernel (see NewPrefetchReport), nil when there was none.
	Prefetch *PrefetchReport `json:"prefetch,omitempty"`
	// Failed are the images recorded as failed to activate, never tried
	// again until `forget` removes them; sorted by digest.
	Failed []FailedReport `json:"failed_images,omitempty"`
}

// FailedReport is one image recorded as failed.
type FailedReport struct {
	Digest string    `json:"digest"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
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
	// FromCurrent is set when driver-version is unset and Version is the
	// current tree's: the daemon keeps what is installed.
	FromCurrent bool `json:"from_current,omitempty"`
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
	// Files and Bytes are the regular files the install unpacked and
	// their size; 0 for a tree installed by other means.
	Files int   `json:"files,omitempty"`
	Bytes int64 `json:"bytes,omitempty"`
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
	r.Driver.FromCurrent = cfg.DriverVersion == "" && r.Driver.Version != ""
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
		tr.Digest, tr.Files, tr.Bytes = t.Meta.Digest, t.Meta.Files, t.Meta.Bytes
	}
	return tr
}

// PrefetchReport describes the latest prefetch: a driver tree fetched
// ahead of a reboot into another OS version or kernel.
type PrefetchReport struct {
	Driver        string `json:"driver"`
	OSVersion     string `json:"os_version,omitempty"`
	KernelRelease string `json:"kernel_release,omitempty"`
	Tag           string `json:"tag"`
	Tree          string `json:"tree,omitempty"`
	Digest        string `json:"digest,omitempty"`
	// State is fetching, ready or failed (the store.Prefetch* constants).
	State    string    `json:"state"`
	Error    string    `json:"error,omitempty"`
	At       time.Time `json:"at"`
	Attempts int       `json:"attempts"`
	// NextRetry is when a failed prefetch is tried again, if scheduled.
	NextRetry *time.Time `json:"next_retry,omitempty"`
	// Booted is true once the host runs the OS version and kernel the
	// tree was fetched for: the reboot happened.
	Booted bool `json:"booted"`
	// Summary is the line `status` prints.
	Summary string `json:"summary"`
}

// NewPrefetchReport describes p on the host f describes; nil for nil.
func NewPrefetchReport(p *store.Prefetch, f Facts) *PrefetchReport {
	if p == nil {
		return nil
	}
	r := &PrefetchReport{Driver: p.Driver, OSVersion: p.OSVersion, KernelRelease: p.KernelRelease, Tag: p.Tag,
		Tree: p.Tree, Digest: p.Digest, State: p.State, Error: p.Error, At: p.At, Attempts: p.Attempts,
		Booted: (p.OSVersion == "" || p.OSVersion == f.OS.OSVersion()) &&
			(p.KernelRelease == "" || p.KernelRelease == f.Kernel.Release)}
	if !p.NextRetry.IsZero() {
		next := p.NextRetry
		r.NextRetry = &next
	}
	r.Summary = r.summary(f.OS.Family())
	return r
}

// summary says in a line what the prefetch did, e.g. "prefetched
// 4081.2.0-550.54.14 for the staged update".
func (r *PrefetchReport) summary(family string) string {
	what, into := "for the staged update", "OS "+r.OSVersion
	if family != hostinfo.FamilyFlatcar && family != hostinfo.FamilyCoreOS && r.KernelRelease != "" {
		what, into = "for kernel "+r.KernelRelease, "kernel "+r.KernelRelease
	}
	name := r.Tag
	if name == "" { // failed before the tag was known
		name = "the driver"
	}
	switch {
	case r.State == store.PrefetchReady && r.Booted:
		return fmt.Sprintf("%s was prefetched before the reboot into %s", name, into)
	case r.State == store.PrefetchReady:
		return fmt.Sprintf("prefetched %s %s", name, what)
	case r.State == store.PrefetchFetching:
		return fmt.Sprintf("prefetching %s %s", name, what)
	}
	s := fmt.Sprintf("prefetch of %s %s failed", name, what)
	if r.Attempts > 0 {
		s += fmt.Sprintf(" (attempt %d)", r.Attempts)
	}
	if r.Error != "" {
		s += ": " + r.Error
	}
	if r.NextRetry != nil {
		s += "; next try at " + r.NextRetry.Local().Format(RetryTimeFormat)
	} else {
		s += "; no retry scheduled"
	}
	return s
}

// RetryTimeFormat is how a prefetch's next try is written in summaries.
const RetryTimeFormat = "2006-01-02 15:04:05 MST"
