package libs

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
	"golang.org/x/sys/unix"
)

func TestActivateOverlay(t *testing.T) {
	t.Run("mounts read-only overlays with the tree on top and no upper dir", func(t *testing.T) {
		h := newHost(t)
		m := h.mounter()
		r, err := Activate(m, h.config(driver1, ModeOverlay))
		if err != nil {
			t.Fatal(err)
		}
		lib, bin := h.path("/usr/lib64"), h.path("/opt/bin")
		tree := h.path(treeOf(driver1))
		want := []call{
			{op: "mount", source: "overlay", target: lib, fstype: "overlay", flags: unix.MS_RDONLY, data: "lowerdir=" + tree + "/lib64:" + lib},
			{op: "mount", source: "overlay", target: bin, fstype: "overlay", flags: unix.MS_RDONLY, data: "lowerdir=" + tree + "/bin:" + bin},
		}
		if !reflect.DeepEqual(m.calls, want) {
			t.Fatalf("calls:\n got %+v\nwant %+v", m.calls, want)
		}
		for _, c := range m.calls {
			if strings.Contains(c.data, "upperdir") || strings.Contains(c.data, "workdir") {
				t.Errorf("mount data %q has a writable layer", c.data)
			}
		}
		if !reflect.DeepEqual(r.Mounted, []string{lib, bin}) || r.Detached != nil {
			t.Errorf("result %+v", r)
		}
		if runs := h.ldRuns(); len(runs) != 2 || strings.HasSuffix(runs[0], "-p") || !strings.HasSuffix(runs[1], "-p") {
			t.Errorf("ldconfig runs %q, want a run then a -p", runs)
		}
	})

	t.Run("creates /opt/bin with mode 0755 when it is missing", func(t *testing.T) {
		h := newHost(t)
		if _, err := os.Stat(h.path("/opt/bin")); !os.IsNotExist(err) {
			t.Fatalf("/opt/bin exists before: %v", err)
		}
		if _, err := Activate(h.mounter(), h.config(driver1, ModeOverlay)); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(h.path("/opt/bin"))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
			t.Fatalf("/opt/bin: %v %v", fi, err)
		}
	})

	t.Run("changes nothing when our overlays are already mounted with the same lowerdir", func(t *testing.T) {
		h := newHost(t)
		m := h.mounter()
		if _, err := Activate(m, h.config(driver1, ModeOverlay)); err != nil {
			t.Fatal(err)
		}
		m2 := h.mounter()
		r, err := Activate(m2, h.config(driver1, ModeOverlay))
		if err != nil {
			t.Fatal(err)
		}
		if m2.calls != nil || !reflect.DeepEqual(r, Result{}) {
			t.Fatalf("second run: calls %+v, result %+v", m2.calls, r)
		}
		if n := len(h.stack(h.path("/usr/lib64"))); n != 1 {
			t.Errorf("%d mounts on /usr/lib64, want 1", n)
		}
		if runs := h.ldRuns(); len(runs) != 4 {
			t.Errorf("ldconfig ran %d times over two activations, want 4 (it always runs)", len(runs))
		}
	})

	t.Run("detaches our overlay lazily before mounting another tree's", func(t *testing.T) {
		h := newHost(t)
		if _, err := Activate(h.mounter(), h.config(driver1, ModeOverlay)); err != nil {
			t.Fatal(err)
		}
		m := h.mounter()
		r, err := Activate(m, h.config(driver2, ModeOverlay))
		if err != nil {
			t.Fatal(err)
		}
		lib, bin := h.path("/usr/lib64"), h.path("/opt/bin")
		tree := h.path(treeOf(driver2))
		want := []call{
			{op: "unmount", target: lib, flags: unix.MNT_DETACH | unix.UMOUNT_NOFOLLOW},
			{op: "mount", source: "overlay", target: lib, fstype: "overlay", flags: unix.MS_RDONLY, data: "lowerdir=" + tree + "/lib64:" + lib},
			{op: "unmount", target: bin, flags: unix.MNT_DETACH | unix.UMOUNT_NOFOLLOW},
			{op: "mount", source: "overlay", target: bin, fstype: "overlay", flags: unix.MS_RDONLY, data: "lowerdir=" + tree + "/bin:" + bin},
		}
		if !reflect.DeepEqual(m.calls, want) {
			t.Fatalf("calls:\n got %+v\nwant %+v", m.calls, want)
		}
		if !reflect.DeepEqual(r.Detached, []string{lib, bin}) || !reflect.DeepEqual(r.Mounted, []string{lib, bin}) {
			t.Errorf("result %+v", r)
		}
		if s := h.stack(lib); len(s) != 1 || s[0].lower[0] != tree+"/lib64" {
			t.Errorf("mounts on /usr/lib64: %+v, want only the new overlay", s)
		}
	})

	t.Run("names the tree's real path when given the current link", func(t *testing.T) {
		h := newHost(t)
		m := h.mounter()
		c := h.config(driver1, ModeOverlay)
		c.Tree = store + "/current"
		if _, err := Activate(m, c); err != nil {
			t.Fatal(err)
		}
		if want := "lowerdir=" + h.path(treeOf(driver1)) + "/lib64:"; !strings.HasPrefix(m.calls[0].data, want) {
			t.Errorf("data %q, want prefix %q", m.calls[0].data, want)
		}
	})

	t.Run("mounts over a foreign overlay and never detaches it", func(t *testing.T) {
		h := newHost(t)
		bin := h.path("/opt/bin")
		writeFile(t, bin+"/tool", "")
		h.addMount(bin, "overlay", "overlay", "ro,lowerdir=/srv/tools:"+bin)
		m := h.mounter()
		if _, err := Activate(m, h.config(driver1, ModeOverlay)); err != nil {
			t.Fatal(err)
		}
		if _, err := Deactivate(m, h.config(driver1, ModeOverlay)); err != nil {
			t.Fatal(err)
		}
		unmounts := 0
		for _, c := range m.calls {
			if c.op == "unmount" {
				unmounts++
			}
		}
		if unmounts != 2 {
			t.Errorf("%d detaches, want 2 (ours only): %+v", unmounts, m.calls)
		}
		if s := h.stack(bin); len(s) != 1 || s[0].lower[0] != "/srv/tools" {
			t.Errorf("mounts on /opt/bin: %+v, want the foreign overlay alone", s)
		}
	})

	t.Run("refuses to detach our overlay when a foreign mount covers it", func(t *testing.T) {
		h := newHost(t)
		if _, err := Activate(h.mounter(), h.config(driver1, ModeOverlay)); err != nil {
			t.Fatal(err)
		}
		lib := h.path("/usr/lib64")
		h.addMount(lib, "tmpfs", "tmpfs", "rw")
		m := h.mounter()
		_, err := Activate(m, h.config(driver2, ModeOverlay))
		if err == nil || !strings.Contains(err.Error(), "not ours") {
			t.Fatalf("error %v, want one saying a mount not ours covers it", err)
		}
		if m.calls != nil {
			t.Errorf("calls %+v, want none", m.calls)
		}
	})

	t.Run("detaches overlays of ours stacked by an older run before mounting one", func(t *testing.T) {
		h := newHost(t)
		lib := h.path("/usr/lib64")
		data := "ro,lowerdir=" + h.path(treeOf(driver1)) + "/lib64:" + lib
		h.addMount(lib, "overlay", "overlay", data)
		h.addMount(lib, "overlay", "overlay", data)
		m := h.mounter()
		r, err := Activate(m, h.config(driver1, ModeOverlay))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(r.Detached, []string{lib, lib}) {
			t.Errorf("detached %q, want /usr/lib64 twice", r.Detached)
		}
		if n := len(h.stack(lib)); n != 1 {
			t.Errorf("%d mounts on /usr/lib64, want 1", n)
		}
	})

	t.Run("takes an overlay naming the store as a host path for ours", func(t *testing.T) {
		h := newHost(t)
		lib := h.path("/usr/lib64")
		h.addMount(lib, "overlay", "overlay", "ro,lowerdir="+treeOf(driver1)+"/lib64:/usr/lib64")
		r, err := Activate(h.mounter(), h.config(driver1, ModeOverlay))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(r.Detached, []string{lib}) {
			t.Errorf("detached %q, want the overlay mounted under another root", r.Detached)
		}
	})

	t.Run("a tree without bin gets no /opt/bin overlay and loses the old one", func(t *testing.T) {
		h := newHost(t)
		if _, err := Activate(h.mounter(), h.config(driver1, ModeOverlay)); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(h.path(treeOf(driver2) + "/bin")); err != nil {
			t.Fatal(err)
		}
		r, err := Activate(h.mounter(), h.config(driver2, ModeOverlay))
		if err != nil {
			t.Fatal(err)
		}
		lib, bin := h.path("/usr/lib64"), h.path("/opt/bin")
		if !reflect.DeepEqual(r.Detached, []string{lib, bin}) || !reflect.DeepEqual(r.Mounted, []string{lib}) {
			t.Errorf("result %+v", r)
		}
	})

	t.Run("refuses a tree outside the store", func(t *testing.T) {
		h := newHost(t)
		writeFile(t, h.path("/srv/tree/lib64/libcuda.so.1"), "")
		c := h.config(driver1, ModeOverlay)
		c.Tree = "/srv/tree"
		m := h.mounter()
		if _, err := Activate(m, c); err == nil || !strings.Contains(err.Error(), "not inside the store") {
			t.Fatalf("error %v", err)
		}
		if m.calls != nil {
			t.Errorf("calls %+v", m.calls)
		}
	})

	t.Run("refuses a path that mount options cannot carry", func(t *testing.T) {
		h := newHost(t)
		h.root += "/odd:root"
		writeFile(t, h.path(treeOf(driver1)+"/lib64/libcuda.so.1"), "")
		m := h.mounter()
		_, err := Activate(m, h.config(driver1, ModeOverlay))
		if err == nil || !strings.Contains(err.Error(), "mount options") {
			t.Fatalf("error %v", err)
		}
		if m.calls != nil {
			t.Errorf("calls %+v", m.calls)
		}
	})

	t.Run("refuses an unknown mode", func(t *testing.T) {
		h := newHost(t)
		if _, err := Activate(h.mounter(), h.config(driver1, "bind")); err == nil || !strings.Contains(err.Error(), "unknown mode") {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("reports a failed mount naming the mount point and wrapping the cause", func(t *testing.T) {
		h := newHost(t)
		m := h.mounter()
		m.failMount = syscall.EPERM
		r, err := Activate(m, h.config(driver1, ModeOverlay))
		if !errors.Is(err, syscall.EPERM) || !strings.Contains(err.Error(), h.path("/usr/lib64")) {
			t.Fatalf("error %v", err)
		}
		if r.Mounted != nil {
			t.Errorf("result %+v", r)
		}
	})
}

func TestModeChange(t *testing.T) {
	t.Run("ldconfig mode detaches our overlays and writes the drop-in", func(t *testing.T) {
		h := newHost(t)
		if _, err := Activate(h.mounter(), h.config(driver1, ModeOverlay)); err != nil {
			t.Fatal(err)
		}
		h.setCache(treeOf(driver1)+"/lib64", DefaultWant()...)
		r, err := Activate(h.mounter(), h.config(driver1, ModeLdconfig))
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Detached) != 2 || r.Mounted != nil || r.DropIn != h.path(DropIn) {
			t.Errorf("result %+v", r)
		}
		if n := len(h.stack(h.path("/usr/lib64"))); n != 0 {
			t.Errorf("%d mounts left on /usr/lib64", n)
		}
	})

	t.Run("overlay mode removes the drop-in", func(t *testing.T) {
		h := newHost(t)
		h.setCache(treeOf(driver1)+"/lib64", DefaultWant()...)
		if _, err := Activate(h.mounter(), h.config(driver1, ModeLdconfig)); err != nil {
			t.Fatal(err)
		}
		h.setCache("/usr/lib64", DefaultWant()...)
		r, err := Activate(h.mounter(), h.config(driver1, ModeOverlay))
		if err != nil {
			t.Fatal(err)
		}
		if r.Removed != h.path(DropIn) || len(r.Mounted) != 2 {
			t.Errorf("result %+v", r)
		}
		if _, err := os.Stat(h.path(DropIn)); !os.IsNotExist(err) {
			t.Errorf("drop-in still there: %v", err)
		}
	})
}

func TestDeactivate(t *testing.T) {
	t.Run("detaches our overlays and removes the drop-in and reruns ldconfig", func(t *testing.T) {
		h := newHost(t)
		if _, err := Activate(h.mounter(), h.config(driver1, ModeOverlay)); err != nil {
			t.Fatal(err)
		}
		h.write(DropIn, "left by ldconfig mode\n")
		m := h.mounter()
		r, err := Deactivate(m, Config{FS: hostfixture.FS(t, h.root), Store: store, Mountinfo: h.mountinfo, Ldconfig: h.ldconfig})
		if err != nil {
			t.Fatal(err)
		}
		lib, bin := h.path("/usr/lib64"), h.path("/opt/bin")
		want := Result{Detached: []string{lib, bin}, Removed: h.path(DropIn)}
		if !reflect.DeepEqual(r, want) {
			t.Errorf("result %+v, want %+v", r, want)
		}
		if len(h.stack(lib))+len(h.stack(bin)) != 0 {
			t.Error("overlays left")
		}
		if runs := h.ldRuns(); len(runs) != 3 || strings.HasSuffix(runs[2], "-p") {
			t.Errorf("ldconfig runs %q, want a plain run last", runs)
		}
	})

	t.Run("changes nothing but the cache when nothing is active", func(t *testing.T) {
		h := newHost(t)
		m := h.mounter()
		r, err := Deactivate(m, Config{FS: hostfixture.FS(t, h.root), Store: store, Mountinfo: h.mountinfo, Ldconfig: h.ldconfig})
		if err != nil {
			t.Fatal(err)
		}
		if m.calls != nil || !reflect.DeepEqual(r, Result{}) {
			t.Errorf("calls %+v, result %+v", m.calls, r)
		}
		if _, err := os.Stat(h.path("/opt/bin")); !os.IsNotExist(err) {
			t.Errorf("/opt/bin created: %v", err)
		}
	})
}
