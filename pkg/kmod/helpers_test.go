package kmod

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod/kmodtest"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

const (
	testRelease  = "6.1.0-56-amd64"
	testVermagic = testRelease + " SMP preempt mod_unload modversions "
	testVersion  = "550.54.14"
)

// testFlags returns the running kernel's vermagic flags in the fixtures.
func testFlags() []string { return []string{"SMP", "preempt", "mod_unload", "modversions"} }

// fixture is a host root and a driver tree in a temporary directory.
type fixture struct {
	t    *testing.T
	root string // host root
	host *hostinfo.Host
	tree string // <tmp>/tree/lib/modules/<release>
	req  Request
}

// newFixture returns an empty host (sys/module, dev, proc) and an empty
// driver tree.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	tmp := t.TempDir()
	f := &fixture{t: t, root: filepath.Join(tmp, "host"), tree: filepath.Join(tmp, "tree", "lib", "modules", testRelease)}
	for _, d := range []string{filepath.Join(f.root, "sys", "module"), filepath.Join(f.root, "dev"), filepath.Join(f.root, "proc"), filepath.Join(f.tree, "video")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	host, err := hostinfo.Open(f.root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	f.host = host
	f.req = Request{
		Host:        host,
		Release:     testRelease,
		Flags:       testFlags(),
		TreeModules: f.tree,
		Modules:     []string{"nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm"},
	}
	return f
}

// write writes content to the host file at rel, making its directories.
func (f *fixture) write(rel, content string) {
	f.t.Helper()
	writeFile(f.t, filepath.Join(f.root, rel), content)
}

// writeFile writes content to path, making its directories.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// treeModule builds the driver tree's module file name (dashes kept) with
// the given fields.
func (f *fixture) treeModule(file string, m kofixture.Module) string {
	f.t.Helper()
	m.Name = file
	return kofixture.Build(f.t, filepath.Join(f.tree, "video"), m)
}

// standardTree builds nvidia (needing ipmi_devintf), nvidia-modeset and
// nvidia-uvm (needing nvidia) and nvidia-drm (needing drm, drm_kms_helper,
// nvidia-modeset, video and i2c_core), all for the running kernel.
func (f *fixture) standardTree(sign bool) {
	f.t.Helper()
	for _, m := range []struct {
		file string
		deps []string
	}{
		{"nvidia", []string{"ipmi_devintf"}},
		{"nvidia-modeset", []string{"nvidia"}},
		{"nvidia-uvm", []string{"nvidia"}},
		{"nvidia-drm", []string{"drm", "drm_kms_helper", "nvidia-modeset", "video", "i2c_core"}},
	} {
		name := strings.ReplaceAll(m.file, "-", "_")
		f.treeModule(m.file, kofixture.Module{Fields: kofixture.Standard(name, testVersion, testVermagic, m.deps...), Sign: sign})
	}
}

// standardHost gives the host compressed ipmi modules and plain drm ones
// in lib/modules/<release>, with modules.dep and modules.builtin listing
// video; i2c_core is built in with parameters in sysfs.
func (f *fixture) standardHost() {
	f.t.Helper()
	dir := filepath.Join(f.root, "lib", "modules", testRelease)
	f.hostModules(dir)
}

// hostModules builds the host's in-tree modules under dir.
func (f *fixture) hostModules(dir string) {
	f.t.Helper()
	for _, m := range []struct{ rel, compress string }{
		{"kernel/drivers/char/ipmi/ipmi_msghandler", "xz"},
		{"kernel/drivers/char/ipmi/ipmi_devintf", "xz"},
		{"kernel/drivers/gpu/drm/drm", ""},
		{"kernel/drivers/gpu/drm/drm_kms_helper", ""},
	} {
		name := filepath.Base(m.rel)
		kofixture.Build(f.t, mkdir(f.t, filepath.Join(dir, filepath.Dir(m.rel))), kofixture.Module{
			Name: name, Fields: kofixture.Standard(name, "", testVermagic), Compress: m.compress,
		})
	}
	writeFile(f.t, filepath.Join(dir, "modules.dep"), strings.Join([]string{
		"kernel/drivers/gpu/drm/drm_kms_helper.ko: kernel/drivers/gpu/drm/drm.ko",
		"kernel/drivers/char/ipmi/ipmi_devintf.ko.xz: kernel/drivers/char/ipmi/ipmi_msghandler.ko.xz",
		"kernel/drivers/char/ipmi/ipmi_msghandler.ko.xz:",
		"kernel/drivers/gpu/drm/drm.ko:",
		"kernel/drivers/net/dummy.ko.xz:",
		"",
	}, "\n"))
	writeFile(f.t, filepath.Join(dir, "modules.builtin"), "kernel/drivers/acpi/video.ko\nkernel/fs/ext4/ext4.ko\n")
	f.builtin("i2c_core")
}

// mkdir makes dir and returns it.
func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// loaded makes sysfs show module name live in version with refcnt and
// holders.
func (f *fixture) loaded(name, version string, refcnt int, holders ...string) {
	f.t.Helper()
	markLoaded(f.t, f.root, name, "live", version)
	f.write(filepath.Join("sys/module", name, "refcnt"), fmt.Sprintf("%d\n", refcnt))
	mkdir(f.t, filepath.Join(f.root, "sys/module", name, "holders"))
	for _, h := range holders {
		if err := os.Symlink("../../"+h, filepath.Join(f.root, "sys/module", name, "holders", h)); err != nil {
			f.t.Fatal(err)
		}
	}
}

// markLoaded writes initstate and, unless empty, version for name in
// <root>/sys/module.
func markLoaded(t *testing.T, root, name, state, version string) {
	t.Helper()
	writeFile(t, filepath.Join(root, "sys/module", name, "initstate"), state+"\n")
	if version != "" {
		writeFile(t, filepath.Join(root, "sys/module", name, "version"), version+"\n")
	}
}

// builtin makes sysfs show module name as built in: a parameters
// directory, no initstate.
func (f *fixture) builtin(name string) {
	f.t.Helper()
	mkdir(f.t, filepath.Join(f.root, "sys/module", name, "parameters"))
}

// call is one finit_module call the fake saw.
type call = kmodtest.Call

// fakeKernel returns the fake module syscalls; with root set, what they
// load shows in <root>/sys/module, as with the real kernel.
func fakeKernel(root string, errs map[string]error) *kmodtest.Syscalls {
	return &kmodtest.Syscalls{Root: root, Errs: errs}
}

// deleted returns the names delete_module was called with.
func deleted(k *kmodtest.Syscalls) []string {
	names, _ := k.Deleted()
	return names
}

// deleteFlags returns the flags delete_module was called with.
func deleteFlags(k *kmodtest.Syscalls) []int {
	_, flags := k.Deleted()
	return flags
}

// stepNames returns the names of steps, in order.
func stepNames(steps []Step) []string {
	var names []string
	for _, s := range steps {
		names = append(names, s.Name)
	}
	return names
}

// stepByName returns the step named name, failing the test when absent.
func stepByName(t *testing.T, steps []Step, name string) Step {
	t.Helper()
	for _, s := range steps {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no step %s in %v", name, stepNames(steps))
	return Step{}
}
