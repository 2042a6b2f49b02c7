package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

const storeDir = "/opt/nvidia"

// t0 is when the oldest test tree was installed.
var t0 = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

// treeFiles returns the files of a test tree holding the image with digest.
func treeFiles(digest string) map[string]string {
	return map[string]string{
		"bin/nvidia-smi":                    "nvidia-smi of " + digest,
		"lib64/libcuda.so.1":                "libcuda of " + digest,
		"firmware/nvidia/550.54.14/gsp.bin": "gsp of " + digest,
		"etc/modprobe.d/nvidia.conf":        "options nvidia of " + digest,
	}
}

// writeTree writes treeFiles(digest) into st through its os.Root, as an
// unpacker would, calling midway (when not nil) after the first file.
func writeTree(st *Staging, digest string, midway func()) error {
	r, err := st.Root()
	if err != nil {
		return err
	}
	files := treeFiles(digest)
	for i, name := range slices.Sorted(maps.Keys(files)) {
		if err = r.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			break
		}
		if err = r.WriteFile(name, []byte(files[name]), 0o644); err != nil {
			break
		}
		if i == 0 && midway != nil {
			midway()
		}
	}
	return errors.Join(err, r.Close())
}

// openStore opens the test store under root.
func openStore(t *testing.T, root string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(hostfixture.FS(t, root), storeDir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// installTree stages, writes and commits a tree holding the image with
// digest, installed at at, and returns its host path.
func installTree(t *testing.T, s *Store, driver, osVersion, digest string, at time.Time) string {
	t.Helper()
	st, err := s.Stage(driver + "-" + osVersion)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeTree(st, digest, nil); err != nil {
		t.Fatal(err)
	}
	tree, err := st.Commit(driver, osVersion, Meta{Digest: digest, InstalledAt: at})
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// wholeTree returns the digest the tree at host path tree records when
// the tree holds exactly the files of that image and its MetaFile, and an
// error saying what is wrong otherwise.
func wholeTree(root, tree string) (string, error) {
	data, err := os.ReadFile(filepath.Join(root, tree, MetaFile))
	if err != nil {
		return "", err
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return "", err
	}
	want := treeFiles(m.Digest)
	got := map[string]string{}
	base := filepath.Join(root, tree)
	err = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(base, p)
		if rel == MetaFile {
			return nil
		}
		b, err := os.ReadFile(p)
		got[rel] = string(b)
		return err
	})
	if err != nil {
		return "", err
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return "", fmt.Errorf("tree %s holds %v, want %v", tree, got, want)
	}
	return m.Digest, nil
}

// staged returns the names in the store's staging directory.
func staged(t *testing.T, root string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, storeDir, StagingDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func scan(t *testing.T, root string) Inventory {
	t.Helper()
	inv, err := Scan(hostfixture.FS(t, root), storeDir)
	if err != nil {
		t.Fatal(err)
	}
	return inv
}

func treePaths(inv Inventory) []string {
	var out []string
	for _, tr := range inv.Trees {
		out = append(out, tr.Path)
	}
	return out
}

func TestOpen(t *testing.T) {
	t.Parallel()
	t.Run("a missing store and its staging directory are created", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		if s.Dir() != storeDir {
			t.Errorf("Dir() = %q", s.Dir())
		}
		for p, mode := range map[string]fs.FileMode{storeDir: 0o755, storeDir + "/" + StagingDir: 0o700} {
			fi, err := os.Stat(filepath.Join(root, p))
			if err != nil || !fi.IsDir() || fi.Mode().Perm() != mode {
				t.Errorf("%s: %v, %v", p, fi, err)
			}
		}
		openStore(t, root) // and opening it again is fine
	})

	t.Run("a relative store path is refused", func(t *testing.T) {
		if _, err := Open(hostfixture.FS(t, t.TempDir()), "opt/nvidia"); err == nil || !strings.Contains(err.Error(), "not absolute") {
			t.Fatal(err)
		}
	})

	t.Run("a staging path that is not a directory is refused", func(t *testing.T) {
		root := t.TempDir()
		must(t, os.MkdirAll(filepath.Join(root, storeDir), 0o755))
		must(t, os.Symlink("/tmp", filepath.Join(root, storeDir, StagingDir)))
		if _, err := Open(hostfixture.FS(t, root), storeDir); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatal(err)
		}
	})
}

