package hostinfo

import (
	"maps"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestLoadedModuleFixtures(t *testing.T) {
	t.Parallel()
	root := fixture(t, "flatcar")

	t.Run("nvidia is read with all its attributes", func(t *testing.T) {
		m, ok, err := LoadedModule(root, "nvidia")
		if err != nil || !ok {
			t.Fatalf("LoadedModule = %v, %v", ok, err)
		}
		want := Module{
			Name:       "nvidia",
			Version:    "550.54.14",
			SrcVersion: "6E2E7B8C9A0D1F3E5A4B2C7",
			Refcnt:     2,
			InitState:  "live",
			Holders:    []string{"nvidia_modeset", "nvidia_uvm"},
			Parameters: map[string]string{
				"NVreg_DeviceFileMode":                 "438",
				"NVreg_EnableMSI":                      "1",
				"NVreg_PreserveVideoMemoryAllocations": "0",
				"NVreg_RegistryDwords":                 "(null)",
			},
		}
		if !reflect.DeepEqual(m, want) {
			t.Errorf("got  %+v\nwant %+v", m, want)
		}
	})

	t.Run("a dashed name is normalised to underscores", func(t *testing.T) {
		m, ok, err := LoadedModule(root, "nvidia-uvm")
		if err != nil || !ok {
			t.Fatalf("LoadedModule = %v, %v", ok, err)
		}
		if m.Name != "nvidia_uvm" || m.Version != "550.54.14" || m.Refcnt != 0 || m.Holders != nil {
			t.Errorf("got %+v", m)
		}
	})

	t.Run("a module that is not loaded is reported absent", func(t *testing.T) {
		m, ok, err := LoadedModule(root, "nvidia-peermem")
		if err != nil || ok || !reflect.DeepEqual(m, Module{}) {
			t.Errorf("LoadedModule = %+v, %v, %v; want zero, false, nil", m, ok, err)
		}
	})

	t.Run("a host without /sys/module has no modules", func(t *testing.T) {
		_, ok, err := LoadedModule(fixture(t, "coreos"), "nvidia")
		if err != nil || ok {
			t.Errorf("LoadedModule = %v, %v; want false, nil", ok, err)
		}
	})
}

func TestLoadedModule(t *testing.T) {
	t.Parallel()
	t.Run("a built-in module has refcnt -1 and no init state", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"sys/module/printk/parameters/time": "N\n",
			"sys/module/printk/uevent":          "",
		})
		m, ok, err := LoadedModule(root, "printk")
		if err != nil || !ok {
			t.Fatalf("LoadedModule = %v, %v", ok, err)
		}
		want := Module{Name: "printk", Refcnt: -1, Parameters: map[string]string{"time": "N"}}
		if !reflect.DeepEqual(m, want) {
			t.Errorf("got %+v, want %+v", m, want)
		}
	})

	t.Run("a built-in module with a stray refcnt still reports -1", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"sys/module/x/refcnt": "3\n"})
		m, ok, err := LoadedModule(root, "x")
		if err != nil || !ok || m.Refcnt != -1 {
			t.Errorf("LoadedModule = %+v, %v, %v", m, ok, err)
		}
	})

	t.Run("a module without refcnt reports -1", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"sys/module/x/initstate": "coming\n"})
		m, ok, err := LoadedModule(root, "x")
		if err != nil || !ok || m.Refcnt != -1 || m.InitState != "coming" {
			t.Errorf("LoadedModule = %+v, %v, %v", m, ok, err)
		}
	})

	t.Run("an unreadable parameter is skipped", func(t *testing.T) {
		// A directory stands in for a write-only sysfs file, which cannot
		// be made unreadable when tests run as root.
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"sys/module/x/initstate":           "live\n",
			"sys/module/x/refcnt":              "0\n",
			"sys/module/x/parameters/ok":       "1 2 \n",
			"sys/module/x/parameters/wronly/":  "",
			"sys/module/x/parameters/dangling": "->/nowhere",
		})
		m, ok, err := LoadedModule(root, "x")
		if err != nil || !ok {
			t.Fatalf("LoadedModule = %v, %v", ok, err)
		}
		if want := map[string]string{"ok": "1 2 "}; !maps.Equal(m.Parameters, want) {
			t.Errorf("Parameters = %q, want %q", m.Parameters, want)
		}
	})

	t.Run("holders are sorted", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"sys/module/x/initstate": "live\n",
			"sys/module/x/refcnt":    "3\n",
			"sys/module/x/holders/c": "->../../c",
			"sys/module/x/holders/a": "",
			"sys/module/x/holders/b": "->../../b",
		})
		m, _, err := LoadedModule(root, "x")
		if err != nil || !slices.Equal(m.Holders, []string{"a", "b", "c"}) {
			t.Errorf("Holders = %q, %v", m.Holders, err)
		}
	})

	t.Run("a bad refcnt is an error naming the file", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"sys/module/x/initstate": "live\n",
			"sys/module/x/refcnt":    "lots\n",
		})
		_, _, err := LoadedModule(root, "x")
		if want := filepath.Join(root, "sys/module/x/refcnt"); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want one naming %s", err, want)
		}
	})

	t.Run("an unreadable attribute is an error", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"sys/module/x/version/": ""})
		if _, _, err := LoadedModule(root, "x"); err == nil {
			t.Error("got no error for a directory at version")
		}
	})

	for _, name := range []string{"", ".", "..", "a/b", "../../etc"} {
		t.Run("the invalid name "+strings.ReplaceAll(name, "/", "∕")+" is refused", func(t *testing.T) {
			if _, _, err := LoadedModule(t.TempDir(), name); err == nil {
				t.Errorf("LoadedModule(%q): got no error", name)
			}
		})
	}
}

