package kmod

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

func TestPlanOrder(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.standardTree(false)
	f.standardHost()

	want, err := Plan(f.req)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("dependencies come before the modules that need them", func(t *testing.T) {
		names := stepNames(want)
		for _, pair := range [][2]string{
			{"ipmi_msghandler", "ipmi_devintf"}, {"ipmi_devintf", "nvidia"},
			{"drm", "drm_kms_helper"}, {"drm_kms_helper", "nvidia_drm"},
			{"nvidia", "nvidia_modeset"}, {"nvidia_modeset", "nvidia_drm"},
			{"nvidia", "nvidia_uvm"}, {"video", "nvidia_drm"}, {"i2c_core", "nvidia_drm"},
		} {
			if i, j := slices.Index(names, pair[0]), slices.Index(names, pair[1]); i < 0 || j < 0 || i > j {
				t.Errorf("%s should come before %s in %v", pair[0], pair[1], names)
			}
		}
		if len(names) != 10 {
			t.Errorf("steps %v, want 10", names)
		}
	})

	t.Run("in-tree prerequisites come before every driver module", func(t *testing.T) {
		seenTree := false
		for _, s := range want {
			if !s.InTree {
				seenTree = true
			} else if seenTree {
				t.Errorf("in-tree %s after a driver module in %v", s.Name, stepNames(want))
			}
		}
	})

	t.Run("the configured order does not change the plan", func(t *testing.T) {
		for _, mods := range [][]string{
			{"nvidia-drm", "nvidia-modeset", "nvidia-uvm", "nvidia"},
			{"nvidia_uvm", "nvidia-drm", "nvidia", "nvidia_modeset", "nvidia-uvm"},
		} {
			req := f.req
			req.Modules = mods
			got, err := Plan(req)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Modules %v: plan %v, want %v", mods, stepNames(got), stepNames(want))
			}
		}
	})

	t.Run("a dependency not configured is loaded from the tree", func(t *testing.T) {
		req := f.req
		req.Modules = []string{"nvidia-drm"}
		got, err := Plan(req)
		if err != nil {
			t.Fatal(err)
		}
		if s := stepByName(t, got, "nvidia_modeset"); s.InTree || s.Path != filepath.Join(f.tree, "video", "nvidia-modeset.ko") {
			t.Errorf("nvidia_modeset step %+v", s)
		}
		if slices.Contains(stepNames(got), "nvidia_uvm") {
			t.Errorf("nvidia_uvm planned though neither configured nor needed: %v", stepNames(got))
		}
	})

	t.Run("built-in prerequisites are skipped", func(t *testing.T) {
		for _, name := range []string{"video", "i2c_core"} {
			if s := stepByName(t, want, name); s.Skipped != "built in" || !s.InTree || s.Path != "" {
				t.Errorf("%s step %+v, want skipped as built in", name, s)
			}
		}
	})

	t.Run("in-tree prerequisites point at the host's files", func(t *testing.T) {
		s := stepByName(t, want, "ipmi_devintf")
		wantPath := filepath.Join(f.root, "lib/modules", testRelease, "kernel/drivers/char/ipmi/ipmi_devintf.ko.xz")
		if !s.InTree || s.Path != wantPath || s.Skipped != "" {
			t.Errorf("ipmi_devintf step %+v, want path %s", s, wantPath)
		}
	})
}

