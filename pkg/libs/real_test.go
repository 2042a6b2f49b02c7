package libs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
	"github.com/nvidia-driverd/nvidia-driverd/test/needs"

	"golang.org/x/sys/unix"
)

// namespaceEnv carries the fixture directory from TestOverlayInMountNamespace
// to its child, TestOverlayInMountNamespaceChild.
const namespaceEnv = "NVIDIA_DRIVERD_LIBS_NAMESPACE_FIXTURE"

// needRoot skips the test when not run as root.
func needRoot(t *testing.T, why string) {
	t.Helper()
	needs.Root(t, why)
}

// buildRoot builds a host root under dir: /usr/lib64/libhostdummy.so.1,
// and for each driver a tree with real shared objects libcuda.so.<driver>
// and libnvidia-ml.so.<driver> (SONAMEs libcuda.so.1, libnvidia-ml.so.1,
// with their links, each carrying "driver <driver>"), bin/nvidia-smi and
// firmware/. It returns the root's real path.
func buildRoot(t *testing.T, dir string, drivers ...string) string {
	t.Helper()
	root := filepath.Join(dir, "root")
	buildLib(t, root+"/usr/lib64", "libhostdummy.so.1", "libhostdummy.so.1", "host")
	for _, d := range drivers {
		lib64 := root + treeOf(d) + "/lib64"
		buildLib(t, lib64, "libcuda.so.1", "libcuda.so."+d, "driver "+d)
		buildLib(t, lib64, "libnvidia-ml.so.1", "libnvidia-ml.so."+d, "driver "+d)
		writeFile(t, root+treeOf(d)+"/bin/nvidia-smi", "nvidia-smi "+d+"\n")
		writeFile(t, root+treeOf(d)+"/firmware/nvidia/"+d+"/gsp_ga10x.bin", "gsp "+d)
	}
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	return real
}

// cacheOf returns the linker cache that ldconfig argv -p prints, by
// SONAME; a SONAME listed twice keeps its first path.
func cacheOf(t *testing.T, argv ...string) map[string]string {
	t.Helper()
	out, err := run(append(argv, "-p"))
	if err != nil {
		t.Fatal(err)
	}
	paths := map[string]string{}
	for _, e := range parseCache(out) {
		if _, ok := paths[e.soname]; !ok {
			paths[e.soname] = e.path
		}
	}
	return paths
}

// fileStamp returns what changes when a file is rewritten or replaced.
func fileStamp(t *testing.T, p string) string {
	t.Helper()
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return "absent"
	}
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%v %d %d", fi.ModTime(), st.Ino, fi.Size())
}