func TestStage(t *testing.T) {
	t.Parallel()
	t.Run("a staging directory is new, empty and named after what it stages", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		a, err := s.Stage("550.54.14-3815.2.0")
		must(t, err)
		b, err := s.Stage("550.54.14-3815.2.0")
		must(t, err)
		if a.Path() == b.Path() || !strings.HasPrefix(a.Path(), "/opt/nvidia/.staging/550.54.14-3815.2.0-") {
			t.Fatalf("paths %q %q", a.Path(), b.Path())
		}
		if a.FSPath() != filepath.Join(root, a.Path()) {
			t.Errorf("FSPath() = %q", a.FSPath())
		}
		fi, err := os.Stat(a.FSPath())
		if err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%v, %v", fi, err)
		}
		if entries, err := os.ReadDir(a.FSPath()); err != nil || len(entries) != 0 {
			t.Errorf("%v, %v", entries, err)
		}
	})

	t.Run("names that are not one plain path component are refused", func(t *testing.T) {
		s := openStore(t, t.TempDir())
		for _, name := range []string{"", "a/b", "..", ".", ".hidden", "../../etc"} {
			if st, err := s.Stage(name); err == nil {
				t.Errorf("Stage(%q) = %q", name, st.Path())
			}
		}
	})

	t.Run("the unpacker's root cannot write outside the staging directory", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		st, err := s.Stage("x")
		must(t, err)
		r, err := st.Root()
		must(t, err)
		if err := r.WriteFile("../escaped", []byte("x"), 0o644); err == nil {
			t.Error("wrote ../escaped")
		}
		must(t, r.Close())
		if _, err := os.Lstat(filepath.Join(root, storeDir, StagingDir, "escaped")); !errors.Is(err, fs.ErrNotExist) {
			t.Error(err)
		}
	})

	t.Run("a discarded staging directory is gone and discarding again is harmless", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		st, err := s.Stage("x")
		must(t, err)
		must(t, writeTree(st, "sha256:x", nil))
		must(t, st.Discard())
		must(t, st.Discard())
		if names := staged(t, root); len(names) != 0 {
			t.Fatal(names)
		}
		if _, err := st.Root(); err == nil {
			t.Error("opened a discarded staging")
		}
	})
}

func TestInstall(t *testing.T) {
	t.Parallel()
	t.Run("staged trees are committed, switched to and rolled back", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)

		st, err := s.Stage("550.54.14-3760.2.0")
		must(t, err)
		must(t, writeTree(st, "sha256:old", nil))
		kdir := filepath.Join(st.FSPath(), "lib/modules/6.1.73-flatcar/video")
		must(t, os.MkdirAll(kdir, 0o755))
		kofixture.Build(t, kdir, kofixture.Module{Name: "nvidia", Fields: kofixture.Standard("nvidia", "550.54.14", vermagic)})
		if staged := st.Tree("550.54.14", "3760.2.0"); staged.Path != st.Path() || staged.Driver != "550.54.14" ||
			len(staged.Modules) != 1 || staged.Modules[0].Info == nil || !strings.HasPrefix(staged.Modules[0].Path, st.Path()+"/") {
			t.Fatalf("staged tree %+v", staged)
		}
		oldTree, err := st.Commit("550.54.14", "3760.2.0", Meta{Digest: "sha256:old", InstalledAt: t0})
		must(t, err)
		if oldTree != "/opt/nvidia/550.54.14/3760.2.0" {
			t.Fatalf("Commit = %q", oldTree)
		}
		if changed, err := s.Switch(oldTree); err != nil || !changed {
			t.Fatalf("Switch = %v, %v", changed, err)
		}
		inv := scan(t, root)
		tr := inv.Tree(oldTree)
		if inv.Current != oldTree || inv.Previous != "" || tr == nil || len(inv.Staging) != 0 {
			t.Fatalf("%+v", inv)
		}
		if tr.Meta == nil || tr.Meta.Digest != "sha256:old" || !tr.Meta.InstalledAt.Equal(t0) {
			t.Errorf("meta %+v, %v", tr.Meta, tr.MetaErr)
		}
		if len(tr.Modules) != 1 || tr.Modules[0].Info == nil || tr.Modules[0].Info.Vermagic != vermagic {
			t.Errorf("modules %+v", tr.Modules)
		}

		newTree := installTree(t, s, "550.54.14", "3815.2.0", "sha256:new", t0.Add(time.Hour))
		if changed, err := s.Switch(newTree); err != nil || !changed {
			t.Fatalf("Switch = %v, %v", changed, err)
		}
		inv = scan(t, root)
		if inv.Current != newTree || inv.Previous != oldTree {
			t.Fatalf("current %q previous %q", inv.Current, inv.Previous)
		}
		for link, want := range map[string]string{CurrentLink: "550.54.14/3815.2.0", PreviousLink: "550.54.14/3760.2.0"} {
			if got, err := os.Readlink(filepath.Join(root, storeDir, link)); err != nil || got != want {
				t.Errorf("%s -> %q, %v; want the relative %q", link, got, err, want)
			}
		}

		from, to, err := s.Rollback()
		if err != nil || from != newTree || to != oldTree {
			t.Fatalf("Rollback = %q, %q, %v", from, to, err)
		}
		inv = scan(t, root)
		if inv.Current != oldTree || inv.Previous != newTree {
			t.Fatalf("after rollback current %q previous %q", inv.Current, inv.Previous)
		}
		if from, to, err := s.Rollback(); err != nil || from != oldTree || to != newTree {
			t.Fatalf("second Rollback = %q, %q, %v", from, to, err)
		}
		if inv := scan(t, root); inv.Current != newTree || inv.Previous != oldTree || len(inv.Problems) != 0 {
			t.Fatalf("%+v", inv)
		}
	})
}