func TestPlanHost(t *testing.T) {
	t.Parallel()
	t.Run("modules.dep is found under usr/lib/modules on Flatcar", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.hostModules(filepath.Join(f.root, "usr", "lib", "modules", testRelease))
		steps, err := Plan(f.req)
		if err != nil {
			t.Fatal(err)
		}
		if s := stepByName(t, steps, "drm"); !strings.HasPrefix(s.Path, filepath.Join(f.root, "usr", "lib")) {
			t.Errorf("drm step %+v", s)
		}
	})

	t.Run("a loaded in-tree prerequisite is skipped", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		f.loaded("drm", "", 0)
		steps, err := Plan(f.req)
		if err != nil {
			t.Fatal(err)
		}
		if s := stepByName(t, steps, "drm"); s.Skipped != "already loaded" {
			t.Errorf("drm step %+v", s)
		}
	})

	t.Run("a dependency found nowhere is named", func(t *testing.T) {
		f := newFixture(t)
		f.standardHost()
		f.treeModule("nvidia", kofixture.Module{Fields: kofixture.Standard("nvidia", testVersion, testVermagic, "drm_ttm_helper")})
		f.req.Modules = []string{"nvidia"}
		_, err := Plan(f.req)
		if err == nil || !strings.Contains(err.Error(), "drm_ttm_helper (needed by nvidia)") || !strings.Contains(err.Error(), "modules.dep") {
			t.Errorf("err %v, want drm_ttm_helper named", err)
		}
	})

	t.Run("a host without modules.dep names where it looked", func(t *testing.T) {
		f := newFixture(t)
		f.treeModule("nvidia", kofixture.Module{Fields: kofixture.Standard("nvidia", testVersion, testVermagic, "ipmi_devintf")})
		f.req.Modules = []string{"nvidia"}
		_, err := Plan(f.req)
		if err == nil || !strings.Contains(err.Error(), "ipmi_devintf") || !strings.Contains(err.Error(), "usr/lib/modules") {
			t.Errorf("err %v", err)
		}
	})
}

func TestPlanRefusals(t *testing.T) {
	t.Parallel()
	t.Run("a dependency cycle is an error naming it", func(t *testing.T) {
		f := newFixture(t)
		f.treeModule("nvidia", kofixture.Module{Fields: kofixture.Standard("nvidia", testVersion, testVermagic, "nvidia-modeset")})
		f.treeModule("nvidia-modeset", kofixture.Module{Fields: kofixture.Standard("nvidia_modeset", testVersion, testVermagic, "nvidia")})
		f.req.Modules = []string{"nvidia"}
		_, err := Plan(f.req)
		if err == nil || !strings.Contains(err.Error(), "cycle nvidia -> nvidia_modeset -> nvidia") {
			t.Errorf("err %v, want the cycle named", err)
		}
	})

	t.Run("a configured module missing from the tree is an error", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		f.req.Modules = append(f.req.Modules, "nvidia-peermem")
		_, err := Plan(f.req)
		if err == nil || !strings.Contains(err.Error(), "nvidia_peermem: not in driver tree "+f.tree) {
			t.Errorf("err %v", err)
		}
	})

	t.Run("a module built for another release is refused", func(t *testing.T) {
		f := newFixture(t)
		path := f.treeModule("nvidia", kofixture.Module{Fields: kofixture.Standard("nvidia", testVersion, "6.1.0-55-amd64 SMP preempt mod_unload modversions ")})
		f.req.Modules = []string{"nvidia"}
		_, err := Plan(f.req)
		var mismatch *modinfo.MismatchError
		if !errors.As(err, &mismatch) || !mismatch.ReleaseDiffers || !strings.Contains(err.Error(), "nvidia: "+path) {
			t.Errorf("err %v, want a release mismatch naming %s", err, path)
		}
	})

	t.Run("a module with other vermagic flags is refused", func(t *testing.T) {
		f := newFixture(t)
		f.treeModule("nvidia", kofixture.Module{Fields: kofixture.Standard("nvidia", testVersion, testRelease+" SMP preempt_rt mod_unload modversions ")})
		f.req.Modules = []string{"nvidia"}
		_, err := Plan(f.req)
		var mismatch *modinfo.MismatchError
		if !errors.As(err, &mismatch) || mismatch.ReleaseDiffers || !slices.Equal(mismatch.Extra, []string{"preempt_rt"}) {
			t.Errorf("err %v, want a flags mismatch", err)
		}

		f.req.Flags = nil
		if _, err := Plan(f.req); err != nil {
			t.Errorf("with the kernel's flags unknown: %v, want only the release compared", err)
		}
	})

	t.Run("a module loaded in another version is refused", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		f.loaded("nvidia", "535.183.01", 0)
		_, err := Plan(f.req)
		if !errors.Is(err, ErrOtherVersion) || !strings.Contains(err.Error(), `"535.183.01" is loaded`) {
			t.Errorf("err %v, want ErrOtherVersion", err)
		}
	})

	t.Run("a module whose name differs from its file is refused", func(t *testing.T) {
		f := newFixture(t)
		f.treeModule("nvidia", kofixture.Module{Fields: kofixture.Standard("nvidia_evil", testVersion, testVermagic)})
		f.req.Modules = []string{"nvidia"}
		_, err := Plan(f.req)
		if err == nil || !strings.Contains(err.Error(), `calls itself "nvidia_evil"`) {
			t.Errorf("err %v", err)
		}
	})

	t.Run("a compressed module in the tree is refused unread", func(t *testing.T) {
		f := newFixture(t)
		f.treeModule("nvidia", kofixture.Module{Fields: kofixture.Standard("nvidia", testVersion, testVermagic), Compress: "xz"})
		f.req.Modules = []string{"nvidia"}
		_, err := Plan(f.req)
		if err == nil || !strings.Contains(err.Error(), "plain .ko is required") {
			t.Errorf("err %v", err)
		}
	})

	t.Run("a symlink in the tree is not taken for a module", func(t *testing.T) {
		f := newFixture(t)
		real := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "nvidia", Fields: kofixture.Standard("nvidia", testVersion, testVermagic)})
		if err := os.Symlink(real, filepath.Join(f.tree, "video", "nvidia.ko")); err != nil {
			t.Fatal(err)
		}
		f.req.Modules = []string{"nvidia"}
		if _, err := Plan(f.req); err == nil || !strings.Contains(err.Error(), "not in driver tree") {
			t.Errorf("err %v", err)
		}
	})

	t.Run("no configured modules plan nothing", func(t *testing.T) {
		f := newFixture(t)
		f.req.Modules = nil
		if steps, err := Plan(f.req); steps != nil || err != nil {
			t.Errorf("Plan = %v, %v; want nil, nil", steps, err)
		}
	})

	t.Run("an incomplete request is refused", func(t *testing.T) {
		host := newFixture(t).host
		for _, req := range []Request{{Release: "r", TreeModules: "t"}, {Host: host, TreeModules: "t"}, {Host: host, Release: "r"}} {
			if _, err := Plan(req); err == nil {
				t.Errorf("Plan(%+v) succeeded", req)
			}
		}
	})
}

