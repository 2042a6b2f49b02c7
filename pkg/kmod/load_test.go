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
	"golang.org/x/sys/unix"
)

func TestLoad(t *testing.T) {
	t.Parallel()
	t.Run("modules are loaded in plan order with the compressed flag for .ko.xz", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		f.req.Params = map[string]string{"nvidia-drm": "modeset=1"}
		plan, err := Plan(f.req)
		if err != nil {
			t.Fatal(err)
		}
		k := fakeKernel(f.root, nil)
		steps, err := Load(k, f.req)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(steps, plan) {
			t.Errorf("steps %+v\nwant the plan %+v", steps, plan)
		}
		want := []call{
			{Name: "ipmi_msghandler", Params: "", Flags: compressedFile, Compression: modinfo.CompressionXZ},
			{Name: "ipmi_devintf", Params: "", Flags: compressedFile, Compression: modinfo.CompressionXZ},
			{Name: "drm", Params: "", Flags: 0, Compression: ""},
			{Name: "drm_kms_helper", Params: "", Flags: 0, Compression: ""},
			{Name: "nvidia", Params: "", Flags: 0, Compression: ""},
			{Name: "nvidia_modeset", Params: "", Flags: 0, Compression: ""},
			{Name: "nvidia_drm", Params: "modeset=1", Flags: 0, Compression: ""},
			{Name: "nvidia_uvm", Params: "", Flags: 0, Compression: ""},
		}
		if !reflect.DeepEqual(k.Calls(), want) {
			t.Errorf("calls %+v\nwant  %+v", k.Calls(), want)
		}
	})

	t.Run("a module loaded in the same version is skipped", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		f.loaded("nvidia", testVersion, 0)
		k := fakeKernel(f.root, nil)
		steps, err := Load(k, f.req)
		if err != nil {
			t.Fatal(err)
		}
		if s := stepByName(t, steps, "nvidia"); s.Skipped != "already loaded "+testVersion {
			t.Errorf("nvidia step %+v", s)
		}
		if slices.Contains(k.Loaded(), "nvidia") {
			t.Errorf("nvidia loaded again: %v", k.Loaded())
		}
	})

	t.Run("EEXIST from the kernel counts as loaded", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		k := fakeKernel(f.root, map[string]error{"nvidia_uvm": unix.EEXIST})
		steps, err := Load(k, f.req)
		if err != nil {
			t.Fatal(err)
		}
		if s := stepByName(t, steps, "nvidia_uvm"); s.Skipped != "already loaded" {
			t.Errorf("nvidia_uvm step %+v", s)
		}
	})

	t.Run("a release mismatch is refused before any finit_module call", func(t *testing.T) {
		// A kernel with CONFIG_MODVERSIONS would take this module if the
		// symbol CRCs matched: the check must be ours.
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		f.treeModule("nvidia-uvm", kofixture.Module{Fields: kofixture.Standard("nvidia_uvm", testVersion, "6.1.0-55-amd64 SMP preempt mod_unload modversions ", "nvidia")})
		k := fakeKernel(f.root, nil)
		steps, err := Load(k, f.req)
		var mismatch *modinfo.MismatchError
		if !errors.As(err, &mismatch) || !strings.Contains(err.Error(), "nvidia-uvm.ko") {
			t.Errorf("err %v, want a vermagic mismatch naming the file", err)
		}
		if len(k.Calls()) != 0 || steps != nil {
			t.Errorf("calls %v, steps %v; want none", k.Loaded(), steps)
		}
	})

	t.Run("an unsigned module under sig_enforce is refused before trying", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		f.write("sys/module/module/parameters/sig_enforce", "Y\n")
		k := fakeKernel(f.root, nil)
		_, err := Load(k, f.req)
		if !errors.Is(err, ErrUnsigned) || !strings.Contains(err.Error(), "module not signed by a key the kernel trusts (module.sig_enforce=Y, built into the kernel): the module has no signature") {
			t.Errorf("err %v, want ErrUnsigned", err)
		}
		if len(k.Calls()) != 0 {
			t.Errorf("calls %v, want none", k.Loaded())
		}
	})

	t.Run("a signed module under lockdown is loaded", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(true)
		f.standardHost()
		f.write("sys/kernel/security/lockdown", "none [integrity] confidentiality\n")
		k := fakeKernel(f.root, nil)
		if _, err := Load(k, f.req); err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(k.Loaded(), "nvidia") {
			t.Errorf("calls %v", k.Loaded())
		}
	})

	t.Run("on error the modules loaded before stay loaded and are returned", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		k := fakeKernel(f.root, map[string]error{"nvidia_modeset": unix.EINVAL})
		steps, err := Load(k, f.req)
		if !errors.Is(err, unix.EINVAL) {
			t.Fatalf("err %v", err)
		}
		if got := stepNames(steps); !slices.Equal(got, []string{"ipmi_msghandler", "ipmi_devintf", "drm", "drm_kms_helper", "video", "i2c_core", "nvidia"}) {
			t.Errorf("steps %v", got)
		}
		if len(deleted(k)) != 0 {
			t.Errorf("deleted %v", deleted(k))
		}
	})
}

func TestLoadErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		module   string
		errno    unix.Errno
		enforce  bool
		noSysfs  bool // the fake does not mark loaded modules live
		want     string
		unsigned bool
	}{
		{name: "ENOEXEC says invalid module format", module: "nvidia", errno: unix.ENOEXEC, want: "invalid module format"},
		{name: "ENODEV says no GPU the module can drive", module: "nvidia", errno: unix.ENODEV, want: "no NVIDIA GPU the module can drive"},
		{name: "ENOENT names the dependency that is not loaded", module: "nvidia", errno: unix.ENOENT, noSysfs: true, want: "unknown symbol: dependency ipmi_devintf is not loaded"},
		{name: "ENOENT with every dependency loaded points at dmesg", module: "nvidia_drm", errno: unix.ENOENT, want: "unknown symbol (see dmesg)"},
		{name: "EKEYREJECTED is a signature refusal", module: "nvidia", errno: unix.EKEYREJECTED, want: "module not signed by a key the kernel trusts", unsigned: true},
		{name: "EPERM under lockdown is a signature refusal", module: "nvidia", errno: unix.EPERM, enforce: true, want: "module not signed by a key the kernel trusts (lockdown=integrity)", unsigned: true},
		{name: "EPERM without enforcement is about privileges", module: "nvidia", errno: unix.EPERM, want: "CAP_SYS_MODULE"},
		{name: "EBUSY says retry", module: "nvidia_uvm", errno: unix.EBUSY, want: "busy"},
		{name: "EAGAIN says retry", module: "nvidia_uvm", errno: unix.EAGAIN, want: "busy"},
		{name: "EOPNOTSUPP on a compressed module asks for CONFIG_MODULE_DECOMPRESS", module: "ipmi_msghandler", errno: unix.EOPNOTSUPP, want: "CONFIG_MODULE_DECOMPRESS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			f.standardTree(c.enforce)
			f.standardHost()
			if c.enforce {
				f.write("sys/kernel/security/lockdown", "none [integrity] confidentiality\n")
			}
			k := fakeKernel(f.root, map[string]error{c.module: c.errno})
			if c.noSysfs {
				k.Root = ""
			}
			plan, err := Plan(f.req)
			if err != nil {
				t.Fatal(err)
			}
			path := stepByName(t, plan, c.module).Path
			_, err = Load(k, f.req)
			switch {
			case !errors.Is(err, c.errno):
				t.Errorf("err %v, want it to wrap %v", err, c.errno)
			case !strings.HasPrefix(err.Error(), "load module "+c.module+": "+path+": "):
				t.Errorf("err %q does not name module %s and path %s", err, c.module, path)
			case !strings.Contains(err.Error(), c.want):
				t.Errorf("err %q, want it to say %q", err, c.want)
			case errors.Is(err, ErrUnsigned) != c.unsigned:
				t.Errorf("err %q: errors.Is(err, ErrUnsigned) = %v", err, !c.unsigned)
			}
		})
	}
}

func TestOpenModule(t *testing.T) {
	t.Parallel()
	t.Run("a FIFO is refused without blocking", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "nvidia.ko")
		if err := unix.Mkfifo(p, 0o600); err != nil {
			t.Skipf("mkfifo: %v", err)
		}
		if _, _, err := openModule(p, false); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("err %v", err)
		}
	})

	t.Run("a symlink is refused for a tree module and followed for an in-tree one", func(t *testing.T) {
		dir := t.TempDir()
		real := kofixture.Build(t, dir, kofixture.Module{Name: "drm", Fields: kofixture.Standard("drm", "", testVermagic)})
		link := filepath.Join(dir, "link.ko")
		if err := os.Symlink(real, link); err != nil {
			t.Fatal(err)
		}
		if _, _, err := openModule(link, true); !errors.Is(err, unix.ELOOP) {
			t.Errorf("nofollow: err %v, want ELOOP", err)
		}
		f, size, err := openModule(link, false)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if st, _ := os.Stat(real); st.Size() != size {
			t.Errorf("size %d, want %d", size, st.Size())
		}
	})
}
