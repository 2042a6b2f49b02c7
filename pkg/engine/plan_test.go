package engine

import (
	"crypto/sha256"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
)

const (
	oldKernel = "6.1.73-flatcar"
	newKernel = "6.1.77-flatcar"
	flags     = "SMP preempt mod_unload"
)

var gpu = hostinfo.GPU{Address: "0000:3b:00.0", Vendor: "0x10de", Device: "0x2330", Class: "0x030200"}

// tree builds an installed tree whose four modules were built for kernel
// with the given vermagic.
func tree(driver, osVersion, kernel, vermagic string) store.Tree {
	t := store.Tree{Path: "/opt/nvidia/" + driver + "/" + osVersion, Driver: driver, OSVersion: osVersion,
		Meta: &store.Meta{Digest: fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(osVersion+driver+vermagic)))}}
	for _, name := range []string{"nvidia", "nvidia_drm", "nvidia_modeset", "nvidia_uvm"} {
		t.Modules = append(t.Modules, store.Module{
			Name: name, Kernel: kernel,
			Path: t.Path + "/lib/modules/" + kernel + "/video/" + name + ".ko",
			Info: &modinfo.Info{Name: name, Version: driver, Vermagic: vermagic + " "},
		})
	}
	return t
}

// host is a Flatcar host running newKernel with one GPU and an empty store.
func host() Facts {
	return Facts{
		OS:     hostinfo.OSRelease{ID: "flatcar", Version: "3815.2.0", VersionID: "3815.2.0"},
		Kernel: Kernel{Release: newKernel, Flags: strings.Fields(flags)},
		GPUs:   []hostinfo.GPU{gpu},
		Loaded: map[string]hostinfo.Module{},
		Store:  store.Inventory{Dir: "/opt/nvidia"},
	}
}

func withTrees(f Facts, current string, trees ...store.Tree) Facts {
	f.Store.Trees = trees
	f.Store.Current = current
	return f
}

func loaded(f Facts, version string) Facts {
	f.Loaded = map[string]hostinfo.Module{"nvidia": {Name: "nvidia", Version: version, Refcnt: 2, InitState: "live"}}
	f.NvidiaVersion = version
	return f
}

func cfg() config.Config {
	c := config.Default()
	c.DriverVersion = "550.54.14"
	c.Repository = "registry.example.com/nvidia-driver"
	return c
}