func TestSwitch(t *testing.T) {
	t.Parallel()
	t.Run("switching to the tree current points at changes nothing", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		a := installTree(t, s, "550.54.14", "3760.2.0", "sha256:a", t0)
		b := installTree(t, s, "550.54.14", "3815.2.0", "sha256:b", t0)
		for _, tree := range []string{a, b} {
			_, err := s.Switch(tree)
			must(t, err)
		}
		changed, err := s.Switch(b + "/")
		if err != nil || changed {
			t.Fatalf("Switch = %v, %v", changed, err)
		}
		if inv := scan(t, root); inv.Current != b || inv.Previous != a {
			t.Fatalf("current %q previous %q", inv.Current, inv.Previous)
		}
	})

	t.Run("a path that is not an installed tree is refused", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		installTree(t, s, "550.54.14", "3760.2.0", "sha256:a", t0)
		st, err := s.Stage("x")
		must(t, err)
		must(t, os.WriteFile(filepath.Join(root, storeDir, "550.54.14", "file"), nil, 0o644))
		for _, p := range []string{
			"/opt/nvidia/550.54.14/missing",
			"/opt/nvidia/550.54.14",
			"/opt/nvidia/550.54.14/file",
			"/opt/nvidia/550.54.14/3760.2.0/bin",
			st.Path(),
			"/etc",
			"/opt/nvidia/../nvidia/550.54.14/..",
		} {
			if _, err := s.Switch(p); err == nil {
				t.Errorf("Switch(%q) succeeded", p)
			}
		}
		if _, err := os.Lstat(filepath.Join(root, storeDir, CurrentLink)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("current: %v", err)
		}
	})

	t.Run("a current link naming a removed tree does not become previous", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		a := installTree(t, s, "550.54.14", "3760.2.0", "sha256:a", t0)
		must(t, os.Symlink("550.54.14/gone", filepath.Join(root, storeDir, CurrentLink)))
		if changed, err := s.Switch(a); err != nil || !changed {
			t.Fatalf("Switch = %v, %v", changed, err)
		}
		if _, err := os.Lstat(filepath.Join(root, storeDir, PreviousLink)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("previous: %v", err)
		}
		if inv := scan(t, root); inv.Current != a {
			t.Fatalf("current %q", inv.Current)
		}
	})

	t.Run("an absolute current link from the original installer becomes a relative previous", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		a := installTree(t, s, "384.111", "1576.5.0", "sha256:a", t0)
		b := installTree(t, s, "550.54.14", "3815.2.0", "sha256:b", t0)
		must(t, os.Symlink(a, filepath.Join(root, storeDir, CurrentLink)))
		if _, err := s.Switch(a); err != nil {
			t.Fatal(err)
		}
		if changed, err := s.Switch(b); err != nil || !changed {
			t.Fatalf("Switch = %v, %v", changed, err)
		}
		if got, err := os.Readlink(filepath.Join(root, storeDir, PreviousLink)); err != nil || got != "384.111/1576.5.0" {
			t.Fatalf("previous -> %q, %v", got, err)
		}
	})
}

