package unpack_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// driverTree is a layer shaped like a real driver image.
func driverTree(t *testing.T) []byte {
	return layerTar(t,
		dirEnt("./", 0o755),
		dirEnt("bin/", 0o755),
		fileEnt("bin/nvidia-smi", "smi binary", 0o755),
		hardlinkEnt("bin/nvidia-smi.hard", "bin/nvidia-smi"),
		dirEnt("etc/", 0o755),
		dirEnt("etc/modprobe.d/", 0o755),
		fileEnt("etc/modprobe.d/nvidia.conf", "options nvidia NVreg_EnableMSI=1\n", 0o644),
		dirEnt("firmware/", 0o755),
		dirEnt("firmware/nvidia/", 0o755),
		dirEnt("firmware/nvidia/550.54.14/", 0o555),
		fileEnt("firmware/nvidia/550.54.14/gsp_ga10x.bin", "gsp firmware", 0o444),
		dirEnt("lib/", 0o755),
		symlinkEnt("lib/firmware", "../firmware"),
		fileEnt("lib/modules/6.1.0-56-amd64/kernel/drivers/video/nvidia.ko", "nvidia module", 0o644),
		fileEnt("lib/modules/6.1.0-56-amd64/kernel/drivers/video/nvidia-uvm.ko", "uvm module", 0o644),
		dirEnt("lib64/", 0o755),
		symlinkEnt("lib64/libnvidia-ml.so.1", "libnvidia-ml.so.550.54.14"), // before its file
		fileEnt("lib64/libnvidia-ml.so.550.54.14", "nvml library", 0o755),
		symlinkEnt("lib64/libnvidia-ml.so", "libnvidia-ml.so.1"),
		fileEnt("lib64/libcuda.so.550.54.14", "cuda library", 0o755),
		symlinkEnt("lib64/libcuda.so.1", "./libcuda.so.550.54.14"),
		fileEnt("lib64/empty", "", 0o600),
	)
}

// driverTreeWant is what driverTree unpacks to.
func driverTreeWant() map[string]string {
	return map[string]string{
		"bin":                        "dir 755",
		"bin/nvidia-smi":             `file 755 "smi binary"`,
		"bin/nvidia-smi.hard":        `file 755 "smi binary"`,
		"etc":                        "dir 755",
		"etc/modprobe.d":             "dir 755",
		"etc/modprobe.d/nvidia.conf": `file 644 "options nvidia NVreg_EnableMSI=1\n"`,
		"firmware":                   "dir 755",
		"firmware/nvidia":            "dir 755",
		// 0o555 gains the owner's write bit, see ownerDirBits.
		"firmware/nvidia/550.54.14":               "dir 755",
		"firmware/nvidia/550.54.14/gsp_ga10x.bin": `file 444 "gsp firmware"`,
		"lib":                               "dir 755",
		"lib/firmware":                      "-> ../firmware",
		"lib/modules":                       "dir 755",
		"lib/modules/6.1.0-56-amd64":        "dir 755",
		"lib/modules/6.1.0-56-amd64/kernel": "dir 755",
		"lib/modules/6.1.0-56-amd64/kernel/drivers":                     "dir 755",
		"lib/modules/6.1.0-56-amd64/kernel/drivers/video":               "dir 755",
		"lib/modules/6.1.0-56-amd64/kernel/drivers/video/nvidia.ko":     `file 644 "nvidia module"`,
		"lib/modules/6.1.0-56-amd64/kernel/drivers/video/nvidia-uvm.ko": `file 644 "uvm module"`,
		"lib64":                           "dir 755",
		"lib64/libnvidia-ml.so.1":         "-> libnvidia-ml.so.550.54.14",
		"lib64/libnvidia-ml.so.550.54.14": `file 755 "nvml library"`,
		"lib64/libnvidia-ml.so":           "-> libnvidia-ml.so.1",
		"lib64/libcuda.so.550.54.14":      `file 755 "cuda library"`,
		"lib64/libcuda.so.1":              "-> ./libcuda.so.550.54.14",
		"lib64/empty":                     `file 600 ""`,
	}
}

