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
	t.Run("an image recorded as failed is shown by status and can be forgotten", func(t *testing.T) {
		root := host(t, "flatcar-ready")
		state := `{"bad_digests": {"sha256:0123abcd": {"reason": "load module nvidia: no NVIDIA GPU the module can drive", "at": "2026-12-01T10:00:00Z"}}}`
		if err := os.WriteFile(filepath.Join(root, "opt/nvidia/state.json"), []byte(state), 0o644); err != nil {
			t.Fatal(err)
		}
		st := run(t, nil, "--root", root, "status")
		if !strings.Contains(st.stdout, "sha256:0123abcd at 2026-12-01T10:00:00Z: load module nvidia") || !strings.Contains(st.stdout, "nvidia-driverd forget DIGEST") {
			t.Errorf("status:\n%s", st.stdout)
		}
		if s := statusJSON(t, root); len(s.Failed) != 1 || s.Failed[0].Digest != "sha256:0123abcd" {
			t.Errorf("status --json failed_images %+v", s.Failed)
		}
		bad := run(t, nil, "--root", root, "forget", "sha256:ffff")
		if bad.code != 1 || !strings.Contains(bad.stderr, "sha256:ffff: not recorded as failed") || !strings.Contains(bad.stderr, "recorded: sha256:0123abcd") {
			t.Errorf("forget of an unknown digest: exit %d %s", bad.code, bad.stderr)
		}
		if u := run(t, nil, "--root", root, "forget"); u.code != 2 {
			t.Errorf("forget without digests or --all: exit %d", u.code)
		}
		r := run(t, nil, "--root", root, "forget", "sha256:0123abcd")
		must(t, r, 0)
		if !strings.Contains(r.stdout, "forgot sha256:0123abcd") {
			t.Errorf("stdout %q", r.stdout)
		}
		if s := statusJSON(t, root); len(s.Failed) != 0 {
			t.Errorf("still recorded: %+v", s.Failed)
		}
		r = run(t, nil, "--root", root, "forget", "--all")
		must(t, r, 0)
		if !strings.Contains(r.stdout, "no image is recorded as failed") {
			t.Errorf("stdout %q", r.stdout)
		}
	})
	for _, cmd := range [][]string{{"gc"}, {"rollback"}, {"activate"}, {"deactivate"}, {"forget", "--all"}} {
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