func TestRollback(t *testing.T) {
	t.Parallel()
	t.Run("without a previous link rollback fails with ErrNoPrevious", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		a := installTree(t, s, "550.54.14", "3760.2.0", "sha256:a", t0)
		_, err := s.Switch(a)
		must(t, err)
		if _, _, err := s.Rollback(); !errors.Is(err, ErrNoPrevious) {
			t.Fatal(err)
		}
	})

	t.Run("a previous link naming a removed tree fails with ErrNoPrevious and changes nothing", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		a := installTree(t, s, "550.54.14", "3760.2.0", "sha256:a", t0)
		_, err := s.Switch(a)
		must(t, err)
		must(t, os.Symlink("550.54.14/gone", filepath.Join(root, storeDir, PreviousLink)))
		if _, _, err := s.Rollback(); !errors.Is(err, ErrNoPrevious) || !strings.Contains(err.Error(), "gone") {
			t.Fatal(err)
		}
		if inv := scan(t, root); inv.Current != a {
			t.Fatalf("current %q", inv.Current)
		}
	})

	t.Run("without a current tree previous becomes current", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		a := installTree(t, s, "550.54.14", "3760.2.0", "sha256:a", t0)
		must(t, os.Symlink("550.54.14/3760.2.0", filepath.Join(root, storeDir, PreviousLink)))
		from, to, err := s.Rollback()
		if err != nil || from != "" || to != a {
			t.Fatalf("Rollback = %q, %q, %v", from, to, err)
		}
		if inv := scan(t, root); inv.Current != a || inv.Previous != "" || len(inv.Problems) != 0 {
			t.Fatalf("%+v", inv)
		}
	})
}

func TestCommit(t *testing.T) {
	t.Parallel()
	t.Run("a tree with the same digest is reused and the staged one discarded", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		tree := installTree(t, s, "550.54.14", "3815.2.0", "sha256:a", t0)
		before, err := os.Stat(filepath.Join(root, tree))
		must(t, err)

		st, err := s.Stage("550.54.14-3815.2.0")
		must(t, err)
		must(t, os.WriteFile(filepath.Join(st.FSPath(), "other"), []byte("x"), 0o644))
		got, err := st.Commit("550.54.14", "3815.2.0", Meta{Digest: "sha256:a", InstalledAt: t0.Add(time.Hour)})
		if err != nil || got != tree {
			t.Fatalf("Commit = %q, %v", got, err)
		}
		after, err := os.Stat(filepath.Join(root, tree))
		must(t, err)
		if !os.SameFile(before, after) {
			t.Error("the tree was replaced")
		}
		if d, err := wholeTree(root, tree); err != nil || d != "sha256:a" {
			t.Errorf("%q, %v", d, err)
		}
		if names := staged(t, root); len(names) != 0 {
			t.Errorf("staging holds %q", names)
		}
	})

	t.Run("a tree with another digest for the current tree's name lands beside it, current untouched", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		tree := installTree(t, s, "550.54.14", "3815.2.0", "sha256:v0", t0)
		_, err := s.Switch(tree)
		must(t, err)

		// Watch the tree through `current` while other images for its
		// name are committed again and again.
		stop := make(chan struct{})
		watched := make(chan error, 1)
		go func() {
			meta := filepath.Join(root, storeDir, CurrentLink, MetaFile)
			for {
				select {
				case <-stop:
					watched <- nil
					return
				default:
				}
				if _, err := os.Stat(meta); err != nil {
					watched <- err
					return
				}
			}
		}()
		beside := tree + "-" + strings.Repeat("ab", 6)
		last := ""
		for i := 1; i <= 20; i++ {
			last = fmt.Sprintf("sha256:%s%02d", strings.Repeat("ab", 6), i)
			if got := installTree(t, s, "550.54.14", "3815.2.0", last, t0); got != beside {
				t.Fatalf("Commit = %q, want %q", got, beside)
			}
		}
		close(stop)
		if err := <-watched; err != nil {
			t.Fatalf("the current tree was missing: %v", err)
		}

		inv := scan(t, root)
		if len(inv.Trees) != 2 || inv.Current != tree || len(inv.Staging) != 0 {
			t.Fatalf("%+v", inv)
		}
		if d, err := wholeTree(root, tree); err != nil || d != "sha256:v0" {
			t.Fatalf("current holds %q, %v", d, err)
		}
		if d, err := wholeTree(root, beside); err != nil || d != last {
			t.Fatalf("%s holds %q, %v", beside, d, err)
		}
	})

	t.Run("driver and OS versions that are not one path component are refused", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		st, err := s.Stage("x")
		must(t, err)
		for _, c := range [][2]string{
			{"", "3815.2.0"}, {"550.54.14", ""},
			{".", "3815.2.0"}, {"..", "3815.2.0"}, {"550.54.14", ".."},
			{"550/54", "3815.2.0"}, {"550.54.14", "../../etc"},
			{".staging", "x"}, {"550.54.14", ".hidden"}, {"550.54.14", "a\x00b"},
		} {
			if p, err := st.Commit(c[0], c[1], Meta{Digest: "sha256:x"}); err == nil {
				t.Errorf("Commit(%q, %q) = %q", c[0], c[1], p)
			}
		}
		if _, err := os.Stat(st.FSPath()); err != nil {
			t.Fatalf("the staging was lost: %v", err)
		}
		if inv := scan(t, root); len(inv.Trees) != 0 {
			t.Fatalf("trees %+v", inv.Trees)
		}
	})

	t.Run("a staging is committed once", func(t *testing.T) {
		s := openStore(t, t.TempDir())
		st, err := s.Stage("x")
		must(t, err)
		_, err = st.Commit("550.54.14", "a", Meta{Digest: "sha256:x"})
		must(t, err)
		if _, err := st.Commit("550.54.14", "b", Meta{Digest: "sha256:x"}); err == nil {
			t.Fatal("committed twice")
		}
		must(t, st.Discard()) // harmless after a commit
	})

	t.Run("something other than a directory at the tree path is refused", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		must(t, os.MkdirAll(filepath.Join(root, storeDir, "550.54.14"), 0o755))
		must(t, os.Symlink("/etc", filepath.Join(root, storeDir, "550.54.14/3815.2.0")))
		st, err := s.Stage("x")
		must(t, err)
		if _, err := st.Commit("550.54.14", "3815.2.0", Meta{Digest: "sha256:x"}); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatal(err)
		}
	})
}

