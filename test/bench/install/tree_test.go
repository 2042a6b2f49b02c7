package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

func TestGenerateTree(t *testing.T) {
	const kernel = "6.1.77-flatcar"
	gen := func() string {
		dir := filepath.Join(t.TempDir(), "tree")
		err := generateTree(dir, kernel, 0.003)
		var missing *kofixture.MissingToolError
		if errors.As(err, &missing) {
			t.Skip(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		return dir
	}
	a, b := gen(), gen()
	ea, err := listTree(a)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := listTree(b)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("the same tree every time", func(t *testing.T) {
		if !slices.Equal(ea, eb) {
			t.Fatal("two generations list differently")
		}
		for _, rel := range []string{"lib64/libcuda.so." + driver, "firmware/nvidia/" + driver + "/gsp_ga10x.bin"} {
			da, _ := os.ReadFile(filepath.Join(a, rel))
			db, _ := os.ReadFile(filepath.Join(b, rel))
			if len(da) == 0 || !bytes.Equal(da, db) {
				t.Errorf("%s differs between generations", rel)
			}
		}
	})

	t.Run("shaped like a driver", func(t *testing.T) {
		f := factsOf(ea)
		if share := float64(f.parts["lib64"]) / float64(f.bytes); share < 0.7 || share > 0.85 {
			t.Errorf("lib64 holds %.0f %% of the bytes, want about 75 %%", 100*share)
		}
		for _, part := range []string{"lib/modules", "firmware", "bin", "etc"} {
			if f.parts[part] == 0 {
				t.Errorf("no %s", part)
			}
		}
		if err := sameTree(ea, b); err != nil {
			t.Error(err)
		}
		target, err := os.Readlink(filepath.Join(a, "lib64/libcuda.so.1"))
		if err != nil || target != "libcuda.so."+driver {
			t.Errorf("libcuda.so.1 -> %q, %v", target, err)
		}
	})

	t.Run("modules carry the kernel's vermagic and the driver version", func(t *testing.T) {
		for _, m := range modules {
			info, err := modinfo.ReadPlain(filepath.Join(a, "lib/modules", kernel, "video", m.file+".ko"))
			if err != nil {
				t.Fatal(err)
			}
			if info.Vermagic != kernel+" "+kernelFlags+" " || info.Version != driver {
				t.Errorf("%s: vermagic %q, version %q", m.file, info.Vermagic, info.Version)
			}
		}
	})
}