func TestLdconfigModeWithRealLdconfig(t *testing.T) {
	needRoot(t, "let ldconfig -r chroot into a test root")
	needGCC(t)
	if _, err := exec.LookPath("ldconfig"); err != nil {
		t.Skip("skipping: no ldconfig")
	}
	root := buildRoot(t, t.TempDir(), driver1, driver2)
	writeFile(t, root+"/etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
	hostCache := fileStamp(t, "/etc/ld.so.cache")
	c := Config{FS: hostfixture.FS(t, root), Store: store, Tree: treeOf(driver1), Mode: ModeLdconfig}
	m := &fakeMounter{t: t}
	inRoot := []string{"ldconfig", "-r", root}

	t.Run("the drop-in makes the SONAMEs resolve into the tree as host paths", func(t *testing.T) {
		r, err := Activate(m, c)
		if err != nil {
			t.Fatal(err)
		}
		if r.DropIn != root+DropIn {
			t.Errorf("result %+v", r)
		}
		cache := cacheOf(t, inRoot...)
		for _, so := range DefaultWant() {
			if want := treeOf(driver1) + "/lib64/" + so; cache[so] != want {
				t.Errorf("%s => %q, want %q", so, cache[so], want)
			}
		}
	})

	t.Run("a switch rewrites the drop-in and the cache follows", func(t *testing.T) {
		c := c
		c.Tree = treeOf(driver2)
		if _, err := Activate(m, c); err != nil {
			t.Fatal(err)
		}
		if got := cacheOf(t, inRoot...)["libcuda.so.1"]; got != treeOf(driver2)+"/lib64/libcuda.so.1" {
			t.Errorf("libcuda.so.1 => %q", got)
		}
	})

	t.Run("a tree lacking a wanted library fails the check", func(t *testing.T) {
		c := c
		c.Want = []string{"libcuda.so.1", "libnvidia-encode.so.1"}
		_, err := Activate(m, c)
		if !errors.Is(err, ErrUnresolved) || !strings.Contains(err.Error(), "libnvidia-encode.so.1 is not in the cache") {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("deactivation removes the drop-in and the tree from the cache", func(t *testing.T) {
		r, err := Deactivate(m, Config{FS: hostfixture.FS(t, root), Store: store})
		if err != nil {
			t.Fatal(err)
		}
		if r.Removed != root+DropIn {
			t.Errorf("result %+v", r)
		}
		if got, ok := cacheOf(t, inRoot...)["libcuda.so.1"]; ok {
			t.Errorf("libcuda.so.1 still => %s", got)
		}
	})

	if m.calls != nil {
		t.Errorf("ldconfig mode mounted: %+v", m.calls)
	}
	if got := fileStamp(t, "/etc/ld.so.cache"); got != hostCache {
		t.Error("the host's /etc/ld.so.cache changed")
	}
}

// TestOverlayInMountNamespace runs TestOverlayInMountNamespaceChild in a
// private mount namespace, where it mounts real overlays; they vanish with
// the child.
func TestOverlayInMountNamespace(t *testing.T) {
	needRoot(t, "mount overlays")
	needGCC(t)
	for _, tool := range []string{"unshare", "ldconfig"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: no %s (util-linux, libc-bin)", tool)
		}
	}
	if out, err := exec.Command("unshare", "--mount", "--propagation", "private", "true").CombinedOutput(); err != nil {
		t.Skipf("skipping: cannot make a private mount namespace here: %v: %s", err, out)
	}
	fix := t.TempDir()
	root := buildRoot(t, fix, driver1, driver2)
	writeFile(t, fix+"/ld.so.conf", root+"/usr/lib64\n")

	cmd := exec.Command("unshare", "--mount", "--propagation", "private",
		os.Args[0], "-test.run=^TestOverlayInMountNamespaceChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), namespaceEnv+"="+fix)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child in a private mount namespace: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestOverlayInMountNamespaceChild") {
		t.Fatalf("child did not run its test:\n%s", out)
	}
	t.Logf("child:\n%s", out)
	mounts, err := readMountinfo(DefaultMountinfo)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{root + "/usr/lib64", root + "/opt/bin"} {
		if s := stackAt(mounts, p); s != nil {
			t.Errorf("a mount on %s leaked out of the child's namespace: %+v", p, s)
		}
	}
}

// TestOverlayInMountNamespaceChild is the body of
// TestOverlayInMountNamespace; it skips unless run by it.
func TestOverlayInMountNamespaceChild(t *testing.T) {
	fix := os.Getenv(namespaceEnv)
	if fix == "" {
		t.Skip("skipping: runs only inside TestOverlayInMountNamespace's mount namespace")
	}
	root, err := filepath.EvalSymlinks(fix + "/root")
	if err != nil {
		t.Fatal(err)
	}
	lib, bin := root+"/usr/lib64", root+"/opt/bin"
	ld := []string{"ldconfig", "-X", "-C", fix + "/ld.so.cache", "-f", fix + "/ld.so.conf"}
	config := func(driver string) Config {
		return Config{FS: hostfixture.FS(t, root), Store: store, Tree: treeOf(driver), Mode: ModeOverlay, Ldconfig: ld}
	}
	var m Syscalls

	r, err := Activate(m, config(driver1))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("activated %s: %+v", driver1, r)
	if !reflect.DeepEqual(r.Mounted, []string{lib, bin}) {
		t.Fatalf("result %+v", r)
	}
	checkOverlay(t, lib, root+treeOf(driver1)+"/lib64")
	checkOverlay(t, bin, root+treeOf(driver1)+"/bin")
	for _, p := range []string{lib + "/libcuda.so." + driver1, lib + "/libhostdummy.so.1"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("through the overlay: %v", err)
		}
	}
	if got := readFile(t, bin+"/nvidia-smi"); got != "nvidia-smi "+driver1+"\n" {
		t.Errorf("/opt/bin/nvidia-smi reads %q", got)
	}
	for _, p := range []string{lib + "/written", bin + "/written"} {
		if err := os.WriteFile(p, nil, 0o644); !errors.Is(err, syscall.EROFS) {
			t.Errorf("writing %s: %v, want EROFS", p, err)
		}
	}
	cache := cacheOf(t, ld...)
	for _, so := range append(DefaultWant(), "libhostdummy.so.1") {
		if cache[so] != lib+"/"+so {
			t.Errorf("%s => %q, want %q", so, cache[so], lib+"/"+so)
		}
	}

	r, err = Activate(m, config(driver1))
	if err != nil || !reflect.DeepEqual(r, Result{}) {
		t.Fatalf("second activation: %+v, %v; want nothing changed", r, err)
	}
	if n := len(mountsOn(t, lib)); n != 1 {
		t.Fatalf("%d mounts on %s after a second activation, want 1", n, lib)
	}

	held, err := os.Open(lib + "/libcuda.so.1")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	fi, err := held.Stat()
	if err != nil {
		t.Fatal(err)
	}
	mapped, err := unix.Mmap(int(held.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unix.Munmap(mapped) }()
	if err := unix.Unmount(lib, 0); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("plain unmount of the busy overlay: %v, want EBUSY", err)
	}

	r, err = Activate(m, config(driver2))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("switched to %s while %s was mapped: %+v", driver2, held.Name(), r)
	if !reflect.DeepEqual(r.Detached, []string{lib, bin}) || !reflect.DeepEqual(r.Mounted, []string{lib, bin}) {
		t.Fatalf("result %+v", r)
	}
	checkOverlay(t, lib, root+treeOf(driver2)+"/lib64")
	if got := readFile(t, lib+"/libcuda.so.1"); !strings.Contains(got, "driver "+driver2) {
		t.Error("a new open of libcuda.so.1 does not see the new tree")
	}
	if s := string(mapped); !strings.Contains(s, "driver "+driver1) || strings.Contains(s, "driver "+driver2) {
		t.Error("the mapping made before the switch does not show the old tree")
	}
	buf := make([]byte, fi.Size())
	if _, err := held.ReadAt(buf, 0); err != nil || !strings.Contains(string(buf), "driver "+driver1) {
		t.Errorf("the descriptor opened before the switch: %v, or it does not read the old tree", err)
	}
	if cache := cacheOf(t, ld...); cache["libcuda.so.1"] != lib+"/libcuda.so.1" {
		t.Errorf("after the switch libcuda.so.1 => %q", cache["libcuda.so.1"])
	}

	r, err = Deactivate(m, Config{FS: hostfixture.FS(t, root), Store: store, Ldconfig: ld})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("deactivated: %+v", r)
	if !reflect.DeepEqual(r.Detached, []string{lib, bin}) {
		t.Errorf("result %+v", r)
	}
	for _, p := range []string{lib, bin} {
		if s := mountsOn(t, p); s != nil {
			t.Errorf("mounts left on %s: %+v", p, s)
		}
	}
	if _, err := os.Stat(lib + "/libcuda.so.1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("libcuda.so.1 still in /usr/lib64: %v", err)
	}
	if _, err := os.Stat(lib + "/libhostdummy.so.1"); err != nil {
		t.Errorf("the host's library: %v", err)
	}
	if got, ok := cacheOf(t, ld...)["libcuda.so.1"]; ok {
		t.Errorf("libcuda.so.1 still in the cache => %s", got)
	}
	if !strings.Contains(string(mapped), "driver "+driver1) {
		t.Error("the old mapping broke")
	}
}

// mountsOn returns the mounts on point in this namespace, topmost first.
func mountsOn(t *testing.T, point string) []mount {
	t.Helper()
	mounts, err := readMountinfo(DefaultMountinfo)
	if err != nil {
		t.Fatal(err)
	}
	return stackAt(mounts, point)
}

// checkOverlay checks that exactly one mount is on point in this
// namespace: a read-only overlay with lower layers layer then point and
// no upper layer.
func checkOverlay(t *testing.T, point, layer string) {
	t.Helper()
	s := mountsOn(t, point)
	if len(s) != 1 || s[0].fstype != "overlay" || !reflect.DeepEqual(s[0].lower, []string{layer, point}) {
		t.Fatalf("mounts on %s: %+v, want one overlay of %s over it", point, s, layer)
	}
	data, err := os.ReadFile(DefaultMountinfo)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[0] != strconv.Itoa(s[0].id) {
			continue
		}
		if !strings.HasPrefix(f[5], "ro,") || strings.Contains(line, "upperdir=") || strings.Contains(line, "workdir=") {
			t.Errorf("overlay on %s is not a read-only lower-only one: %s", point, line)
		}
		return
	}
	t.Errorf("no mountinfo line for mount %d", s[0].id)
}