func TestFindDigest(t *testing.T) {
	t.Parallel()
	t.Run("the tree recording a digest is found, and an unknown digest is not", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		a := installTree(t, s, "550.54.14", "3760.2.0", "sha256:a", t0)
		b := installTree(t, s, "535.0.0", "3815.2.0", "sha256:b", t0)
		must(t, os.MkdirAll(filepath.Join(root, storeDir, "535.0.0/no-meta"), 0o755))
		for digest, want := range map[string]string{"sha256:a": a, "sha256:b": b, "sha256:c": "", "": ""} {
			if got, err := s.FindDigest(digest); err != nil || got != want {
				t.Errorf("FindDigest(%q) = %q, %v; want %q", digest, got, err, want)
			}
		}
	})
}

func TestGC(t *testing.T) {
	t.Parallel()
	t.Run("the newest trees are kept and current and previous are never removed", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		cur := installTree(t, s, "550.54.14", "3602.2.0", "sha256:cur", t0)
		prev := installTree(t, s, "550.54.14", "3760.2.0", "sha256:prev", t0.Add(1*time.Hour))
		older := installTree(t, s, "550.54.14", "3815.2.0", "sha256:older", t0.Add(2*time.Hour))
		newest := installTree(t, s, "555.42.02", "3815.2.0", "sha256:newest", t0.Add(5*time.Hour))
		oldest := installTree(t, s, "470.239.06", "3602.2.0", "sha256:oldest", t0.Add(-time.Hour))
		// A directory without metadata is not the store's: never
		// removed, and not counted among those kept.
		noMeta := "/opt/nvidia/555.42.02/3760.2.0"
		must(t, os.MkdirAll(filepath.Join(root, noMeta, "bin"), 0o755))
		must(t, os.Chtimes(filepath.Join(root, noMeta), t0.Add(4*time.Hour), t0.Add(4*time.Hour)))
		for _, tree := range []string{prev, cur} {
			_, err := s.Switch(tree)
			must(t, err)
		}

		removed, err := s.GC(2)
		must(t, err)
		slices.Sort(removed)
		if want := []string{oldest}; !slices.Equal(removed, want) {
			t.Fatalf("removed %q, want %q", removed, want)
		}
		inv := scan(t, root)
		if got, want := treePaths(inv), []string{cur, prev, older, noMeta, newest}; !slices.Equal(got, want) {
			t.Fatalf("trees %q, want %q", got, want)
		}
		if inv.Current != cur || inv.Previous != prev || len(inv.Staging) != 0 {
			t.Fatalf("%+v", inv)
		}
		if _, err := os.Lstat(filepath.Join(root, storeDir, "470.239.06")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("the emptied driver directory is left: %v", err)
		}

		removed, err = s.GC(1)
		if err != nil || !slices.Equal(removed, []string{older}) {
			t.Fatalf("GC(1) = %q, %v", removed, err)
		}
		if _, err := os.Stat(filepath.Join(root, noMeta, "bin")); err != nil {
			t.Errorf("a directory that is not the store's was removed: %v", err)
		}
		if removed, err := s.GC(1); err != nil || len(removed) != 0 {
			t.Fatalf("GC(1) again = %q, %v", removed, err)
		}
	})

	t.Run("keeping fewer than one tree is refused", func(t *testing.T) {
		s := openStore(t, t.TempDir())
		if _, err := s.GC(0); err == nil {
			t.Fatal("GC(0) succeeded")
		}
	})
}

