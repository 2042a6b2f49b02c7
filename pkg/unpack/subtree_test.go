package unpack_test

import (
	"errors"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// A CoreOS-installer image: a distro base layer with absolute symlinks,
// and the driver tree under opt/nvidia/<driver>/<os>.
const legacyDir = "opt/nvidia/384.111/1576.5.0"

func TestSubtree(t *testing.T) {
	t.Parallel()
	t.Run("only the subdir becomes the tree, relative to it", func(t *testing.T) {
		f := newFixture(t)
		tree := unpack.NewSubtree(f.root, unpack.Limits{}, legacyDir)
		base := layerTar(t,
			dirEnt("usr/", 0o755),
			symlinkEnt("usr/lib64/libc.so.6", "/lib64/libc-2.26.so"), // absolute, but not ours
			fileEnt("etc/os-release", "ID=coreos\n", 0o644),
		)
		driver := layerTar(t,
			dirEnt("opt/", 0o755), dirEnt("opt/nvidia/", 0o755),
			dirEnt(legacyDir+"/", 0o755),
			dirEnt(legacyDir+"/lib64/", 0o755),
			fileEnt(legacyDir+"/lib64/libcuda.so.384.111", "cuda", 0o755),
			symlinkEnt(legacyDir+"/lib64/libcuda.so.1", "libcuda.so.384.111"),
			hardlinkEnt(legacyDir+"/lib64/libcuda.so", legacyDir+"/lib64/libcuda.so.384.111"),
		)
		if err := f.apply(tree, unpack.Ordered, base, driver); err != nil {
			t.Fatal(err)
		}
		wantTree(t, f.staging, map[string]string{
			"lib64":                    "dir 755",
			"lib64/libcuda.so.384.111": `file 755 "cuda"`,
			"lib64/libcuda.so":         `file 755 "cuda"`,
			"lib64/libcuda.so.1":       "-> libcuda.so.384.111",
		})
	})

	t.Run("a symlink climbing out of the subdir is refused", func(t *testing.T) {
		f := newFixture(t)
		tree := unpack.NewSubtree(f.root, unpack.Limits{}, legacyDir)
		err := f.apply(tree, unpack.Ordered, layerTar(t,
			symlinkEnt(legacyDir+"/lib64/libc.so.6", "../../../../../usr/lib64/libc.so.6")))
		if !errors.Is(err, unpack.ErrRefused) {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("a hard link to a file outside the subdir is refused", func(t *testing.T) {
		f := newFixture(t)
		tree := unpack.NewSubtree(f.root, unpack.Limits{}, legacyDir)
		err := f.apply(tree, unpack.Ordered, layerTar(t,
			fileEnt("etc/shadow", "secret", 0o600),
			hardlinkEnt(legacyDir+"/shadow", "etc/shadow")))
		if !errors.Is(err, unpack.ErrRefused) {
			t.Fatalf("got %v", err)
		}
		wantTree(t, f.staging, map[string]string{})
	})

	t.Run("entries outside the subdir still count against the limits", func(t *testing.T) {
		f := newFixture(t)
		tree := unpack.NewSubtree(f.root, unpack.Limits{MaxEntries: 2}, legacyDir)
		err := f.apply(tree, unpack.Ordered, layerTar(t,
			fileEnt("a", "", 0o644), fileEnt("b", "", 0o644), fileEnt("c", "", 0o644)))
		if !errors.Is(err, unpack.ErrRefused) {
			t.Fatalf("got %v", err)
		}
	})
}
