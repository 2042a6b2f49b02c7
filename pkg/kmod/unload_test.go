package kmod

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// loadedDriver makes sysfs show the driver loaded in version 535 with
// nvidia_peermem (not configured) and the in-tree drm that nvidia_drm
// needs.
func loadedDriver(f *fixture) {
	f.loaded("nvidia", "535.183.01", 3, "nvidia_modeset", "nvidia_peermem", "nvidia_uvm")
	f.loaded("nvidia_modeset", "535.183.01", 1, "nvidia_drm")
	f.loaded("nvidia_drm", "535.183.01", 0)
	f.loaded("nvidia_uvm", "535.183.01", 0)
	f.loaded("nvidia_peermem", "535.183.01", 0)
	f.loaded("drm", "", 2, "drm_kms_helper", "nvidia_drm")
	f.builtin("nvidiafb_is_not_ours")
}

func TestUnload(t *testing.T) {
	t.Parallel()
	modules := []string{"nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm"}

	t.Run("modules are unloaded after their holders, unconfigured NVIDIA ones included", func(t *testing.T) {
		f := newFixture(t)
		loadedDriver(f)
		k := fakeKernel("", nil)
		got, err := Unload(k, f.host, modules)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"nvidia_drm", "nvidia_modeset", "nvidia_peermem", "nvidia_uvm", "nvidia"}
		if !slices.Equal(got, want) || !slices.Equal(deleted(k), want) {
			t.Errorf("unloaded %v, deleted %v; want %v", got, deleted(k), want)
		}
		for _, fl := range deleteFlags(k) {
			if fl != unix.O_NONBLOCK {
				t.Errorf("delete_module flags %#x, want O_NONBLOCK", fl)
			}
		}
	})

	t.Run("nothing loaded unloads nothing", func(t *testing.T) {
		f := newFixture(t)
		f.builtin("i2c_core")
		k := fakeKernel("", nil)
		got, err := Unload(k, f.host, modules)
		if err != nil || got != nil || deleted(k) != nil {
			t.Errorf("Unload = %v, %v; deleted %v", got, err, deleted(k))
		}
	})

	t.Run("a module held by a process is busy and nothing is unloaded", func(t *testing.T) {
		f := newFixture(t)
		loadedDriver(f)
		f.write("sys/module/nvidia_uvm/refcnt", "1\n") // a CUDA process
		k := fakeKernel("", nil)
		got, err := Unload(k, f.host, modules)
		if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "unload module nvidia_uvm: refcnt 1") || !strings.Contains(err.Error(), "reboot") {
			t.Errorf("err %v, want ErrBusy naming nvidia_uvm and its refcnt", err)
		}
		if got != nil || deleted(k) != nil {
			t.Errorf("unloaded %v, deleted %v; want nothing", got, deleted(k))
		}
	})

	t.Run("a module held by a module outside the set is busy", func(t *testing.T) {
		f := newFixture(t)
		loadedDriver(f)
		f.loaded("nvidia", "535.183.01", 4, "gdrdrv")
		k := fakeKernel("", nil)
		_, err := Unload(k, f.host, modules)
		if !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "module gdrdrv uses it") {
			t.Errorf("err %v, want ErrBusy naming gdrdrv", err)
		}
		if deleted(k) != nil {
			t.Errorf("deleted %v", deleted(k))
		}
	})

	t.Run("EAGAIN from delete_module is ErrBusy", func(t *testing.T) {
		f := newFixture(t)
		loadedDriver(f)
		k := fakeKernel("", map[string]error{"nvidia_uvm": unix.EAGAIN})
		got, err := Unload(k, f.host, modules)
		if !errors.Is(err, ErrBusy) || !errors.Is(err, unix.EAGAIN) || !strings.Contains(err.Error(), "nvidia_uvm") {
			t.Errorf("err %v, want ErrBusy wrapping EAGAIN", err)
		}
		if want := []string{"nvidia_drm", "nvidia_modeset", "nvidia_peermem"}; !slices.Equal(got, want) {
			t.Errorf("unloaded %v, want %v", got, want)
		}
	})

	t.Run("EBUSY from delete_module is ErrBusy", func(t *testing.T) {
		f := newFixture(t)
		loadedDriver(f)
		k := fakeKernel("", map[string]error{"nvidia_drm": unix.EBUSY})
		if _, err := Unload(k, f.host, modules); !errors.Is(err, ErrBusy) {
			t.Errorf("err %v, want ErrBusy", err)
		}
	})

	t.Run("a module already gone is passed over", func(t *testing.T) {
		f := newFixture(t)
		loadedDriver(f)
		k := fakeKernel("", map[string]error{"nvidia_peermem": unix.ENOENT})
		got, err := Unload(k, f.host, modules)
		if err != nil || slices.Contains(got, "nvidia_peermem") || len(got) != 4 {
			t.Errorf("Unload = %v, %v", got, err)
		}
	})

	t.Run("a module that is going is busy", func(t *testing.T) {
		f := newFixture(t)
		loadedDriver(f)
		markLoaded(t, f.root, "nvidia_uvm", "going", "")
		k := fakeKernel("", nil)
		if _, err := Unload(k, f.host, modules); !errors.Is(err, ErrBusy) || !strings.Contains(err.Error(), "going") {
			t.Errorf("err %v, want ErrBusy", err)
		}
	})
}