func TestPlanParams(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.standardTree(false)
	f.standardHost()
	f.req.Modprobe = filepath.Join(f.tree, "..", "..", "..", "etc", "modprobe.d")
	writeFile(t, filepath.Join(f.req.Modprobe, "10-nvidia.conf"), strings.Join([]string{
		"# options nvidia NVreg_Commented=1",
		"options nvidia NVreg_PreserveVideoMemoryAllocations=1 NVreg_EnableMSI=0",
		"options nvidia-drm modeset=0 \\",
		"\tfbdev=0",
		"blacklist nouveau",
		"install nvidia /bin/false",
	}, "\n"))
	writeFile(t, filepath.Join(f.req.Modprobe, "20-more.conf"), "options nvidia NVreg_RegistryDwords=\"A=1; B=2\"\n")
	writeFile(t, filepath.Join(f.req.Modprobe, "ignored.txt"), "options nvidia NVreg_Ignored=1\n")
	f.req.Params = map[string]string{
		"nvidia":     "NVreg_EnableMSI=1 NVreg_OpenRmEnableUnsupportedGpus=1",
		"nvidia_drm": "modeset=1",
		"nvidia-uvm": "uvm_disable_hmm=1",
	}
	steps, err := Plan(f.req)
	if err != nil {
		t.Fatal(err)
	}

	for name, want := range map[string]string{
		"nvidia":         `NVreg_PreserveVideoMemoryAllocations=1 NVreg_EnableMSI=1 NVreg_RegistryDwords="A=1; B=2" NVreg_OpenRmEnableUnsupportedGpus=1`,
		"nvidia_drm":     "modeset=1 fbdev=0",
		"nvidia_uvm":     "uvm_disable_hmm=1",
		"nvidia_modeset": "",
	} {
		t.Run("parameters of "+name+" merge modprobe.d with the configuration, which wins per key", func(t *testing.T) {
			if got := stepByName(t, steps, name).Params; got != want {
				t.Errorf("params %q, want %q", got, want)
			}
		})
	}
}
