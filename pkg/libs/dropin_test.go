package libs

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestDropIn(t *testing.T) {
	ldconfigHost := func(t *testing.T, driver string) *host {
		h := newHost(t)
		h.setCache(treeOf(driver)+"/lib64", DefaultWant()...)
		return h
	}

	t.Run("names the tree's lib64 as a host path with mode 0644", func(t *testing.T) {
		h := ldconfigHost(t, driver1)
		m := h.mounter()
		r, err := Activate(m, h.config(driver1, ModeLdconfig))
		if err != nil {
			t.Fatal(err)
		}
		if m.calls != nil {
			t.Errorf("ldconfig mode mounted: %+v", m.calls)
		}
		if r.DropIn != h.path(DropIn) {
			t.Errorf("result %+v", r)
		}
		want := "# Written by nvidia-driverd for the active driver tree; rewritten on every switch.\n" + treeOf(driver1) + "/lib64\n"
		if got := readFile(t, h.path(DropIn)); got != want {
			t.Errorf("drop-in %q, want %q", got, want)
		}
		if fi, err := os.Stat(h.path(DropIn)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("drop-in mode: %v %v", fi, err)
		}
	})

	t.Run("leaves an unchanged drop-in untouched", func(t *testing.T) {
		h := ldconfigHost(t, driver1)
		if _, err := Activate(h.mounter(), h.config(driver1, ModeLdconfig)); err != nil {
			t.Fatal(err)
		}
		before, err := os.Stat(h.path(DropIn))
		if err != nil {
			t.Fatal(err)
		}
		r, err := Activate(h.mounter(), h.config(driver1, ModeLdconfig))
		if err != nil {
			t.Fatal(err)
		}
		after, err := os.Stat(h.path(DropIn))
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
			t.Error("drop-in was rewritten")
		}
		if !reflect.DeepEqual(r, Result{}) {
			t.Errorf("result %+v, want nothing changed", r)
		}
	})

	t.Run("replaces the drop-in by a rename so that no reader sees it half-written", func(t *testing.T) {
		h := ldconfigHost(t, driver1)
		if _, err := Activate(h.mounter(), h.config(driver1, ModeLdconfig)); err != nil {
			t.Fatal(err)
		}
		old, err := os.Open(h.path(DropIn))
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		h.setCache(treeOf(driver2)+"/lib64", DefaultWant()...)
		r, err := Activate(h.mounter(), h.config(driver2, ModeLdconfig))
		if err != nil {
			t.Fatal(err)
		}
		if r.DropIn != h.path(DropIn) {
			t.Errorf("result %+v", r)
		}
		held, err := io.ReadAll(old)
		if err != nil {
			t.Fatal(err)
		}
		if want := treeOf(driver1) + "/lib64\n"; !endsWith(string(held), want) {
			t.Errorf("the file open before reads %q, want the old content whole", held)
		}
		if got := readFile(t, h.path(DropIn)); !endsWith(got, treeOf(driver2)+"/lib64\n") {
			t.Errorf("drop-in %q", got)
		}
		entries, err := os.ReadDir(filepath.Dir(h.path(DropIn)))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 {
			t.Errorf("%d entries in ld.so.conf.d, want the drop-in alone", len(entries))
		}
	})

	t.Run("creates /etc/ld.so.conf.d when it is missing", func(t *testing.T) {
		h := ldconfigHost(t, driver1)
		if _, err := os.Stat(h.path("/etc")); !os.IsNotExist(err) {
			t.Fatalf("/etc exists: %v", err)
		}
		if _, err := Activate(h.mounter(), h.config(driver1, ModeLdconfig)); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(h.path("/etc/ld.so.conf.d")); err != nil || !fi.IsDir() {
			t.Errorf("ld.so.conf.d: %v %v", fi, err)
		}
	})
}

// endsWith reports whether s ends with suffix.
func endsWith(s, suffix string) bool {
	return len(s) >= len(suffix) && s[len(s)-len(suffix):] == suffix
}
