package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPapercuts holds the small things a new user trips over.
func TestPapercuts(t *testing.T) {
	t.Run("gc says when nothing was due", func(t *testing.T) {
		r := run(t, nil, "--root", host(t, "flatcar-ready"), "gc")
		must(t, r, 0)
		if !strings.Contains(r.stdout, "nothing to remove") {
			t.Errorf("stdout %q", r.stdout)
		}
	})
	for _, cmd := range [][]string{{"gc"}, {"rollback"}, {"activate"}, {"deactivate"}} {
		t.Run(cmd[0]+" on a host with nothing installed leaves no store behind", func(t *testing.T) {
			root := host(t, "flatcar-ready")
			if err := os.RemoveAll(filepath.Join(root, "opt/nvidia")); err != nil {
				t.Fatal(err)
			}
			r := run(t, nil, append([]string{"--root", root}, cmd...)...)
			if r.code != 1 || !strings.Contains(r.stderr, "nothing is installed yet") {
				t.Errorf("exit %d: %s", r.code, r.stderr)
			}
			if _, err := os.Lstat(filepath.Join(root, "opt/nvidia")); !os.IsNotExist(err) {
				t.Errorf("%s created the store: %v", cmd[0], err)
			}
		})
	}
	t.Run("a generic host whose tag template does not name the kernel is warned", func(t *testing.T) {
		r := run(t, nil, "--root", host(t, "debian-generic"), "--tag-template", "{{.OSVersion}}-{{.DriverVersion}}", "status")
		if !strings.Contains(r.stdout, "the OS version does not pin the kernel") {
			t.Errorf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("a misspelt environment variable is named, with the one meant", func(t *testing.T) {
		r := run(t, []string{"NVIDIA_DRIVERD_DRIVER_VERISON=550.54.14"}, "--root", host(t, "flatcar-ready"), "status")
		if !strings.Contains(r.stderr, "did you mean NVIDIA_DRIVERD_DRIVER_VERSION?") {
			t.Errorf("stderr %q", r.stderr)
		}
	})
	t.Run("help lists the settings once, typed and with defaults, not under every command", func(t *testing.T) {
		sub := run(t, nil, "status", "--help")
		if sub.code != 0 || strings.Contains(sub.stdout, "--tag-template") || !strings.Contains(sub.stdout, "--root") {
			t.Errorf("status --help:\n%s", sub.stdout)
		}
		root := run(t, nil, "--help")
		for _, want := range []string{"Settings (", "--keep int", "(default 2)", "--modules list", "--require-gpu true|false", "--fetch-timeout string"} {
			if !strings.Contains(root.stdout, want) {
				t.Errorf("--help lacks %q:\n%s", want, root.stdout)
			}
		}
	})
	t.Run("a repository with a scheme is refused at configuration time with the fix", func(t *testing.T) {
		r := run(t, nil, "--root", host(t, "flatcar-ready"), "--repository", "https://ghcr.io/example/nvidia-driver", "status")
		if r.code != 2 || !strings.Contains(r.stderr, "no scheme") {
			t.Errorf("exit %d: %s", r.code, r.stderr)
		}
	})
}
