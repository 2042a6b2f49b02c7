package engine

import (
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
)

// Action is what the daemon should do.
type Action string

// The actions Plan chooses from.
const (
	ActionNone    Action = "none"    // the wanted driver is loaded
	ActionLoad    Action = "load"    // current matches the kernel: load it
	ActionInstall Action = "install" // nothing installed matches: fetch an image
	ActionSwitch  Action = "switch"  // another installed tree matches: point current at it
	ActionRefuse  Action = "refuse"  // nothing safe can be done; Reason says why
	// ActionNoGPU: require-gpu is set and the host has no NVIDIA GPU, so
	// there is nothing to load. Not a failure: a node without a GPU in a
	// mixed pool must not keep kubelet down.
	ActionNoGPU Action = "no-gpu"
)

// Decision is the outcome of Plan.
type Decision struct {
	Action Action `json:"action"`
	Reason string `json:"reason"`
	// Driver is the driver version wanted, "" when none could be chosen.
	Driver string `json:"driver,omitempty"`
	// Tree is the host path of the tree to load or switch to, or where an
	// install puts the new tree.
	Tree string `json:"tree,omitempty"`
	// Image is the reference an install fetches.
	Image string `json:"image,omitempty"`
	// Target is what an install fetches, fully resolved; nil for the
	// other actions.
	Target *Target `json:"-"`
	// Cleanup lists leftovers of interrupted installs to remove first.
	Cleanup []string `json:"cleanup,omitempty"`
}

// treeName is the directory an image for a host of os booting osVersion
// and kernel is installed under, inside <store>/<driver>/. On Flatcar and
// CoreOS the OS version pins the kernel, so it is the OS version, as the
// original installer laid it out; on generic hosts the kernel changes
// under one OS version, so it is the kernel release.
func treeName(os hostinfo.OSRelease, osVersion, kernel string) string {
	switch os.Family() {
	case hostinfo.FamilyFlatcar, hostinfo.FamilyCoreOS:
		return osVersion
	default:
		return kernel
	}
}

// Plan decides what to do. It is pure: everything it looks at is in its
// arguments (st being the store's remembered state), and it changes
// nothing.
func Plan(f Facts, cfg config.Config, st store.State) Decision {
	d := plan(f, cfg, st)
	d.Cleanup = append([]string(nil), f.Store.Staging...)
	return d
}

func plan(f Facts, cfg config.Config, st store.State) Decision {
	if cfg.RequireGPU && len(f.GPUs) == 0 {
		return Decision{Action: ActionNoGPU, Reason: "no NVIDIA GPU on the PCI bus (vendor 0x10de, display class): nothing to load (require-gpu: false installs anyway)"}
	}
	driver, err := f.WantedDriver(cfg)
	if err != nil {
		return refuse(err.Error())
	}
	current := f.Store.Tree(f.Store.Current)
	bad := st.Reasons()
	usable := func(t *store.Tree) (bool, string) { return usableTree(t, f, cfg, bad, driver) }
	currentOK, currentWhy := usable(current)
	loaded := f.LoadedVersion()

	switch {
	case len(cfg.Modules) == 0 && currentOK && current.Driver == driver:
		// User space only: nothing of ours to load, so a current tree that
		// fits is the whole of what is wanted (activating it again is
		// idempotent).
		return Decision{Action: ActionNone, Driver: driver, Tree: current.Path,
			Reason: fmt.Sprintf("modules is empty: the user space of %s, loading no module", current.Path)}
	case loaded == driver && (current == nil || currentOK):
		d := Decision{Action: ActionNone, Driver: driver}
		if current == nil {
			d.Reason = fmt.Sprintf("nvidia %s is loaded (not from the store)", loaded)
		} else {
			d.Tree = current.Path
			d.Reason = fmt.Sprintf("nvidia %s is loaded from %s", loaded, current.Path)
		}
		return d
	case currentOK:
		d := Decision{Action: ActionLoad, Driver: driver, Tree: current.Path,
			Reason: fmt.Sprintf("%s matches kernel %s", current.Path, f.Kernel.Release)}
		if loaded != "" {
			d.Reason += fmt.Sprintf("; nvidia %s is loaded and must be replaced", loaded)
		}
		return d
	}

	var candidates []*store.Tree
	for i := range f.Store.Trees {
		if ok, _ := usable(&f.Store.Trees[i]); ok {
			candidates = append(candidates, &f.Store.Trees[i])
		}
	}
	name := treeName(f.OS, f.OS.OSVersion(), f.Kernel.Release)
	sort.SliceStable(candidates, func(i, j int) bool {
		return candidates[i].OSVersion == name && candidates[j].OSVersion != name
	})
	if len(candidates) > 0 {
		return Decision{Action: ActionSwitch, Driver: driver, Tree: candidates[0].Path,
			Reason: fmt.Sprintf("%s; %s matches kernel %s", currentWhy, candidates[0].Path, f.Kernel.Release)}
	}

	t, err := resolveTarget(f, cfg, driver, Boot{}, f.Kernel)
	if err != nil {
		return refuse(err.Error())
	}
	ref, err := imageRef(cfg, t.Tag)
	if err != nil {
		return Decision{Action: ActionRefuse, Driver: driver,
			Reason: fmt.Sprintf("%s; nothing installed matches kernel %s and %v to fetch tag %s from", currentWhy, f.Kernel.Release, err, t.Tag)}
	}
	return Decision{Action: ActionInstall, Driver: driver, Image: ref, Target: &t,
		Tree:   path.Join(f.Store.Dir, driver, t.TreeName),
		Reason: fmt.Sprintf("%s; no installed tree of driver %s matches kernel %s", currentWhy, driver, f.Kernel.Release)}
}

// imageRef names the image an install fetches: tag in the OCI layout
// when source names one, else in the repository.
func imageRef(cfg config.Config, tag string) (string, error) {
	if strings.HasPrefix(cfg.Source, source.LayoutPrefix) {
		return cfg.Source + ":" + tag, nil
	}
	ref, err := source.Reference(cfg.Repository, tag)
	if err != nil {
		return "", err
	}
	return ref.String(), nil
}

// usableTree reports whether t can be loaded for the wanted driver, and if
// not, a reason that names the tree.
func usableTree(t *store.Tree, f Facts, cfg config.Config, bad map[string]string, driver string) (bool, string) {
	if t == nil {
		return false, "nothing is current"
	}
	if t.Driver != driver {
		return false, fmt.Sprintf("%s is driver %s, not %s", t.Path, t.Driver, driver)
	}
	if t.Meta != nil {
		if why, failed := bad[t.Meta.Digest]; failed {
			return false, fmt.Sprintf("%s (%s) failed before: %s", t.Path, t.Meta.Digest, why)
		}
	}
	if fit := Judge(*t, f.Kernel, cfg.Modules); !fit.Matches {
		return false, fmt.Sprintf("%s does not match kernel %s: %s", t.Path, f.Kernel.Release, fit.Problem)
	}
	return true, ""
}

func refuse(reason string) Decision { return Decision{Action: ActionRefuse, Reason: reason} }