func TestApply(t *testing.T) {
	t.Parallel()
	for _, mode := range []unpack.Mode{unpack.Ordered, unpack.Disjoint} {
		t.Run("a driver tree round-trips exactly in "+mode.String()+" mode", func(t *testing.T) {
			f := newFixture(t)
			rootBefore, err := os.Lstat(f.staging)
			if err != nil {
				t.Fatal(err)
			}
			tree := unpack.NewTree(f.root, unpack.Limits{})
			if err := tree.Apply(t.Context(), 0, bytes.NewReader(driverTree(t)), mode); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			wantTree(t, f.staging, driverTreeWant())

			a, _ := os.Stat(filepath.Join(f.staging, "bin/nvidia-smi"))
			b, _ := os.Stat(filepath.Join(f.staging, "bin/nvidia-smi.hard"))
			if !os.SameFile(a, b) {
				t.Error("bin/nvidia-smi.hard is not a hard link to bin/nvidia-smi")
			}
			if !a.ModTime().Equal(testMTime) {
				t.Errorf("bin/nvidia-smi mtime %v, want %v", a.ModTime(), testMTime)
			}
			if st := a.Sys().(*syscall.Stat_t); st.Uid != uint32(os.Getuid()) {
				t.Errorf("bin/nvidia-smi owned by uid %d, want ours, %d", st.Uid, os.Getuid())
			}
			rootAfter, _ := os.Lstat(f.staging)
			if rootAfter.Mode() != rootBefore.Mode() {
				t.Errorf("the ./ entry changed the staging directory's mode from %v to %v", rootBefore.Mode(), rootAfter.Mode())
			}
		})
	}

	t.Run("stats count entries, files, bytes and stripped paths", func(t *testing.T) {
		f := newFixture(t)
		tree := unpack.NewTree(f.root, unpack.Limits{})
		l0 := layerTar(t, dirEnt("bin/", 0o2755), fileEnt("bin/a", "12345", 0o4755), hardlinkEnt("bin/b", "bin/a"), symlinkEnt("bin/c", "a"))
		l1 := layerTar(t, fileEnt("bin/d", "678", 0o644), fileEnt(".wh.nothing", "", 0o644),
			ent{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "g", PAXRecords: map[string]string{"comment": "x"}}})
		if err := f.apply(tree, unpack.Ordered, l0, l1); err != nil {
			t.Fatal(err)
		}
		got := tree.Stats()
		want := unpack.Stats{Entries: 7, Files: 2, Bytes: 8, Stripped: []string{"bin", "bin/a"}}
		if got.Entries != want.Entries || got.Files != want.Files || got.Bytes != want.Bytes || !slices.Equal(got.Stripped, want.Stripped) {
			t.Errorf("Stats() = %+v, want %+v", got, want)
		}
		got.Stripped[0] = "changed"
		if tree.Stats().Stripped[0] != "bin" {
			t.Error("Stats().Stripped shares memory with the tree")
		}
	})

	t.Run("an empty stream is an empty layer and data after the archive's end is not read", func(t *testing.T) {
		f := newFixture(t)
		tree := unpack.NewTree(f.root, unpack.Limits{})
		if err := tree.Apply(t.Context(), 0, bytes.NewReader(nil), unpack.Ordered); err != nil {
			t.Errorf("empty stream: %v", err)
		}
		l := append(layerTar(t, fileEnt("x", "x", 0o644)), "trailing garbage"...)
		if err := tree.Apply(t.Context(), 1, bytes.NewReader(l), unpack.Ordered); err != nil {
			t.Errorf("trailing garbage: %v", err)
		}
		wantTree(t, f.staging, map[string]string{"x": `file 644 "x"`})
	})

	t.Run("an old-style TypeRegA entry is a regular file", func(t *testing.T) {
		f := newFixture(t)
		l := setTypeflag(t, layerTar(t, fileEnt("old", "v7 tar", 0o644)), 0) // the deprecated tar.TypeRegA
		if err := f.apply(unpack.NewTree(f.root, unpack.Limits{}), unpack.Ordered, l); err != nil {
			t.Fatal(err)
		}
		wantTree(t, f.staging, map[string]string{"old": `file 644 "v7 tar"`})
	})

	t.Run("cancellation stops between entries", func(t *testing.T) {
		f := newFixture(t)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		err := unpack.NewTree(f.root, unpack.Limits{}).Apply(ctx, 4, bytes.NewReader(driverTree(t)), unpack.Ordered)
		if !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "unpack layer 4: ") {
			t.Errorf("Apply = %v, want context.Canceled naming layer 4", err)
		}
	})

	t.Run("cancellation stops a file's copy", func(t *testing.T) {
		f := newFixture(t)
		ctx, cancel := context.WithCancel(t.Context())
		r := &cancelAfter{r: bytes.NewReader(layerTar(t, fileEnt("big", strings.Repeat("x", 3<<20), 0o644))), n: 1 << 20, cancel: cancel}
		err := unpack.NewTree(f.root, unpack.Limits{}).Apply(ctx, 0, r, unpack.Ordered)
		var ee *unpack.EntryError
		if !errors.Is(err, context.Canceled) || !errors.As(err, &ee) || ee.Entry != "big" {
			t.Errorf("Apply = %v, want context.Canceled naming entry big", err)
		}
	})

	t.Run("an unknown mode is an error", func(t *testing.T) {
		f := newFixture(t)
		err := unpack.NewTree(f.root, unpack.Limits{}).Apply(t.Context(), 0, bytes.NewReader(nil), unpack.Mode(7))
		if err == nil || !strings.Contains(err.Error(), "unknown mode Mode(7)") {
			t.Errorf("Apply = %v, want an unknown mode error", err)
		}
	})
}

