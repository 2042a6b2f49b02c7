package hostinfo

import (
	"os"
	"path/filepath"
	"testing"
)

func touch(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInTreeModule(t *testing.T) {
	t.Parallel()
	t.Run("the first module in lexical order is found", func(t *testing.T) {
		root := t.TempDir()
		touch(t, filepath.Join(root, "lib/modules/6.1.0-56-amd64/kernel/fs/vfat.ko"))
		touch(t, filepath.Join(root, "lib/modules/6.1.0-56-amd64/kernel/fs/fat.ko.xz"))
		touch(t, filepath.Join(root, "lib/modules/6.1.0-56-amd64/kernel/fs/README"))
		host, fsPath, ok := InTreeModule(root, "6.1.0-56-amd64")
		if !ok || host != "/lib/modules/6.1.0-56-amd64/kernel/fs/fat.ko.xz" || fsPath != filepath.Join(root, host) {
			t.Fatalf("got %q %q %v", host, fsPath, ok)
		}
	})
	t.Run("Flatcar's /usr/lib/modules is found through the /lib link", func(t *testing.T) {
		root := t.TempDir()
		touch(t, filepath.Join(root, "usr/lib/modules/6.1.77-flatcar/kernel/drivers/a.ko"))
		if err := os.Symlink("/usr/lib", filepath.Join(root, "lib")); err != nil {
			t.Fatal(err)
		}
		host, fsPath, ok := InTreeModule(root, "6.1.77-flatcar")
		if !ok || host != "/lib/modules/6.1.77-flatcar/kernel/drivers/a.ko" {
			t.Fatalf("got %q %q %v", host, fsPath, ok)
		}
		if _, err := os.Stat(fsPath); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("only /usr/lib/modules exists", func(t *testing.T) {
		root := t.TempDir()
		touch(t, filepath.Join(root, "usr/lib/modules/6.1.77-flatcar/kernel/b.ko"))
		if host, _, ok := InTreeModule(root, "6.1.77-flatcar"); !ok || host != "/usr/lib/modules/6.1.77-flatcar/kernel/b.ko" {
			t.Fatalf("got %q %v", host, ok)
		}
	})
	t.Run("no modules for the release", func(t *testing.T) {
		root := t.TempDir()
		touch(t, filepath.Join(root, "lib/modules/6.1.0-55-amd64/kernel/a.ko"))
		if _, _, ok := InTreeModule(root, "6.1.0-56-amd64"); ok {
			t.Fatal("found a module of another kernel")
		}
	})
	t.Run("a release that is a path is refused", func(t *testing.T) {
		root := t.TempDir()
		touch(t, filepath.Join(root, "lib/modules/kernel/a.ko"))
		for _, r := range []string{"", "..", "../modules", "."} {
			if _, _, ok := InTreeModule(root, r); ok {
				t.Fatalf("release %q found something", r)
			}
		}
	})
}
