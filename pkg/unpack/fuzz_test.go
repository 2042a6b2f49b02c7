package unpack_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// FuzzApply applies arbitrary bytes as two layers, in both modes, and
// checks that nothing outside the staging directory changes, whatever
// Apply returns. It must never panic.
func FuzzApply(f *testing.F) {
	f.Add(layerTar(f, fileEnt("a/b", "x", 0o644), symlinkEnt("a/l", "b"), hardlinkEnt("h", "a/b")), []byte{}, false)
	f.Add(layerTar(f, fileEnt("d/x", "x", 0o644)), layerTar(f, fileEnt("d/.wh..wh..opq", "", 0o644), fileEnt(".wh.d", "", 0o644)), false)
	f.Add(layerTar(f, symlinkEnt("s", "../outside")), layerTar(f, fileEnt("s/canary", "x", 0o644)), true)
	f.Add(layerTar(f, dirEnt("lib64/", 0o755), fileEnt("lib64/x", "x", 0o4755)), layerTar(f, dirEnt("lib64/", 0o755)), true)
	f.Fuzz(func(t *testing.T, l0, l1 []byte, disjoint bool) {
		fx := newFixture(t)
		before := snapshot(t, fx.parent, fx.staging)
		mode := unpack.Ordered
		if disjoint {
			mode = unpack.Disjoint
		}
		tree := unpack.NewTree(fx.root, unpack.Limits{MaxBytes: 1 << 20, MaxEntries: 1000})
		for i, l := range [][]byte{l0, l1} {
			if err := tree.Apply(t.Context(), i, bytes.NewReader(l), mode); err != nil {
				break
			}
		}
		for _, d := range diffSnapshots(before, snapshot(t, fx.parent, fx.staging)) {
			t.Errorf("outside the staging directory: %s", d)
		}
		checkFile(t, filepath.Join(fx.parent, "outside", "canary"), canaryText)
	})
}
