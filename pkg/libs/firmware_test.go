package libs

import (
	"os"
	"strings"
	"testing"
)

func TestFirmware(t *testing.T) {
	activate := func(t *testing.T, h *host, driver string) Result {
		t.Helper()
		r, err := Activate(h.mounter(), h.config(driver, ModeOverlay))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	t.Run("an empty path is set to the tree's firmware directory as a host path", func(t *testing.T) {
		h := newHost(t)
		r := activate(t, h, driver1)
		want := treeOf(driver1) + "/firmware"
		if r.Firmware != want || r.FirmwareSkipped != "" {
			t.Errorf("result %+v", r)
		}
		if got := readFile(t, h.path(FirmwareParam)); got != want {
			t.Errorf("parameter %q, want %q", got, want)
		}
	})

	t.Run("a path into the store moves to the new tree", func(t *testing.T) {
		h := newHost(t)
		h.write(FirmwareParam, treeOf(driver1)+"/firmware\n")
		r := activate(t, h, driver2)
		if want := treeOf(driver2) + "/firmware"; r.Firmware != want || readFile(t, h.path(FirmwareParam)) != want {
			t.Errorf("result %+v", r)
		}
	})

	t.Run("a path set by someone else is left and the reason given", func(t *testing.T) {
		h := newHost(t)
		h.write(FirmwareParam, "/var/lib/firmware\n")
		r := activate(t, h, driver1)
		if r.Firmware != "" || !strings.Contains(r.FirmwareSkipped, "/var/lib/firmware") {
			t.Errorf("result %+v", r)
		}
		if got := readFile(t, h.path(FirmwareParam)); got != "/var/lib/firmware\n" {
			t.Errorf("parameter changed to %q", got)
		}
	})

	t.Run("a path already right is not written", func(t *testing.T) {
		h := newHost(t)
		h.write(FirmwareParam, treeOf(driver1)+"/firmware\n")
		r := activate(t, h, driver1)
		if r.Firmware != "" || r.FirmwareSkipped != "" {
			t.Errorf("result %+v", r)
		}
		if got := readFile(t, h.path(FirmwareParam)); got != treeOf(driver1)+"/firmware\n" {
			t.Errorf("parameter rewritten to %q", got)
		}
	})

	t.Run("a missing parameter is skipped with the reason", func(t *testing.T) {
		h := newHost(t)
		if err := os.Remove(h.path(FirmwareParam)); err != nil {
			t.Fatal(err)
		}
		r := activate(t, h, driver1)
		if !strings.Contains(r.FirmwareSkipped, "no firmware_class path parameter") {
			t.Errorf("result %+v", r)
		}
	})

	t.Run("a tree without firmware is skipped with the reason", func(t *testing.T) {
		h := newHost(t)
		if err := os.RemoveAll(h.path(treeOf(driver1) + "/firmware")); err != nil {
			t.Fatal(err)
		}
		r := activate(t, h, driver1)
		if !strings.Contains(r.FirmwareSkipped, "no firmware directory") {
			t.Errorf("result %+v", r)
		}
		if got := readFile(t, h.path(FirmwareParam)); got != "" {
			t.Errorf("parameter set to %q", got)
		}
	})
}
