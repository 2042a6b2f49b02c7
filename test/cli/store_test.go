package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStoreRecovery runs the commands over stores that someone, or a
// crash, left in a state that used to stop every command: each command
// works, says what it set aside, and the running tree survives.
func TestStoreRecovery(t *testing.T) {
	tree := driverTree(t)
	layout := "--source=oci-layout:/media/usb"
	publish := func(t *testing.T, root string) {
		t.Helper()
		must(t, run(t, nil, "--root", root, "--log-level", "warn", "publish", "--from", tree, "--os-version", "3815.2.0",
			"--kernel-release", "6.1.77-flatcar", "--oci-layout", filepath.Join(root, "media/usb"), "3815.2.0-550.54.14"), 0)
	}
	store := func(root string, p ...string) string {
		return filepath.Join(append([]string{root, "opt/nvidia"}, p...)...)
	}
	for _, c := range []struct {
		name  string
		host  string
		setup func(t *testing.T, root string)
		args  []string
		want  string // in stdout or stderr
		check func(t *testing.T, root string)
	}{
		{
			name: "a corrupt state file: status --ready still says ready, and names the problem",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				noErr(t, os.WriteFile(store(root, "state.json"), []byte("{"), 0o644))
			},
			args: []string{"status", "--ready"}, want: "the state file is corrupt",
		},
		{
			name: "a corrupt state file: install sets it aside and goes on",
			host: "flatcar-updated",
			setup: func(t *testing.T, root string) {
				publish(t, root)
				noErr(t, os.WriteFile(store(root, "state.json"), []byte("not json"), 0o644))
			},
			args: []string{layout, "install", "--no-activate"}, want: "set aside",
			check: func(t *testing.T, root string) {
				if m, _ := filepath.Glob(store(root, ".state.json.corrupt-*")); len(m) != 1 {
					t.Errorf("set aside: %v", m)
				}
			},
		},
		{
			name: "current is a plain directory: install sets it aside instead of downloading and failing",
			host: "flatcar-updated",
			setup: func(t *testing.T, root string) {
				publish(t, root)
				noErr(t, os.Remove(store(root, "current")))
				noErr(t, os.MkdirAll(store(root, "current", "lib64"), 0o755))
			},
			args: []string{layout, "install", "--no-activate"}, want: "current -> /opt/nvidia/550.54.14/3815.2.0",
			check: func(t *testing.T, root string) {
				if target, err := os.Readlink(store(root, "current")); err != nil || target != "550.54.14/3815.2.0" {
					t.Errorf("current -> %q, %v", target, err)
				}
			},
		},
		{
			name: "gc leaves a directory that is not the store's",
			host: "flatcar-prefetched",
			setup: func(t *testing.T, root string) {
				noErr(t, os.MkdirAll(store(root, "backups", "2023"), 0o755))
			},
			args: []string{"--keep", "1", "gc"}, want: "",
			check: func(t *testing.T, root string) {
				if _, err := os.Stat(store(root, "backups", "2023")); err != nil {
					t.Errorf("gc removed it: %v", err)
				}
			},
		},
		{
			name: "a store other software shares is refused with the fix",
			host: "flatcar-ready",
			args: []string{"--store", "/opt", "gc"}, want: "use a directory of its own",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := host(t, c.host)
			if c.setup != nil {
				c.setup(t, root)
			}
			r := run(t, nil, append([]string{"--root", root}, c.args...)...)
			if !strings.Contains(r.stdout+r.stderr, c.want) {
				t.Fatalf("exit %d, want %q\nstdout: %s\nstderr: %s", r.code, c.want, r.stdout, r.stderr)
			}
			if c.check != nil {
				c.check(t, root)
			}
			if r.code != 0 && !strings.Contains(c.name, "refused") {
				t.Errorf("exit %d\nstderr: %s", r.code, r.stderr)
			}
		})
	}
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