func TestPlan(t *testing.T) {
	t.Parallel()
	matching := tree("550.54.14", "3815.2.0", newKernel, newKernel+" "+flags)
	oldOS := tree("550.54.14", "3760.2.0", oldKernel, oldKernel+" "+flags)
	oldDriver := tree("535.161.07", "3815.2.0", newKernel, newKernel+" "+flags)
	wrongFlags := tree("550.54.14", "3815.2.0", newKernel, newKernel+" SMP preempt_rt mod_unload")
	noGPU := host()
	noGPU.GPUs = nil
	noGPUAllowed := cfg()
	noGPUAllowed.RequireGPU = false
	noRepo := cfg()
	noRepo.Repository = ""
	unset := cfg()
	unset.DriverVersion = ""
	staging := withTrees(host(), "")
	staging.Store.Staging = []string{"/opt/nvidia/.staging/550.54.14-3815.2.0-1234"}

	cases := []struct {
		name   string
		facts  Facts
		cfg    config.Config
		state  store.State
		action Action
		tree   string
		image  string
		reason []string
	}{
		{name: "the matching driver is loaded: nothing to do",
			facts: loaded(withTrees(host(), matching.Path, matching), "550.54.14"), cfg: cfg(),
			action: ActionNone, tree: matching.Path, reason: []string{"550.54.14 is loaded"}},
		{name: "the matching tree is installed but not loaded: load it",
			facts: withTrees(host(), matching.Path, matching), cfg: cfg(),
			action: ActionLoad, tree: matching.Path, reason: []string{"matches kernel " + newKernel}},
		{name: "the kernel changed after an OS update: install the image for the new OS",
			facts: withTrees(host(), oldOS.Path, oldOS), cfg: cfg(),
			action: ActionInstall, tree: "/opt/nvidia/550.54.14/3815.2.0", image: "registry.example.com/nvidia-driver:3815.2.0-550.54.14",
			reason: []string{oldOS.Path, "built for kernel " + oldKernel, "not " + newKernel}},
		{name: "the kernel changed and the new tree was prefetched: switch to it",
			facts: withTrees(host(), oldOS.Path, oldOS, matching), cfg: cfg(),
			action: ActionSwitch, tree: matching.Path, reason: []string{"does not match kernel", "matches kernel"}},
		{name: "the driver version changed in config: install the new driver",
			facts: loaded(withTrees(host(), oldDriver.Path, oldDriver), "535.161.07"), cfg: cfg(),
			action: ActionInstall, image: "registry.example.com/nvidia-driver:3815.2.0-550.54.14",
			reason: []string{"is driver 535.161.07, not 550.54.14"}},
		{name: "the driver version changed back to an installed one: switch",
			facts: loaded(withTrees(host(), oldDriver.Path, oldDriver, matching), "535.161.07"), cfg: cfg(),
			action: ActionSwitch, tree: matching.Path},
		{name: "the current tree's vermagic flags differ from the kernel's: refetch",
			facts: withTrees(host(), wrongFlags.Path, wrongFlags), cfg: cfg(),
			action: ActionInstall, reason: []string{"preempt_rt"}},
		{name: "the current tree's vermagic matches but the kernel's flags are unknown: load on the release alone",
			facts: func() Facts { f := withTrees(host(), wrongFlags.Path, wrongFlags); f.Kernel.Flags = nil; return f }(), cfg: cfg(),
			action: ActionLoad},
		{name: "no NVIDIA GPU present: refuse",
			facts: noGPU, cfg: cfg(), action: ActionNoGPU, reason: []string{"no NVIDIA GPU", "nothing to load"}},
		{name: "no NVIDIA GPU but not required: install",
			facts: noGPU, cfg: noGPUAllowed, action: ActionInstall},
		{name: "no driver version set and nothing installed: refuse",
			facts: host(), cfg: unset, action: ActionRefuse, reason: []string{"driver-version is not set"}},
		{name: "no driver version set: keep what is current",
			facts: withTrees(host(), oldDriver.Path, oldDriver), cfg: unset, action: ActionLoad, tree: oldDriver.Path},
		{name: "nothing matches and no repository: refuse, naming the tag",
			facts: withTrees(host(), oldOS.Path, oldOS), cfg: noRepo,
			action: ActionRefuse, reason: []string{"no repository", "3815.2.0-550.54.14"}},
		{name: "nothing matches and an OCI layout is the source: install from it",
			facts: withTrees(host(), oldOS.Path, oldOS), cfg: func() config.Config { c := noRepo; c.Source = "oci-layout:/media/usb"; return c }(),
			action: ActionInstall, image: "oci-layout:/media/usb:3815.2.0-550.54.14"},
		{name: "a tree that failed before is not chosen again",
			facts: withTrees(host(), oldOS.Path, oldOS, matching), cfg: cfg(),
			state:  store.State{BadDigests: map[string]store.BadDigest{matching.Meta.Digest: {Reason: "nvidia: init failed"}}},
			action: ActionInstall, reason: []string{"does not match kernel"}},
		{name: "a half-written staging dir is never used and is cleaned",
			facts: staging, cfg: cfg(), action: ActionInstall, tree: "/opt/nvidia/550.54.14/3815.2.0"},
		{name: "another driver is loaded while current matches: load and replace",
			facts: loaded(withTrees(host(), matching.Path, matching), "535.161.07"), cfg: cfg(),
			action: ActionLoad, reason: []string{"535.161.07 is loaded and must be replaced"}},
		{name: "the wanted driver was loaded by other means: nothing to do",
			facts: loaded(host(), "550.54.14"), cfg: cfg(), action: ActionNone, reason: []string{"not from the store"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := Plan(tc.facts, tc.cfg, tc.state)
			if d.Action != tc.action {
				t.Fatalf("action %s, want %s (reason: %s)", d.Action, tc.action, d.Reason)
			}
			if tc.tree != "" && d.Tree != tc.tree {
				t.Errorf("tree %q, want %q", d.Tree, tc.tree)
			}
			if tc.image != "" && d.Image != tc.image {
				t.Errorf("image %q, want %q", d.Image, tc.image)
			}
			if (d.Action == ActionInstall) != (d.Target != nil) {
				t.Errorf("action %s with target %+v", d.Action, d.Target)
			}
			if d.Target != nil && (d.Target.Driver != d.Driver || !strings.HasSuffix(d.Image, ":"+d.Target.Tag) ||
				d.Tree != "/opt/nvidia/"+d.Driver+"/"+d.Target.TreeName) {
				t.Errorf("target %+v does not match image %s and tree %s", d.Target, d.Image, d.Tree)
			}
			for _, r := range tc.reason {
				if !strings.Contains(d.Reason, r) {
					t.Errorf("reason %q does not mention %q", d.Reason, r)
				}
			}
			if d.Reason == "" {
				t.Error("no reason given")
			}
			if !equal(d.Cleanup, tc.facts.Store.Staging) {
				t.Errorf("cleanup %q, want %q", d.Cleanup, tc.facts.Store.Staging)
			}
		})
	}
}

