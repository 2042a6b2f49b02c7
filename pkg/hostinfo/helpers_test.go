package hostinfo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixture returns the path of the committed host tree test/fixtures/hosts/<name>.
func fixture(t testing.TB, name string) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "test", "fixtures", "hosts", name))
	if err != nil {
		t.Fatal(err)
	}
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

// The tests below read each fact with a Host of its own, opened on root.

func withHost[T any](root string, read func(*Host) (T, error)) (T, error) {
	h, err := Open(root)
	if err != nil {
		var zero T
		return zero, err
	}
	defer h.Close()
	return read(h)
}

func ReadOSRelease(root string) (OSRelease, error) { return withHost(root, (*Host).OSRelease) }
func KernelRelease(root string) (string, error)    { return withHost(root, (*Host).KernelRelease) }
func NvidiaGPUs(root string) ([]GPU, error)        { return withHost(root, (*Host).NvidiaGPUs) }
func NvidiaProcVersion(root string) (string, error) {
	return withHost(root, (*Host).NvidiaProcVersion)
}

func LoadedModules(root string, names []string) (map[string]Module, error) {
	return withHost(root, func(h *Host) (map[string]Module, error) { return h.LoadedModules(names) })
}

func LoadedModule(root, name string) (Module, bool, error) {
	var ok bool
	m, err := withHost(root, func(h *Host) (Module, error) {
		m, found, err := h.LoadedModule(name)
		ok = found
		return m, err
	})
	return m, ok, err
}

func InTreeModule(root, release string) (string, string, bool) {
	h, err := Open(root)
	if err != nil {
		return "", "", false
	}
	defer h.Close()
	return h.InTreeModule(release)
}
