package modinfo_test

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/ulikunitz/xz"
)

// realModules returns the directory test/fixtures/real-module.sh filled
// with modules from a Debian kernel package, skipping the test when
// NVIDIA_DRIVERD_REAL_MODULES is unset (failing instead when
// NVIDIA_DRIVERD_REQUIRE_FIXTURES=1).
func realModules(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("NVIDIA_DRIVERD_REAL_MODULES")
	if dir == "" {
		if os.Getenv("NVIDIA_DRIVERD_REQUIRE_FIXTURES") == "1" {
			t.Fatal("NVIDIA_DRIVERD_REQUIRE_FIXTURES=1 but NVIDIA_DRIVERD_REAL_MODULES is unset (make test sets it)")
		}
		t.Skip("set NVIDIA_DRIVERD_REAL_MODULES (make test does)")
	}
	return dir
}

// realModule returns the path of the named module in dir, whichever
// compression the distribution shipped it with.
func realModule(t *testing.T, dir, name string) string {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(dir, name+".ko*"))
	if err != nil || len(matches) != 1 {
		t.Fatalf("want one %s.ko* in %s, found %q (%v)", name, dir, matches, err)
	}
	return matches[0]
}

func TestRealDistributionModule(t *testing.T) {
	t.Parallel()
	dir := realModules(t)
	release, err := os.ReadFile(filepath.Join(dir, "release"))
	if err != nil {
		t.Fatal(err)
	}
	wantRelease := strings.TrimSpace(string(release))

	t.Run("Debian's vfat module matches its kernel release, depends on fat and is signed", func(t *testing.T) {
		info := mustRead(t, realModule(t, dir, "vfat"))
		vm, err := modinfo.ParseVermagic(info.Vermagic)
		if err != nil {
			t.Fatal(err)
		}
		if vm.Release != wantRelease {
			t.Errorf("vermagic release = %q, want %q", vm.Release, wantRelease)
		}
		if err := modinfo.Check(vm, wantRelease, nil); err != nil {
			t.Errorf("Check against its own release: %v", err)
		}
		if info.Name != "vfat" {
			t.Errorf("Name = %q, want vfat", info.Name)
		}
		if !slices.Contains(info.Depends, "fat") {
			t.Errorf("Depends = %q, want it to contain fat", info.Depends)
		}
		sig := info.Signature
		if sig == nil || sig.IDType != "pkcs7" {
			t.Fatalf("Signature = %+v, want a pkcs7 one", sig)
		}
		if sig.Hash == "" || sig.Algorithm == "" {
			t.Errorf("Signature = %+v, want the algorithms read from the PKCS#7 blob", *sig)
		}
		t.Logf("vfat: vermagic %q, signature %+v, compression %q", info.Vermagic, *sig, info.Compression)
	})

	t.Run("Debian's vfat module compressed as the kernel does parses the same", func(t *testing.T) {
		path := realModule(t, dir, "vfat")
		plain := mustRead(t, path)
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		w, err := xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 1 << 20}.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		xzPath := filepath.Join(t.TempDir(), "vfat.ko.xz")
		writeFile(t, xzPath, b.Bytes())

		info := mustRead(t, xzPath)
		if info.Compression != "xz" {
			t.Errorf("Compression = %q, want xz", info.Compression)
		}
		info.Path, info.Compression = plain.Path, plain.Compression
		if !reflect.DeepEqual(info, plain) {
			t.Errorf("xz-compressed module reads as %+v, want %+v", info, plain)
		}
	})

	t.Run("Debian's fat module parses with its license and no dependencies", func(t *testing.T) {
		info := mustRead(t, realModule(t, dir, "fat"))
		if info.Name != "fat" || info.License != "GPL" || info.Depends != nil {
			t.Errorf("Name, License, Depends = %q, %q, %q; want fat, GPL, nil", info.Name, info.License, info.Depends)
		}
		if !strings.HasPrefix(info.Vermagic, wantRelease+" ") {
			t.Errorf("Vermagic = %q, want it to start with %q", info.Vermagic, wantRelease+" ")
		}
		if info.Signature == nil {
			t.Error("Signature = nil, want one")
		}
	})
}