// cancelAfter calls cancel once n bytes have been read.
type cancelAfter struct {
	r      *bytes.Reader
	n      int
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= n; c.n <= 0 {
		c.cancel()
	}
	return n, err
}

func TestOrdered(t *testing.T) {
	t.Parallel()
	// apply applies layers in Ordered mode to a fresh fixture and returns
	// its staging directory.
	apply := func(t *testing.T, layers ...[]byte) string {
		t.Helper()
		f := newFixture(t)
		if err := f.apply(unpack.NewTree(f.root, unpack.Limits{}), unpack.Ordered, layers...); err != nil {
			t.Fatalf("Apply: %v", err)
		}
		return f.staging
	}
	lower := func(t *testing.T) []byte {
		return layerTar(t,
			fileEnt("keep", "keep", 0o644),
			fileEnt("gone", "gone", 0o644),
			fileEnt("dir/a", "a", 0o644),
			fileEnt("dir/sub/b", "b", 0o644),
			symlinkEnt("dir/link", "a"),
		)
	}

	t.Run("a whiteout removes a lower file, and a lower directory with all below it", func(t *testing.T) {
		dir := apply(t, lower(t), layerTar(t, fileEnt(".wh.gone", "", 0o644), fileEnt(".wh.dir", "", 0o644), fileEnt(".wh.never-there", "", 0o644)))
		wantTree(t, dir, map[string]string{"keep": `file 644 "keep"`})
	})

	t.Run("a whiteout spares what its own layer wrote", func(t *testing.T) {
		dir := apply(t, lower(t), layerTar(t, fileEnt("dir/new", "new", 0o644), fileEnt("fresh", "fresh", 0o644), fileEnt(".wh.fresh", "", 0o644), fileEnt(".wh.dir", "", 0o644)))
		wantTree(t, dir, map[string]string{
			"keep": `file 644 "keep"`, "gone": `file 644 "gone"`, "fresh": `file 644 "fresh"`,
			"dir": "dir 755", "dir/new": `file 644 "new"`,
		})
	})

	t.Run("an opaque directory loses its lower contents and keeps its own layer's, before and after the marker", func(t *testing.T) {
		dir := apply(t, lower(t), layerTar(t,
			fileEnt("dir/sub/early", "early", 0o644),
			fileEnt("dir/.wh..wh..opq", "", 0o644),
			fileEnt("dir/.wh..wh..opq", "", 0o644), // twice: the second finds nothing to do
			fileEnt("dir/late", "late", 0o644),
		))
		wantTree(t, dir, map[string]string{
			"keep": `file 644 "keep"`, "gone": `file 644 "gone"`,
			"dir": "dir 755", "dir/sub": "dir 755", "dir/sub/early": `file 644 "early"`, "dir/late": `file 644 "late"`,
		})
	})

	t.Run("an opaque marker at the root clears every lower layer", func(t *testing.T) {
		dir := apply(t, lower(t), layerTar(t, fileEnt("new", "new", 0o644), fileEnt(".wh..wh..opq", "", 0o644)))
		wantTree(t, dir, map[string]string{"new": `file 644 "new"`})
	})

	t.Run("a whiteout of a directory in a later layer leaves entries of its own layer below it", func(t *testing.T) {
		dir := apply(t, lower(t), layerTar(t, fileEnt("dir/sub/c", "c", 0o644), fileEnt(".wh.dir", "", 0o644)),
			layerTar(t, fileEnt("dir/.wh.sub", "", 0o644)))
		wantTree(t, dir, map[string]string{"keep": `file 644 "keep"`, "gone": `file 644 "gone"`, "dir": "dir 755"})
	})

	t.Run("a later layer replaces files and symlinks, and old hard links keep the old content", func(t *testing.T) {
		dir := apply(t,
			layerTar(t, fileEnt("f", "old", 0o644), hardlinkEnt("h", "f"), symlinkEnt("s", "f"), fileEnt("d", "file", 0o644), symlinkEnt("s2", "f")),
			layerTar(t, fileEnt("f", "new", 0o600), fileEnt("s", "now a file", 0o644), dirEnt("d/", 0o750), fileEnt("d/x", "x", 0o644), symlinkEnt("s2", "h")),
		)
		wantTree(t, dir, map[string]string{
			"f": `file 600 "new"`, "h": `file 644 "old"`, "s": `file 644 "now a file"`,
			"d": "dir 750", "d/x": `file 644 "x"`, "s2": "-> h",
		})
	})

	t.Run("within a layer the last of duplicate entries wins", func(t *testing.T) {
		dir := apply(t, layerTar(t, fileEnt("x", "first", 0o644), fileEnt("x", "second", 0o755), symlinkEnt("y", "x"), symlinkEnt("y", "z")))
		wantTree(t, dir, map[string]string{"x": `file 755 "second"`, "y": "-> z"})
	})

	t.Run("a directory entry for an existing directory changes its mode", func(t *testing.T) {
		dir := apply(t, layerTar(t, fileEnt("d/x", "x", 0o644)), layerTar(t, dirEnt("d/", 0o700)))
		wantTree(t, dir, map[string]string{"d": "dir 700", "d/x": `file 644 "x"`})
	})
}

