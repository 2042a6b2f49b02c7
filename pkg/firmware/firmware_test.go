package firmware

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
)

const (
	store = "/opt/nvidia"
	tree1 = store + "/550.54.14/3815.2.0"
	tree2 = store + "/550.54.15/3815.2.0"
)

// host lays out a host with two trees, each with firmware, and an empty
// firmware_class path parameter, as sysfs has it.
func host(t *testing.T) *hostfs.Root {
	t.Helper()
	root := t.TempDir()
	for p, body := range map[string]string{
		tree1 + "/firmware/nvidia/550.54.14/gsp_ga10x.bin": "gsp",
		tree2 + "/firmware/nvidia/550.54.15/gsp_ga10x.bin": "gsp",
		Param: "",
	} {
		writeFile(t, root, p, body)
	}
	h, err := hostfs.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func writeFile(t *testing.T, root, p, body string) {
	t.Helper()
	full := filepath.Join(root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func param(t *testing.T, h *hostfs.Root) string {
	t.Helper()
	b, err := os.ReadFile(h.Join(Param))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPoint(t *testing.T) {
	t.Parallel()
	t.Run("an empty path is set to the tree's firmware directory as a host path", func(t *testing.T) {
		h := host(t)
		r, err := Point(h, store, tree1)
		if want := tree1 + "/firmware"; err != nil || r != (Result{Written: want}) || param(t, h) != want {
			t.Errorf("Point = %+v, %v; parameter %q", r, err, param(t, h))
		}
	})
	t.Run("a path into the store moves to the new tree", func(t *testing.T) {
		h := host(t)
		writeFile(t, h.Dir(), Param, tree1+"/firmware\n")
		r, err := Point(h, store, tree2)
		if want := tree2 + "/firmware"; err != nil || r.Written != want || param(t, h) != want {
			t.Errorf("Point = %+v, %v; parameter %q", r, err, param(t, h))
		}
	})
	t.Run("a path set by someone else is left and the reason given", func(t *testing.T) {
		h := host(t)
		writeFile(t, h.Dir(), Param, "/var/lib/firmware\n")
		r, err := Point(h, store, tree1)
		if err != nil || r.Written != "" || !strings.Contains(r.Skipped, "/var/lib/firmware") || param(t, h) != "/var/lib/firmware\n" {
			t.Errorf("Point = %+v, %v; parameter %q", r, err, param(t, h))
		}
	})
	t.Run("a path already right is not written", func(t *testing.T) {
		h := host(t)
		writeFile(t, h.Dir(), Param, tree1+"/firmware\n")
		if r, err := Point(h, store, tree1); err != nil || r != (Result{}) {
			t.Errorf("Point = %+v, %v", r, err)
		}
	})
	t.Run("a missing parameter is skipped with the reason", func(t *testing.T) {
		h := host(t)
		if err := os.Remove(h.Join(Param)); err != nil {
			t.Fatal(err)
		}
		if r, err := Point(h, store, tree1); err != nil || !strings.Contains(r.Skipped, "no firmware_class path parameter") {
			t.Errorf("Point = %+v, %v", r, err)
		}
	})
	t.Run("a tree without firmware is skipped with the reason", func(t *testing.T) {
		h := host(t)
		if err := os.RemoveAll(h.Join(tree1 + "/firmware")); err != nil {
			t.Fatal(err)
		}
		if r, err := Point(h, store, tree1); err != nil || !strings.Contains(r.Skipped, "no firmware directory") || param(t, h) != "" {
			t.Errorf("Point = %+v, %v; parameter %q", r, err, param(t, h))
		}
	})
	t.Run("a path with white space is refused", func(t *testing.T) {
		h := host(t)
		bad := store + "/550.54.14/with space"
		writeFile(t, h.Dir(), bad+"/firmware/x", "")
		if _, err := Point(h, store, bad); err == nil || !strings.Contains(err.Error(), "cannot be written as a path") {
			t.Errorf("err = %v", err)
		}
	})
}