func TestClean(t *testing.T) {
	t.Parallel()
	t.Run("leftovers in staging and temporary links are removed, and nothing else", func(t *testing.T) {
		root := t.TempDir()
		s := openStore(t, root)
		tree := installTree(t, s, "550.54.14", "3815.2.0", "sha256:a", t0)
		_, err := s.Switch(tree)
		must(t, err)
		l, err := s.Lock(t.Context(), false)
		must(t, err)
		st, err := s.Stage("550.54.14-3760.2.0")
		must(t, err)
		must(t, writeTree(st, "sha256:b", nil))
		stray := filepath.Join(root, storeDir, StagingDir, "stray-file")
		must(t, os.WriteFile(stray, nil, 0o644))
		tmpLink := filepath.Join(root, storeDir, CurrentLink+linkTempInfix+"0123")
		must(t, os.Symlink("550.54.14/3815.2.0", tmpLink))
		unrelated := filepath.Join(root, storeDir, "current.tmp-but-a-file")
		must(t, os.WriteFile(unrelated, nil, 0o644))

		removed, err := s.Clean()
		must(t, err)
		want := []string{st.Path(), "/opt/nvidia/.staging/stray-file", "/opt/nvidia/current.tmp-0123"}
		slices.Sort(want)
		slices.Sort(removed)
		if !slices.Equal(removed, want) {
			t.Fatalf("removed %q, want %q", removed, want)
		}
		if names := staged(t, root); len(names) != 0 {
			t.Fatalf("staging holds %q", names)
		}
		for _, p := range []string{unrelated, filepath.Join(root, storeDir, lockFile), filepath.Join(root, storeDir, CurrentLink)} {
			if _, err := os.Lstat(p); err != nil {
				t.Errorf("removed %s: %v", p, err)
			}
		}
		if inv := scan(t, root); inv.Current != tree {
			t.Fatalf("current %q", inv.Current)
		}
		if removed, err := s.Clean(); err != nil || len(removed) != 0 {
			t.Fatalf("Clean again = %q, %v", removed, err)
		}
		must(t, l.Unlock())
	})
}

func TestState(t *testing.T) {
	t.Parallel()
	t.Run("a bad digest is remembered across opens", func(t *testing.T) {
		root := t.TempDir()
		s, err := Open(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil {
			t.Fatal(err)
		}
		if st, err := ReadState(hostfixture.FS(t, root), "/opt/nvidia"); err != nil || len(st.BadDigests) != 0 {
			t.Fatalf("%+v, %v", st, err)
		}
		if err := s.MarkBad("sha256:abc", "nvidia: probe failed"); err != nil {
			t.Fatal(err)
		}
		if err := s.MarkBad("sha256:def", "ENOEXEC"); err != nil {
			t.Fatal(err)
		}
		st, err := ReadState(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil || st.Reasons()["sha256:abc"] != "nvidia: probe failed" || len(st.BadDigests) != 2 {
			t.Fatalf("%+v, %v", st, err)
		}
	})
	t.Run("a corrupt state file reads as empty, saying why", func(t *testing.T) {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "opt/nvidia"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "opt/nvidia", StateFile), []byte("{"), 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := ReadState(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil || !strings.Contains(st.Corrupt, StateFile) || st.BadDigests != nil {
			t.Fatalf("got %+v, %v", st, err)
		}
	})
}