// TestDisjoint applies four disjoint layers concurrently, as the installer
// does with publish's images; run with -race.
func TestDisjoint(t *testing.T) {
	t.Parallel()
	const n = 4
	layer := func(i int) []byte {
		lib := fmt.Sprintf("lib64/libnv%d.so.550.54.14", i)
		return layerTar(t,
			dirEnt("lib64/", 0o755),
			fileEnt(lib, strings.Repeat(string(rune('a'+i)), 300<<10), 0o755),
			symlinkEnt(fmt.Sprintf("lib64/libnv%d.so.1", i), filepath.Base(lib)),
			hardlinkEnt(fmt.Sprintf("lib64/libnv%d.hard", i), lib),
			fileEnt(fmt.Sprintf("share/nvidia/%d/deep/file", i), "deep", 0o644),
			dirEnt("share/", 0o755),
		)
	}
	for round := range 10 {
		f := newFixture(t)
		tree := unpack.NewTree(f.root, unpack.Limits{})
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := range n {
			l := layer(i)
			wg.Go(func() {
				errs <- tree.Apply(t.Context(), i, bytes.NewReader(l), unpack.Disjoint)
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		want := map[string]string{"lib64": "dir 755", "share": "dir 755", "share/nvidia": "dir 755"}
		for i := range n {
			body := fmt.Sprintf("file 755 %q", strings.Repeat(string(rune('a'+i)), 300<<10))
			want[fmt.Sprintf("lib64/libnv%d.so.550.54.14", i)] = body
			want[fmt.Sprintf("lib64/libnv%d.hard", i)] = body
			want[fmt.Sprintf("lib64/libnv%d.so.1", i)] = fmt.Sprintf("-> libnv%d.so.550.54.14", i)
			want[fmt.Sprintf("share/nvidia/%d", i)] = "dir 755"
			want[fmt.Sprintf("share/nvidia/%d/deep", i)] = "dir 755"
			want[fmt.Sprintf("share/nvidia/%d/deep/file", i)] = `file 644 "deep"`
		}
		wantTree(t, f.staging, want)
		// Entries: six per layer, and the implied share, share/nvidia
		// (once) and share/nvidia/<i>, share/nvidia/<i>/deep.
		if s := tree.Stats(); s.Files != n*2 || s.Entries != n*6+2+n*2 || s.Bytes != n*(300<<10+4) {
			t.Errorf("round %d: Stats() = %+v", round, s)
		}
	}
}
