package hostinfo

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// fixture returns the path of the committed host tree test/fixtures/hosts/<name>.
func fixture(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join("..", "..", "test", "fixtures", "hosts", name)
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("fixture %s: %v", name, err)
	}
	return dir
}

// writeTree creates files under root: each key is a slash path; a value
// starting with "->" makes a symlink to the rest, a key ending in "/" a
// directory, anything else a file with that content.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if target, ok := strings.CutPrefix(content, "->"); ok {
			err = os.Symlink(target, p)
		} else {
			err = os.WriteFile(p, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestResolve(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"usr/lib/os-release": "ID=x\n",
		"etc/abs":            "->/usr/lib/os-release",
		"etc/rel":            "->../usr/lib/os-release",
		"etc/escape":         "->../../../../../usr/lib/os-release",
		"etc/dirlink":        "->/usr",
		"etc/loop1":          "->loop2",
		"etc/loop2":          "->/etc/loop1",
		"etc/dangling":       "->/nowhere",
	})
	h, err := openHost(root)
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()

	tests := []struct {
		name, path, want string
	}{
		{"a plain path is returned cleaned", "/usr/lib/./os-release", "usr/lib/os-release"},
		{"an absolute symlink is re-rooted", "/etc/abs", "usr/lib/os-release"},
		{"a relative symlink is followed", "/etc/rel", "usr/lib/os-release"},
		{"dot-dot stops at the root", "/etc/escape", "usr/lib/os-release"},
		{"a symlinked directory is followed", "/etc/dirlink/lib/os-release", "usr/lib/os-release"},
		{"dot-dot after a symlinked directory leaves its target", "/etc/dirlink/../etc/rel", "usr/lib/os-release"},
		{"the root itself is dot", "/", "."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h.resolve(tt.path)
			if err != nil {
				t.Fatalf("resolve(%q): %v", tt.path, err)
			}
			if got != tt.want {
				t.Errorf("resolve(%q) = %q, want %q", tt.path, got, tt.want)
			}
		})
	}

	t.Run("a symlink loop ends in ELOOP", func(t *testing.T) {
		if _, err := h.resolve("/etc/loop1"); !errors.Is(err, syscall.ELOOP) {
			t.Errorf("resolve: err = %v, want ELOOP", err)
		}
	})
	t.Run("a dangling symlink is not found", func(t *testing.T) {
		if _, err := h.resolve("/etc/dangling"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("resolve: err = %v, want not-exist", err)
		}
	})
	t.Run("read errors name the host path", func(t *testing.T) {
		_, err := h.readFile("/etc/dangling")
		want := filepath.Join(root, "etc/dangling") + ": "
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("readFile: err = %v, want prefix %q", err, want)
		}
	})
}
