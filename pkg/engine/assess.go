package engine

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// Assessment is one look at the host: its facts, the store's remembered
// state, and the decision with its target fully resolved. Every command
// and every reconcile works from one; nothing in it is read twice.
type Assessment struct {
	Facts    Facts
	State    store.State
	Decision Decision
	// Host is the host the facts were read from, for the steps that
	// carry the decision out.
	Host Host
}

// Assess reads host h once (Gather), reads the store's state file once,
// and plans.
func Assess(h Host, cfg config.Config) (Assessment, error) {
	f, err := Gather(h, cfg)
	if err != nil {
		return Assessment{}, err
	}
	st, err := store.ReadState(h.FS(), cfg.Store)
	if err != nil {
		return Assessment{}, err
	}
	return Assessment{Facts: f, State: st, Decision: Plan(f, cfg, st), Host: h}, nil
}

// Report describes the assessment, as `status` prints it.
func (a Assessment) Report(cfg config.Config) Report {
	r := NewReport(a.Facts, cfg, a.Decision)
	r.Prefetch = NewPrefetchReport(a.State.Prefetch, a.Facts)
	for _, d := range slices.Sorted(maps.Keys(a.State.BadDigests)) {
		b := a.State.BadDigests[d]
		r.Failed = append(r.Failed, FailedReport{Digest: d, Reason: b.Reason, At: b.At})
	}
	if a.State.Corrupt != "" {
		r.Problems = append(r.Problems, "the state file is corrupt and read as empty ("+a.State.Corrupt+"); the next install or run sets it aside")
	}
	if w := KernelPinWarning(a.Facts, cfg); w != "" {
		r.Problems = append(r.Problems, w)
	}
	return r
}

// KernelPinWarning says, for a generic host whose tag template does not
// name the kernel release, that its OS version does not pin the kernel:
// a new kernel under the same OS version would get the same image, built
// for another kernel. "" elsewhere.
func KernelPinWarning(f Facts, cfg config.Config) string {
	if f.OS.Family() != hostinfo.FamilyGeneric {
		return ""
	}
	if tmpl, err := cfg.Template(); err != nil || tmpl.UsesKernelRelease() {
		return ""
	}
	return "on " + f.OS.ID + " the OS version does not pin the kernel, and tag-template does not name .KernelRelease: " +
		"a new kernel would ask for the same image; use e.g. {{.OSID}}{{.OSVersion}}-{{.KernelRelease}}-{{.DriverVersion}}"
}

// errNoDriver says that no driver version can be chosen.
var errNoDriver = errors.New("driver-version is not set and no driver is installed")

// WantedDriver is the driver version cfg asks for, or else the current
// tree's. It returns an error when neither names one.
func (f Facts) WantedDriver(cfg config.Config) (string, error) {
	if cfg.DriverVersion != "" {
		return cfg.DriverVersion, nil
	}
	if t := f.Store.Tree(f.Store.Current); t != nil {
		return t.Driver, nil
	}
	return "", errNoDriver
}

// Boot is what a boot runs, as far as the driver cares: the OS version and
// the kernel release, "" for the running one.
type Boot struct {
	OSVersion     string
	KernelRelease string
}

// NextBoot resolves the target for driver on the host after it boots b: a
// staged OS update (Flatcar, CoreOS) or a newly installed kernel. With an
// OS version and no kernel, the kernel is the one the image's label
// names (a Flatcar release pins its kernel); with a kernel release, its
// vermagic flags are read from its modules when the host has them.
func (a Assessment) NextBoot(cfg config.Config, driver string, b Boot) (Target, error) {
	k := a.Facts.Kernel
	switch {
	case b.KernelRelease != "":
		k = kernelOf(a.Host, b.KernelRelease)
	case b.OSVersion != "":
		k = Kernel{} // named by the image's label
	}
	return resolveTarget(a.Facts, cfg, driver, b, k)
}

// resolveTarget resolves what a host f describes needs for driver when it boots
// b with kernel k: the tag and image subdirectory rendered from the
// templates, the tree's name in the store, the OS it must be for. It is
// the one place the tag is rendered.
func resolveTarget(f Facts, cfg config.Config, driver string, b Boot, k Kernel) (Target, error) {
	osVersion := f.OS.OSVersion()
	if b.OSVersion != "" {
		osVersion = b.OSVersion
	}
	release := k.Release // "" when the image's label names it
	t := Target{Driver: driver, OSID: f.OS.ID, OSVersion: osVersion, Kernel: k,
		TreeName: treeName(f.OS, osVersion, release)}
	vars := source.Vars{OSID: f.OS.ID, OSVersion: osVersion, BuildID: f.OS.BuildID,
		DriverVersion: driver, KernelRelease: release}
	tmpl, err := cfg.Template()
	if err != nil {
		return t, err
	}
	if t.Tag, err = tmpl.Render(vars); err != nil {
		return t, err
	}
	if cfg.ImageSubdir != "" {
		sub, err := source.ParseSubdir(cfg.ImageSubdir)
		if err != nil {
			return t, err
		}
		if t.Subdir, err = sub.Render(vars); err != nil {
			return t, err
		}
	}
	return t, nil
}

// NewSource is where cfg says images come from: an OCI layout directory
// (a host path, resolved inside host) or the repository.
func NewSource(host *hostfs.Root, cfg config.Config) (source.Source, error) {
	opts, err := SourceOptions(cfg)
	if err != nil {
		return nil, err
	}
	if dir, ok := strings.CutPrefix(cfg.Source, source.LayoutPrefix); ok {
		real, err := host.Path(dir)
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", cfg.Source, err)
		}
		return source.NewLayout(real, opts), nil
	}
	if cfg.Repository == "" {
		return nil, ErrNoRepository
	}
	return source.NewRegistry(cfg.Repository, opts)
}

// SourceOptions are the fetch options cfg sets: insecure registries,
// mirrors, platform, digest pins.
func SourceOptions(cfg config.Config) (source.Options, error) {
	p, err := v1.ParsePlatform(cfg.Platform)
	if err != nil {
		return source.Options{}, fmt.Errorf("platform %q: %w", cfg.Platform, err)
	}
	return source.Options{Insecure: cfg.InsecureRegistries, Mirrors: cfg.Mirrors, Platform: *p, Digests: cfg.Digests,
		StallTimeout: cfg.StallTimeout}, nil
}

// ErrNoRepository says that cfg names no place to fetch images from.
var ErrNoRepository = errors.New("no repository configured (repository, or source: oci-layout:/path)")

// NewFetcher is a Fetcher from src into s for cfg, refusing the images
// that failed before according to st.
func NewFetcher(src source.Source, s *store.Store, cfg config.Config, st store.State) *Fetcher {
	return &Fetcher{Source: src, Store: s, Modules: cfg.Modules, BadDigests: st.Reasons(), Timeout: cfg.FetchTimeout,
		Limits: unpack.Limits{MaxBytes: cfg.MaxImageBytes, MaxEntries: cfg.MaxImageEntries}}
}
