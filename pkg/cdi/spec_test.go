package cdi

import (
	"errors"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	specs "tags.cncf.io/container-device-interface/specs-go"
)

const (
	driver   = "550.54.14"
	treeHost = "/opt/nvidia/" + driver + "/3815.2.0"
	cdiDir   = "/var/run/cdi"
)

// sharedObject compiles dir/file with the given SONAME.
func sharedObject(t *testing.T, dir, file, soname string) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc is needed to build shared objects")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("gcc", "-shared", "-fPIC", "-nostdlib", "-Wl,-soname,"+soname, "-o", filepath.Join(dir, file), "-x", "c", "-")
	cmd.Stdin = strings.NewReader("const char stub_" + strings.NewReplacer(".", "_", "-", "_").Replace(file) + "[] = \"" + file + "\";\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", file, err, out)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, p, body string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
}

// mknod makes the character device <root>/dev/<name>, skipping the test
// without the privilege to.
func mknod(t *testing.T, root, name string, major, minor uint32) {
	t.Helper()
	p := filepath.Join(root, "dev", name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(major, minor)))
	if errors.Is(err, unix.EPERM) {
		t.Skip("making device nodes needs CAP_MKNOD")
	}
	if err != nil {
		t.Fatal(err)
	}
}

// fixture is a host with a driver tree, current link, two GPU nodes, the
// uvm nodes and the driver's GPU information for the second GPU.
type fixture struct {
	root string
	tree string // real path of the tree
}

