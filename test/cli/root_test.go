package cli

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/test/needs"
)

// Paths of this machine that a command escaping --root through a host's
// symlinks would write.
var outsideRoot = []string{"/var/opt/nvidia", "/data/nvidia", "/kernels", "/elsewhere"}

// relink moves the host entry at rel to target (a host path) and leaves a
// symlink with text link at rel.
func relink(t *testing.T, root, rel, target, link string) {
	t.Helper()
	dst := filepath.Join(root, target)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(root, rel), dst); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(link, filepath.Join(root, rel)); err != nil {
		t.Fatal(err)
	}
}

// replace puts what make makes at the host path rel instead of the file
// there.
func replace(t *testing.T, root, rel string, make func(p string) error) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := make(p); err != nil {
		t.Fatal(err)
	}
}

func fifo(p string) error { return syscall.Mkfifo(p, 0o644) }

// TestRootConfinement lays out hosts whose paths are symlinks, FIFOs,
// devices and huge files, as ostree hosts, Debian's /var/run and hostile
// trees have them: every command either works, with the symlink taken
// inside --root, or fails naming the path, and nothing outside --root is
// read or written.
func TestRootConfinement(t *testing.T) {
	existed := map[string]bool{}
	for _, p := range outsideRoot {
		_, err := os.Lstat(p)
		existed[p] = err == nil
	}
	t.Cleanup(func() {
		for _, p := range outsideRoot {
			if _, err := os.Lstat(p); (err == nil) != existed[p] {
				t.Errorf("%s appeared or went away outside --root", p)
			}
		}
	})
	tree := driverTree(t)
	layout := "--source=oci-layout:/media/usb"

	cases := []struct {
		name  string
		host  string
		setup func(t *testing.T, root string)
		args  []string
		code  int
		want  string // in stdout or stderr
		check func(t *testing.T, root string)
	}{
		{
			name: "opt is an absolute link to /var/opt (ostree hosts): the store goes to <root>/var/opt/nvidia",
			host: "flatcar-updated",
			setup: func(t *testing.T, root string) {
				relink(t, root, "opt", "/var/opt", "/var/opt")
			},
			args: []string{layout, "install", "--no-activate"}, want: "current -> /opt/nvidia/550.54.14/3815.2.0",
			check: func(t *testing.T, root string) {
				if _, err := os.Stat(filepath.Join(root, "var/opt/nvidia/550.54.14/3815.2.0/lib64/libcuda.so.1")); err != nil {
					t.Error(err)
				}
			},
		},
		{
			name: "opt is a relative link climbing out of the root: it stops at the root",
			host: "flatcar-updated",
			setup: func(t *testing.T, root string) {
				relink(t, root, "opt", "/var/opt", "../../../../../../../../var/opt")
			},
			args: []string{layout, "install", "--no-activate"}, want: "current -> /opt/nvidia/550.54.14/3815.2.0",
			check: func(t *testing.T, root string) {
				if _, err := os.Lstat(filepath.Join(root, "var/opt/nvidia/current")); err != nil {
					t.Error(err)
				}
			},
		},
		{
			name: "opt/nvidia is an absolute link: the store follows it inside the root",
			host: "flatcar-updated",
			setup: func(t *testing.T, root string) {
				relink(t, root, "opt/nvidia", "/data/nvidia", "/data/nvidia")
			},
			args: []string{layout, "install", "--no-activate"}, want: "current -> /opt/nvidia/550.54.14/3815.2.0",
			check: func(t *testing.T, root string) {
				if _, err := os.Lstat(filepath.Join(root, "data/nvidia/previous")); err != nil {
					t.Error(err)
				}
			},
		},
		{
			name: "etc/os-release is an absolute link: read inside the root",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				replace(t, root, "etc/os-release", func(p string) error { return os.Symlink("/usr/lib/os-release", p) })
			},
			args: []string{"status"}, want: "Flatcar",
		},
		{
			name: "etc/os-release is a FIFO: an error naming it, not a hang",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				replace(t, root, "etc/os-release", fifo)
			},
			args: []string{"plan"}, code: 1, want: "etc/os-release: not a regular file (a FIFO)",
		},
		{
			name: "proc/sys/kernel/osrelease is a FIFO: an error naming it",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				replace(t, root, "proc/sys/kernel/osrelease", fifo)
			},
			args: []string{"status"}, code: 1, want: "proc/sys/kernel/osrelease: not a regular file (a FIFO)",
		},
		{
			name: "etc/os-release links to /dev/zero: the root's /dev/zero, refused",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				needs.Root(t, "make the root's /dev/zero")
				replace(t, root, "etc/os-release", func(p string) error { return os.Symlink("/dev/zero", p) })
				if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := syscall.Mknod(filepath.Join(root, "dev/zero"), syscall.S_IFCHR|0o666, 1<<8|5); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"status"}, code: 1, want: "etc/os-release: not a regular file (a character device)",
		},
		{
			name: "etc/os-release is a sparse 8 GiB file: refused by its size",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				replace(t, root, "etc/os-release", func(p string) error {
					f, err := os.Create(p)
					if err != nil {
						return err
					}
					defer f.Close()
					return f.Truncate(8 << 30)
				})
			},
			args: []string{"status"}, code: 1, want: "etc/os-release: file too large",
		},
		{
			name: "the config file is a FIFO: a usage error naming it, not a hang",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				replace(t, root, "etc/nvidia-driverd/config.yaml", fifo)
			},
			args: []string{"status"}, code: 2, want: "etc/nvidia-driverd/config.yaml: not a regular file (a FIFO)",
		},
		{
			name: "the state file links to /etc/shadow: the root's own file is read",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				shadow := `{"prefetch": {"driver": "550.54.14", "os_version": "9999.0.0", "tag": "t", "state": "failed",` +
					` "error": "recorded in the root's etc/shadow", "at": "2026-01-02T03:04:05Z", "attempts": 1}}`
				if err := os.WriteFile(filepath.Join(root, "etc/shadow"), []byte(shadow), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink("/etc/shadow", filepath.Join(root, "opt/nvidia/state.json")); err != nil {
					t.Fatal(err)
				}
			},
			args: []string{"status"}, want: "recorded in the root's etc/shadow",
		},
		{
			name: "lib/modules/<release> is an absolute link: the kernel's flags are still read",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				relink(t, root, "usr/lib/modules/6.1.77-flatcar", "/kernels/6.1.77-flatcar", "/kernels/6.1.77-flatcar")
			},
			args: []string{"status"}, want: `vermagic "6.1.77-flatcar SMP preempt mod_unload"`,
		},
		{
			name: "sys/module/nvidia is an absolute link: the loaded module is read inside the root",
			host: "flatcar-ready",
			setup: func(t *testing.T, root string) {
				relink(t, root, "sys/module/nvidia", "/elsewhere/nvidia", "/elsewhere/nvidia")
			},
			args: []string{"status"}, want: "nvidia 550.54.14",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := host(t, c.host)
			if err := os.MkdirAll(filepath.Join(root, "opt/nvidia"), 0o755); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(strings.Join(c.args, " "), layout) {
				must(t, run(t, nil, "--root", root, "--log-level", "warn", "publish", "--from", tree, "--os-version", "3815.2.0",
					"--kernel-release", "6.1.77-flatcar", "--oci-layout", filepath.Join(root, "media/usb"), "3815.2.0-550.54.14"), 0)
			}
			c.setup(t, root)
			start := time.Now()
			r := run(t, nil, append([]string{"--root", root}, c.args...)...)
			if took := time.Since(start); took > time.Minute {
				t.Errorf("took %v", took)
			}
			if r.code != c.code || !strings.Contains(r.stdout+r.stderr, c.want) {
				t.Fatalf("exit %d, want %d with %q\nstdout: %s\nstderr: %s", r.code, c.code, c.want, r.stdout, r.stderr)
			}
			if c.code != 0 && !strings.Contains(r.stderr, root) {
				t.Errorf("the error does not name the path under --root: %s", r.stderr)
			}
			if c.check != nil {
				c.check(t, root)
			}
		})
	}
}