func TestTargets(t *testing.T) {
	t.Parallel()
	c := config.Default()
	c.Repository = "registry.example/nvidia"
	c.DriverVersion = "550.54.14"
	t.Run("a Flatcar install is named and tagged by OS version and checked against the running kernel", func(t *testing.T) {
		d := Plan(host(), c, store.State{})
		want := Target{Driver: "550.54.14", OSID: "flatcar", OSVersion: "3815.2.0", TreeName: "3815.2.0",
			Tag: "3815.2.0-550.54.14", Kernel: host().Kernel}
		if d.Target == nil || !reflect.DeepEqual(*d.Target, want) {
			t.Errorf("target %+v\nwant   %+v", d.Target, want)
		}
	})
	t.Run("generic trees are named by kernel release", func(t *testing.T) {
		f := host()
		f.OS = hostinfo.OSRelease{ID: "debian", VersionID: "12"}
		f.Kernel.Release = "6.1.0-56-amd64"
		if d := Plan(f, c, store.State{}); d.Target == nil || d.Target.TreeName != "6.1.0-56-amd64" {
			t.Errorf("target %+v", d.Target)
		}
	})
	t.Run("a staged OS update leaves the kernel to the image's label", func(t *testing.T) {
		a := Assessment{Facts: host()}
		got, err := a.NextBoot(c, "550.54.14", Boot{OSVersion: "4081.2.0"})
		if err != nil {
			t.Fatal(err)
		}
		want := Target{Driver: "550.54.14", OSID: "flatcar", OSVersion: "4081.2.0", TreeName: "4081.2.0", Tag: "4081.2.0-550.54.14"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("target %+v\nwant   %+v", got, want)
		}
	})
}

func TestJudge(t *testing.T) {
	t.Parallel()
	k := Kernel{Release: newKernel, Flags: strings.Fields(flags)}
	mods := config.Default().Modules
	t.Run("a tree missing a configured module does not match", func(t *testing.T) {
		tr := tree("550.54.14", "3815.2.0", newKernel, newKernel+" "+flags)
		tr.Modules = tr.Modules[:3] // drop nvidia_uvm
		if fit := Judge(tr, k, mods); fit.Matches || !strings.Contains(fit.Problem, "no nvidia-uvm module") {
			t.Fatalf("%+v", fit)
		}
	})
	t.Run("a release mismatch under the running kernel's directory is caught", func(t *testing.T) {
		// Modules copied into the right directory but built elsewhere: the
		// kernel would load them with CONFIG_MODVERSIONS; Judge must not.
		tr := tree("550.54.14", "3815.2.0", newKernel, oldKernel+" "+flags)
		fit := Judge(tr, k, mods)
		if fit.Matches || !strings.Contains(fit.Problem, oldKernel) {
			t.Fatalf("%+v", fit)
		}
	})
	t.Run("an unreadable module is named", func(t *testing.T) {
		tr := tree("550.54.14", "3815.2.0", newKernel, newKernel+" "+flags)
		tr.Modules[0].Info, tr.Modules[0].Err = nil, errTest("read modinfo: x.ko: not an ELF file")
		if fit := Judge(tr, k, mods); fit.Matches || !strings.Contains(fit.Problem, "not an ELF") {
			t.Fatalf("%+v", fit)
		}
	})
	t.Run("a module whose version disagrees with the tree is caught", func(t *testing.T) {
		tr := tree("550.54.14", "3815.2.0", newKernel, newKernel+" "+flags)
		tr.Modules[0].Info.Version = "535.161.07"
		if fit := Judge(tr, k, mods); fit.Matches || !strings.Contains(fit.Problem, "535.161.07") {
			t.Fatalf("%+v", fit)
		}
	})
	t.Run("a matching tree reports its vermagic", func(t *testing.T) {
		fit := Judge(tree("550.54.14", "3815.2.0", newKernel, newKernel+" "+flags), k, mods)
		if !fit.Matches || fit.Vermagic != newKernel+" "+flags {
			t.Fatalf("%+v", fit)
		}
	})
}

type errTest string

func (e errTest) Error() string { return string(e) }

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestJudgeChecksEveryModule(t *testing.T) {
	t.Parallel()
	t.Run("an extra module built for another kernel spoils the tree", func(t *testing.T) {
		k := Kernel{Release: newKernel, Flags: strings.Fields(flags)}
		tr := tree("550.54.14", "3815.2.0", newKernel, newKernel+" "+flags)
		tr.Modules = append(tr.Modules, store.Module{Name: "nvidia_peermem", Kernel: newKernel, Path: "/x/nvidia-peermem.ko",
			Info: &modinfo.Info{Name: "nvidia_peermem", Vermagic: oldKernel + " " + flags}})
		if fit := Judge(tr, k, config.Default().Modules); fit.Matches || !strings.Contains(fit.Problem, "nvidia-peermem.ko") {
			t.Fatalf("%+v", fit)
		}
	})
}
