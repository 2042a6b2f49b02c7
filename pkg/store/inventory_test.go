package store

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

const vermagic = "6.1.77-flatcar SMP preempt mod_unload "

// layTree builds a tree with nvidia and nvidia-uvm for kernel under root.
func layTree(t *testing.T, root, path, kernel string) {
	t.Helper()
	dir := filepath.Join(root, path, "lib/modules", kernel, "video")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	driver := filepath.Base(filepath.Dir(path))
	kofixture.Build(t, dir, kofixture.Module{Name: "nvidia", Fields: kofixture.Standard("nvidia", driver, vermagic)})
	kofixture.Build(t, dir, kofixture.Module{Name: "nvidia-uvm", Fields: kofixture.Standard("nvidia_uvm", driver, vermagic, "nvidia")})
}

func TestScan(t *testing.T) {
	t.Parallel()
	t.Run("a missing store is empty, not an error", func(t *testing.T) {
		inv, err := Scan(hostfixture.FS(t, t.TempDir()), "/opt/nvidia")
		if err != nil || len(inv.Trees) != 0 || inv.Current != "" {
			t.Fatalf("%+v, %v", inv, err)
		}
	})

	t.Run("trees, links, metadata and staging leftovers are found", func(t *testing.T) {
		root := t.TempDir()
		layTree(t, root, "/opt/nvidia/550.54.14/3815.2.0", "6.1.77-flatcar")
		layTree(t, root, "/opt/nvidia/550.54.14/3760.2.0", "6.1.73-flatcar")
		store := filepath.Join(root, "opt/nvidia")
		meta, _ := json.Marshal(Meta{Digest: "sha256:abc", Reference: "r.example.com/x:3815.2.0-550.54.14", KernelRelease: "6.1.77-flatcar"})
		if err := os.WriteFile(filepath.Join(store, "550.54.14/3815.2.0", MetaFile), meta, 0o644); err != nil {
			t.Fatal(err)
		}
		must(t, os.Symlink("550.54.14/3815.2.0", filepath.Join(store, CurrentLink)))
		must(t, os.Symlink("550.54.14/3760.2.0", filepath.Join(store, PreviousLink)))
		must(t, os.MkdirAll(filepath.Join(store, StagingDir, "550.54.14-3815.2.0-1"), 0o755))
		must(t, os.MkdirAll(filepath.Join(store, "550.54.14", ".hidden"), 0o755))

		inv, err := Scan(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil {
			t.Fatal(err)
		}
		if len(inv.Trees) != 2 || inv.Trees[0].Path != "/opt/nvidia/550.54.14/3760.2.0" || inv.Trees[1].OSVersion != "3815.2.0" {
			t.Fatalf("trees %+v", inv.Trees)
		}
		if inv.Current != "/opt/nvidia/550.54.14/3815.2.0" || inv.Previous != "/opt/nvidia/550.54.14/3760.2.0" {
			t.Fatalf("current %q previous %q", inv.Current, inv.Previous)
		}
		if len(inv.Staging) != 1 || inv.Staging[0] != "/opt/nvidia/.staging/550.54.14-3815.2.0-1" {
			t.Fatalf("staging %q", inv.Staging)
		}
		cur := inv.Tree(inv.Current)
		if cur.Meta == nil || cur.Meta.Digest != "sha256:abc" {
			t.Fatalf("meta %+v %v", cur.Meta, cur.MetaErr)
		}
		if len(cur.Modules) != 2 || cur.Modules[0].Name != "nvidia" || cur.Modules[1].Name != "nvidia_uvm" ||
			cur.Modules[1].Path != "/opt/nvidia/550.54.14/3815.2.0/lib/modules/6.1.77-flatcar/video/nvidia-uvm.ko" ||
			cur.Modules[1].Kernel != "6.1.77-flatcar" || cur.Modules[1].Info.Vermagic != vermagic {
			t.Fatalf("modules %+v", cur.Modules)
		}
	})

	t.Run("an absolute current link from the original installer resolves under root", func(t *testing.T) {
		root := t.TempDir()
		layTree(t, root, "/opt/nvidia/384.111/1576.5.0", "4.14.11-coreos")
		must(t, os.Symlink("/opt/nvidia/384.111/1576.5.0", filepath.Join(root, "opt/nvidia", CurrentLink)))
		inv, err := Scan(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil || inv.Current != "/opt/nvidia/384.111/1576.5.0" {
			t.Fatalf("%q, %v", inv.Current, err)
		}
	})

	t.Run("a dangling current link is a problem, not a tree", func(t *testing.T) {
		root := t.TempDir()
		must(t, os.MkdirAll(filepath.Join(root, "opt/nvidia"), 0o755))
		must(t, os.Symlink("550.54.14/gone", filepath.Join(root, "opt/nvidia", CurrentLink)))
		inv, err := Scan(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil || inv.Current != "" || len(inv.Problems) != 1 || !strings.Contains(inv.Problems[0], "not an installed tree") {
			t.Fatalf("%+v, %v", inv, err)
		}
	})

	t.Run("a current link escaping the store is not followed", func(t *testing.T) {
		root := t.TempDir()
		must(t, os.MkdirAll(filepath.Join(root, "opt/nvidia"), 0o755))
		must(t, os.Symlink("../../etc", filepath.Join(root, "opt/nvidia", CurrentLink)))
		inv, err := Scan(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil || inv.Current != "" || len(inv.Problems) != 1 {
			t.Fatalf("%+v, %v", inv, err)
		}
	})

	t.Run("unreadable modules and metadata are recorded in the tree", func(t *testing.T) {
		root := t.TempDir()
		layTree(t, root, "/opt/nvidia/550.54.14/3815.2.0", "6.1.77-flatcar")
		tree := filepath.Join(root, "opt/nvidia/550.54.14/3815.2.0")
		must(t, os.WriteFile(filepath.Join(tree, "lib/modules/6.1.77-flatcar/video/nvidia-drm.ko"), []byte("not elf"), 0o644))
		must(t, os.WriteFile(filepath.Join(tree, MetaFile), []byte("{"), 0o644))
		inv, err := Scan(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil {
			t.Fatal(err)
		}
		tr := inv.Trees[0]
		if tr.MetaErr == nil || tr.Meta != nil {
			t.Errorf("meta %+v %v", tr.Meta, tr.MetaErr)
		}
		var bad *Module
		for i := range tr.Modules {
			if tr.Modules[i].Name == "nvidia_drm" {
				bad = &tr.Modules[i]
			}
		}
		if bad == nil || bad.Err == nil || bad.Info != nil || !strings.Contains(bad.Err.Error(), "nvidia-drm.ko") {
			t.Fatalf("module %+v", bad)
		}
	})
}

func TestReadTree(t *testing.T) {
	t.Parallel()
	t.Run("a tree outside any store is read with its module versions", func(t *testing.T) {
		root := t.TempDir()
		layTree(t, root, "/src/550.54.14/x", "6.1.77-flatcar")
		tr := ReadTree(hostfixture.FS(t, root), "/src/550.54.14/x", "550.54.14", "3815.2.0")
		if tr.Path != "/src/550.54.14/x" || tr.OSVersion != "3815.2.0" || len(tr.Modules) != 2 {
			t.Fatalf("%+v", tr)
		}
		for name, want := range map[string]string{"nvidia": "550.54.14", "nvidia-uvm": "550.54.14", "nvidia_drm": ""} {
			if got := tr.ModuleVersion(name, "6.1.77-flatcar"); got != want {
				t.Errorf("ModuleVersion(%q) = %q, want %q", name, got, want)
			}
		}
		if got := tr.ModuleVersion("nvidia", "6.1.73-flatcar"); got != "" {
			t.Errorf("ModuleVersion for another kernel = %q", got)
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