func TestLoadedModules(t *testing.T) {
	t.Parallel()
	t.Run("only loaded modules are returned, keyed by normalised name", func(t *testing.T) {
		mods, err := LoadedModules(fixture(t, "flatcar"), []string{"nvidia", "nvidia-uvm", "nvidia_drm", "nvidia-peermem"})
		if err != nil {
			t.Fatal(err)
		}
		got := slices.Sorted(maps.Keys(mods))
		if want := []string{"nvidia", "nvidia_drm", "nvidia_uvm"}; !slices.Equal(got, want) {
			t.Errorf("keys = %q, want %q", got, want)
		}
		if mods["nvidia_uvm"].Name != "nvidia_uvm" || mods["nvidia_drm"].Version != "550.54.14" {
			t.Errorf("got %+v", mods)
		}
	})

	t.Run("no names give an empty map", func(t *testing.T) {
		mods, err := LoadedModules(fixture(t, "coreos"), nil)
		if err != nil || mods == nil || len(mods) != 0 {
			t.Errorf("LoadedModules = %v, %v", mods, err)
		}
	})

	t.Run("an invalid name is an error", func(t *testing.T) {
		if _, err := LoadedModules(fixture(t, "flatcar"), []string{"nvidia", "a/b"}); err == nil {
			t.Error("got no error")
		}
	})
}

func TestNvidiaProcVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, content, want string
	}{
		{
			"the proprietary module's line is parsed",
			"NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
			"550.54.14",
		},
		{
			"the open module's line is parsed",
			"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.86.15  Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Jan  2 07:58:45 UTC 2025\nGCC version:  gcc version 13.3.0\n",
			"570.86.15",
		},
		{
			"an aarch64 open module's line is parsed",
			"NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  565.57.01  Release Build  (dvs-builder@U16-T02-35-3)  Tue Oct 15 ...\n",
			"565.57.01",
		},
		{
			"a two-part legacy version is parsed",
			"NVRM version: NVIDIA UNIX x86_64 Kernel Module  390.157  Wed Oct 12 09:19:07 UTC 2022\n",
			"390.157",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, map[string]string{"proc/driver/nvidia/version": tt.content})
			got, err := NvidiaProcVersion(root)
			if err != nil || got != tt.want {
				t.Errorf("NvidiaProcVersion = %q, %v; want %q", got, err, tt.want)
			}
		})
	}

	t.Run("the flatcar fixture's version is read", func(t *testing.T) {
		got, err := NvidiaProcVersion(fixture(t, "flatcar"))
		if err != nil || got != "550.54.14" {
			t.Errorf("NvidiaProcVersion = %q, %v", got, err)
		}
	})

	t.Run("a missing file gives no version and no error", func(t *testing.T) {
		got, err := NvidiaProcVersion(fixture(t, "debian"))
		if err != nil || got != "" {
			t.Errorf("NvidiaProcVersion = %q, %v; want empty, nil", got, err)
		}
	})

	for name, content := range map[string]string{
		"garbage":                   "hello world\n",
		"an empty file":             "",
		"a line without a version":  "NVRM version: NVIDIA UNIX x86_64 Kernel Module  Thu Feb 22 01:44:30 UTC 2024\n",
		"a version on a later line": "\nNVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14\n",
	} {
		t.Run(name+" is an error naming the file", func(t *testing.T) {
			root := t.TempDir()
			writeTree(t, root, map[string]string{"proc/driver/nvidia/version": content})
			got, err := NvidiaProcVersion(root)
			want := filepath.Join(root, "proc/driver/nvidia/version")
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("NvidiaProcVersion = %q, %v; want an error naming %s", got, err, want)
			}
		})
	}
}

func TestIsDriverVersion(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{
		"550.54.14": true, "390.157": true, "1.2.3.4": true,
		"550": false, "2024": false, "01:44:30": false, "x86_64": false,
		"550.": false, ".54": false, "550..14": false, "550.54a": false, "": false,
	} {
		if got := isDriverVersion(s); got != want {
			t.Errorf("isDriverVersion(%q) = %v, want %v", s, got, want)
		}
	}
}