// host opens the fixture's host tree for the test.
func (fx fixture) host(t *testing.T) *hostinfo.Host {
	t.Helper()
	h, err := hostinfo.Open(fx.root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	root := t.TempDir()
	tree := filepath.Join(root, treeHost)
	lib := filepath.Join(tree, "lib64")
	sharedObject(t, lib, "libcuda.so."+driver, "libcuda.so.1")
	symlink(t, "libcuda.so."+driver, filepath.Join(lib, "libcuda.so.1"))
	symlink(t, "libcuda.so.1", filepath.Join(lib, "libcuda.so"))
	sharedObject(t, lib, "libnvidia-ml.so."+driver, "libnvidia-ml.so.1")
	symlink(t, "libnvidia-ml.so."+driver, filepath.Join(lib, "libnvidia-ml.so.1"))
	symlink(t, "libgone.so."+driver, filepath.Join(lib, "libgone.so.1"))
	writeFile(t, filepath.Join(lib, "README"), "not a library", 0o644)
	writeFile(t, filepath.Join(lib, "vdpau", "libvdpau_nvidia.so."+driver), "in a subdirectory", 0o644)
	for _, b := range []string{"nvidia-smi", "nvidia-debugdump", "nvidia-persistenced", "nvidia-modprobe"} {
		writeFile(t, filepath.Join(tree, "bin", b), "#!/bin/sh\n", 0o755)
	}
	writeFile(t, filepath.Join(tree, "bin", "nvidia-bug-report.txt"), "not executable", 0o644)
	symlink(t, "nvidia-smi", filepath.Join(tree, "bin", "nvidia-smi-link"))
	symlink(t, driver+"/3815.2.0", filepath.Join(root, "opt/nvidia/current"))

	mknod(t, root, "nvidiactl", 195, 255)
	mknod(t, root, "nvidia0", 195, 0)
	mknod(t, root, "nvidia1", 195, 1)
	mknod(t, root, "nvidia-uvm", 234, 0)
	mknod(t, root, "nvidia-uvm-tools", 234, 1)
	writeFile(t, filepath.Join(root, "dev/nvidia-caps/nvidia-cap1"), "", 0o644)
	writeFile(t, filepath.Join(root, "dev/nvidia2"), "a regular file, not a node", 0o644)
	writeFile(t, filepath.Join(root, "proc/driver/nvidia/gpus/0000:3b:00.0/information"),
		"Model: \t\t Tesla T4\nGPU UUID: \t GPU-6a9c1f0e-1b2c-3d4e-5f60-718293a4b5c6\nDevice Minor: \t 1\n", 0o444)
	return fixture{root: root, tree: tree}
}

// loadCache returns a CDI cache reading only dir, failing on any error of
// its specs.
func loadCache(t *testing.T, dir string) *cdilib.Cache {
	t.Helper()
	cache, err := cdilib.NewCache(cdilib.WithSpecDirs(dir), cdilib.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Refresh(); err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		t.Fatalf("spec errors: %v", errs)
	}
	return cache
}

// inject returns an OCI spec with the devices injected.
func inject(t *testing.T, cache *cdilib.Cache, devices ...string) *oci.Spec {
	t.Helper()
	s := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if unresolved, err := cache.InjectDevices(s, devices...); err != nil {
		t.Fatalf("inject %v: %v (unresolved %v)", devices, err, unresolved)
	}
	return s
}

func devicePaths(s *oci.Spec) map[string][2]int64 {
	out := map[string][2]int64{}
	for _, d := range s.Linux.Devices {
		out[d.Path] = [2]int64{d.Major, d.Minor}
	}
	return out
}

func mountMap(s *oci.Spec) map[string]oci.Mount {
	out := map[string]oci.Mount{}
	for _, m := range s.Mounts {
		out[m.Destination] = m
	}
	return out
}

func TestGenerateInject(t *testing.T) {
	fx := newFixture(t)
	spec, err := Generate(Options{Host: fx.host(t), Tree: "/opt/nvidia/current"})
	if err != nil {
		t.Fatal(err)
	}
	p, changed, err := Write(fx.host(t).FS(), cdiDir, spec)
	if err != nil || !changed || p != filepath.Join(fx.root, cdiDir, SpecFile) {
		t.Fatalf("Write = %s, %v, %v", p, changed, err)
	}
	cache := loadCache(t, filepath.Join(fx.root, cdiDir))

	uuid := "GPU-6a9c1f0e-1b2c-3d4e-5f60-718293a4b5c6"
	var want []string
	for _, n := range []string{"0", "1", "0000:3b:00.0", uuid, AllDevices} {
		want = append(want, Kind+"="+n)
	}
	slices.Sort(want)
	if got := cache.ListDevices(); !slices.Equal(got, want) {
		t.Errorf("devices = %v, want %v", got, want)
	}

	ctl := map[string][2]int64{"/dev/nvidiactl": {195, 255}, "/dev/nvidia-uvm": {234, 0}, "/dev/nvidia-uvm-tools": {234, 1}}
	with := func(extra map[string][2]int64) map[string][2]int64 {
		m := map[string][2]int64{}
		for k, v := range ctl {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for _, c := range []struct {
		device string
		want   map[string][2]int64
	}{
		{AllDevices, with(map[string][2]int64{"/dev/nvidia0": {195, 0}, "/dev/nvidia1": {195, 1}})},
		{"0", with(map[string][2]int64{"/dev/nvidia0": {195, 0}})},
		{"1", with(map[string][2]int64{"/dev/nvidia1": {195, 1}})},
		{"0000:3b:00.0", with(map[string][2]int64{"/dev/nvidia1": {195, 1}})},
		{uuid, with(map[string][2]int64{"/dev/nvidia1": {195, 1}})},
	} {
		s := inject(t, cache, Kind+"="+c.device)
		got := devicePaths(s)
		if len(got) != len(c.want) {
			t.Errorf("%s: device nodes %v, want %v", c.device, got, c.want)
		}
		for path, num := range c.want {
			if got[path] != num {
				t.Errorf("%s: %s is %v, want %v (all: %v)", c.device, path, got[path], num, got)
			}
		}
		// Every device allows its nodes in the device cgroup.
		if len(s.Linux.Resources.Devices) != len(c.want) {
			t.Errorf("%s: cgroup rules %v", c.device, s.Linux.Resources.Devices)
		}
	}

	s := inject(t, cache, Kind+"=0")
	mounts := mountMap(s)
	wantMounts := map[string]string{
		ContainerLibDir + "/libcuda.so." + driver:      treeHost + "/lib64/libcuda.so." + driver,
		ContainerLibDir + "/libnvidia-ml.so." + driver: treeHost + "/lib64/libnvidia-ml.so." + driver,
		ContainerLibDir + "/libcuda.so":                treeHost + "/lib64/libcuda.so." + driver,
		ContainerBinDir + "/nvidia-smi":                treeHost + "/bin/nvidia-smi",
		ContainerBinDir + "/nvidia-smi-link":           treeHost + "/bin/nvidia-smi",
		ContainerBinDir + "/nvidia-debugdump":          treeHost + "/bin/nvidia-debugdump",
	}
	if len(mounts) != len(wantMounts) {
		t.Errorf("mounts %v, want %v", mounts, wantMounts)
	}
	for dst, src := range wantMounts {
		m, ok := mounts[dst]
		if !ok {
			t.Errorf("no mount at %s", dst)
			continue
		}
		if m.Source != src || m.Type != "bind" || !slices.Contains(m.Options, "ro") || !slices.Contains(m.Options, "bind") {
			t.Errorf("mount at %s = %+v, want a read-only bind of %s", dst, m, src)
		}
		// The source is a host path: it exists under the root.
		if _, err := os.Stat(filepath.Join(fx.root, m.Source)); err != nil {
			t.Errorf("mount source %s: %v", m.Source, err)
		}
	}
	for _, absent := range []string{"/libcuda.so.1", "/libnvidia-ml.so.1", "/libgone.so.1", "/README"} {
		if _, ok := mounts[ContainerLibDir+absent]; ok {
			t.Errorf("%s is mounted", absent)
		}
	}
	if _, ok := mounts[ContainerBinDir+"/nvidia-persistenced"]; ok {
		t.Error("nvidia-persistenced is mounted")
	}

	if s.Hooks == nil || len(s.Hooks.CreateContainer) != 1 {
		t.Fatalf("hooks = %+v, want one createContainer hook", s.Hooks)
	}
	h := s.Hooks.CreateContainer[0]
	wantArgs := []string{"nvidia-driverd", HookCommand, LdcacheHook, "--folder", ContainerLibDir}
	if h.Path != DefaultHookPath || !slices.Equal(h.Args, wantArgs) {
		t.Errorf("hook = %+v, want %s %v", h, DefaultHookPath, wantArgs)
	}
	if len(s.Process.Env) != 0 {
		t.Errorf("env = %v, want none", s.Process.Env)
	}
}

func TestSpecVersionIsMinimal(t *testing.T) {
	fx := newFixture(t)
	spec, err := Generate(Options{Host: fx.host(t), Tree: treeHost, HookPath: "/usr/local/bin/nvidia-driverd"})
	if err != nil {
		t.Fatal(err)
	}
	min, err := specs.MinimumRequiredVersion(spec)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Version != min {
		t.Errorf("version %s, minimum %s", spec.Version, min)
	}
	if h := spec.ContainerEdits.Hooks[0]; h.Path != "/usr/local/bin/nvidia-driverd" || h.HookName != "createContainer" {
		t.Errorf("hook %+v", h)
	}
}

func TestWriteIsIdempotentAndRemove(t *testing.T) {
	fx := newFixture(t)
	spec, err := Generate(Options{Host: fx.host(t), Tree: treeHost})
	if err != nil {
		t.Fatal(err)
	}
	p, changed, err := Write(fx.host(t).FS(), cdiDir, spec)
	if err != nil || !changed {
		t.Fatalf("first Write = %v, %v", changed, err)
	}
	first, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Generate(Options{Host: fx.host(t), Tree: "/opt/nvidia/current"})
	if err != nil {
		t.Fatal(err)
	}
	if _, changed, err = Write(fx.host(t).FS(), cdiDir, again); err != nil || changed {
		t.Fatalf("second Write = %v, %v, want unchanged", changed, err)
	}
	second, _ := os.ReadFile(p)
	if string(first) != string(second) {
		t.Error("the spec changed")
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("spec mode %v, %v", fi.Mode(), err)
	}
	if di, err := os.Stat(filepath.Dir(p)); err != nil || di.Mode().Perm() != 0o755 {
		t.Errorf("cdi dir mode %v, %v", di.Mode(), err)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Errorf("cdi dir holds %v", entries)
	}
	if got, err := cdilib.ReadSpec(p, 0); err != nil || got.GetVendor() != "nvidia.com" || got.GetClass() != "gpu" {
		t.Errorf("ReadSpec = %v, %v", got, err)
	}

	if rp, removed, err := Remove(fx.host(t).FS(), cdiDir); err != nil || !removed || rp != p {
		t.Fatalf("Remove = %s, %v, %v", rp, removed, err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spec still there: %v", err)
	}
	if _, removed, err := Remove(fx.host(t).FS(), cdiDir); err != nil || removed {
		t.Errorf("second Remove = %v, %v", removed, err)
	}
	if _, _, err := Write(fx.host(t).FS(), "var/run/cdi", spec); err == nil {
		t.Error("a relative CDI directory was accepted")
	}
}

func TestGenerateErrors(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, fx fixture)
		tree  string
		want  string
		is    error
	}{
		{name: "no tree", tree: "/opt/nvidia/" + driver + "/9999.0.0", want: "resolve tree /opt/nvidia/" + driver + "/9999.0.0"},
		{name: "relative tree", tree: "opt/nvidia/current", want: "must be absolute"},
		// The link means the host's /usr, which this host tree lacks;
		// this machine's /usr is never looked at.
		{name: "a tree linked outside is taken inside the root", tree: "/opt/nvidia/escape", want: "/usr: no such file or directory",
			setup: func(t *testing.T, fx fixture) { symlink(t, "/usr", filepath.Join(fx.root, "opt/nvidia/escape")) }},
		{name: "tree is a file", tree: treeHost + "/lib64/libcuda.so." + driver, want: "is not a directory"},
		{name: "no lib64", tree: treeHost, want: "the tree has no lib64/ directory",
			setup: func(t *testing.T, fx fixture) { must(t, os.RemoveAll(filepath.Join(fx.tree, "lib64"))) }},
		{name: "no library", tree: treeHost, want: treeHost + "/lib64 holds no library",
			setup: func(t *testing.T, fx fixture) {
				for _, l := range []string{"libcuda.so." + driver, "libnvidia-ml.so." + driver} {
					must(t, os.Remove(filepath.Join(fx.tree, "lib64", l)))
				}
			}},
		{name: "no GPU node", tree: treeHost, is: ErrNoGPU, want: "no GPU device node /dev/nvidia<N>",
			setup: func(t *testing.T, fx fixture) {
				must(t, os.Remove(filepath.Join(fx.root, "dev/nvidia0")))
				must(t, os.Remove(filepath.Join(fx.root, "dev/nvidia1")))
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fx := newFixture(t)
			if c.setup != nil {
				c.setup(t, fx)
			}
			_, err := Generate(Options{Host: fx.host(t), Tree: c.tree})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("error %v is not %v", err, c.is)
			}
		})
	}
	fx := newFixture(t)
	if _, err := Generate(Options{Host: fx.host(t), Tree: treeHost, HookPath: "bin/nvidia-driverd"}); err == nil || !strings.Contains(err.Error(), "hook path") {
		t.Errorf("relative hook path: %v", err)
	}
}

func TestEncodeValidatesWithTheLibrary(t *testing.T) {
	for name, s := range map[string]*specs.Spec{
		"no devices":      {Version: "0.3.0", Kind: Kind},
		"bad kind":        {Version: "0.3.0", Kind: "nvidia.com", Devices: []specs.Device{{Name: "0", ContainerEdits: specs.ContainerEdits{Env: []string{"A=1"}}}}},
		"bad device name": {Version: "0.3.0", Kind: Kind, Devices: []specs.Device{{Name: "-x", ContainerEdits: specs.ContainerEdits{Env: []string{"A=1"}}}}},
		"version too old": {Version: "0.3.0", Kind: Kind, Devices: []specs.Device{{Name: "0", ContainerEdits: specs.ContainerEdits{
			DeviceNodes: []*specs.DeviceNode{{Path: "/dev/nvidia0", HostPath: "/dev/nvidia0"}}}}}},
		"empty mount": {Version: "0.5.0", Kind: Kind, Devices: []specs.Device{{Name: "0", ContainerEdits: specs.ContainerEdits{
			Mounts: []*specs.Mount{{ContainerPath: "/x"}}}}}},
	} {
		if _, err := Encode(s); err == nil || !strings.Contains(err.Error(), "validate CDI spec") {
			t.Errorf("%s: Encode error %v", name, err)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A container image may have no /tmp: writing the spec must not need one,
// and an invalid spec must leave the old file and no temporary behind.
func TestWriteNeedsNoTempDir(t *testing.T) {
	fx := newFixture(t)
	t.Setenv("TMPDIR", filepath.Join(t.TempDir(), "missing"))
	spec, err := Generate(Options{Host: fx.host(t), Tree: treeHost})
	if err != nil {
		t.Fatal(err)
	}
	p, changed, err := Write(fx.host(t).FS(), cdiDir, spec)
	if err != nil || !changed {
		t.Fatalf("Write without a temp dir = %v, %v", changed, err)
	}
	good, _ := os.ReadFile(p)
	spec.Kind = "not a kind"
	if _, _, err := Write(fx.host(t).FS(), cdiDir, spec); err == nil || !strings.Contains(err.Error(), "validate CDI spec") {
		t.Fatalf("an invalid spec gave %v", err)
	}
	if now, _ := os.ReadFile(p); string(now) != string(good) {
		t.Error("an invalid spec replaced the good one")
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Errorf("left in %s: %v", filepath.Dir(p), entries)
	}
}
