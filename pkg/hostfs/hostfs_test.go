package hostfs_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/test/needs"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
)

// tree lays out files under a new root: a value starting with "->" makes a
// symlink, "fifo" a named pipe, a key ending in "/" a directory, anything
// else a file with that content.
func tree(t *testing.T, files map[string]string) *hostfs.Root {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
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
		switch target, link := strings.CutPrefix(content, "->"); {
		case link:
			err = os.Symlink(target, p)
		case content == "fifo":
			err = syscall.Mkfifo(p, 0o644)
		default:
			err = os.WriteFile(p, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	r, err := hostfs.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestPathStaysInsideTheRoot(t *testing.T) {
	t.Parallel()
	r := tree(t, map[string]string{
		"var/opt/":             "",
		"opt":                  "->/var/opt",
		"run/":                 "",
		"var/run":              "->../run",
		"etc/climb":            "->../../../../../../etc",
		"usr/lib/os-release":   "ID=x\n",
		"etc/os-release":       "->../usr/lib/os-release",
		"etc/loop1":            "->loop2",
		"etc/loop2":            "->/etc/loop1",
		"var/opt/nvidia/state": "->/etc/shadow",
		"top":                  "->/",
		"via-missing":          "->/nonexistent/../top/etc/passwd",
	})
	cases := []struct {
		name, path, want string
		follow           bool
	}{
		{"an absolute link is re-rooted", "/opt/nvidia/current", "var/opt/nvidia/current", true},
		{"a relative link to a sibling", "/var/run/cdi/spec.yaml", "run/cdi/spec.yaml", true},
		{"a link climbing out stops at the root", "/etc/climb/passwd", "etc/passwd", true},
		{"the last link is followed", "/etc/os-release", "usr/lib/os-release", true},
		{"Lpath keeps the last link", "/etc/os-release", "etc/os-release", false},
		{"a link inside a linked directory", "/opt/nvidia/state", "etc/shadow", true},
		{"dot-dot at the top stays", "/../../x", "x", true},
		{"missing parts are kept", "/opt/a/../b/c", "var/opt/b/c", true},
		{"a link after a missing part and .. is followed inside", "/nonexistent/../top/etc/passwd", "etc/passwd", true},
		{"a link whose target does that too", "/via-missing", "etc/passwd", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got string
			var err error
			if c.follow {
				got, err = r.Path(c.path)
			} else {
				got, err = r.Lpath(c.path)
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(r.Dir(), c.want); got != want {
				t.Errorf("Path(%s) = %s, want %s", c.path, got, want)
			}
		})
	}
	if _, err := r.Path("/etc/loop1/x"); !errors.Is(err, syscall.ELOOP) || !strings.Contains(err.Error(), "/etc/loop1/x") {
		t.Errorf("loop: %v, want ELOOP naming the path", err)
	}
}

func TestReadFileIsBoundedAndNeverBlocks(t *testing.T) {
	t.Parallel()
	r := tree(t, map[string]string{
		"etc/os-release":            "ID=flatcar\n",
		"etc/fifo":                  "fifo",
		"proc/sys/kernel/osrelease": "->/etc/fifo",
		"etc/dir/":                  "",
	})
	if b, err := r.ReadFile("/etc/os-release", 64); err != nil || string(b) != "ID=flatcar\n" {
		t.Errorf("ReadFile = %q, %v", b, err)
	}
	// A FIFO nobody writes to would block open(2) and read(2) forever.
	_, err := r.ReadFile("/proc/sys/kernel/osrelease", 64)
	if !errors.Is(err, hostfs.ErrNotRegular) || !strings.Contains(err.Error(), "proc/sys/kernel/osrelease") {
		t.Errorf("FIFO: %v, want ErrNotRegular naming the path", err)
	}
	if _, err := r.ReadFile("/etc/dir", 64); !errors.Is(err, hostfs.ErrNotRegular) {
		t.Errorf("directory: %v, want ErrNotRegular", err)
	}
	if _, err := r.ReadFile("/etc/os-release", 4); !errors.Is(err, hostfs.ErrTooLarge) {
		t.Errorf("over the limit: %v, want ErrTooLarge", err)
	}
	if _, err := r.ReadFile("/etc/missing", 4); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v, want ErrNotExist", err)
	}

	// A sparse file of 8 GiB is refused by its size, not read.
	big := r.Join("/etc/big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := r.ReadFile("/etc/big", 1<<20); !errors.Is(err, hostfs.ErrTooLarge) {
		t.Errorf("sparse 8 GiB file: %v, want ErrTooLarge", err)
	}
	if _, err := hostfs.ReadRegular(big, 1<<20); !errors.Is(err, hostfs.ErrTooLarge) {
		t.Errorf("ReadRegular of a sparse 8 GiB file: %v, want ErrTooLarge", err)
	}
}

func TestDeviceNodesAreNotRead(t *testing.T) {
	t.Parallel()
	needs.Root(t, "make a /dev/zero node")
	r := tree(t, map[string]string{"etc/os-release": "->/dev/zero", "dev/": ""})
	// The link is re-rooted: <root>/dev/zero, here a real /dev/zero node.
	if err := syscall.Mknod(r.Join("/dev/zero"), syscall.S_IFCHR|0o666, 1<<8|5); err != nil {
		t.Fatal(err)
	}
	_, err := r.ReadFile("/etc/os-release", 1<<16)
	if !errors.Is(err, hostfs.ErrNotRegular) || !strings.Contains(err.Error(), "character device") {
		t.Errorf("/dev/zero: %v, want ErrNotRegular (a character device)", err)
	}
}

func TestHostAndJoin(t *testing.T) {
	t.Parallel()
	r := tree(t, nil)
	if got := r.Host(r.Join("/opt/nvidia")); got != "/opt/nvidia" {
		t.Errorf("Host(Join) = %s", got)
	}
	if got := r.Host("/elsewhere"); got != "/" {
		t.Errorf("Host outside = %s, want /", got)
	}
	if _, err := hostfs.Open("relative"); err == nil {
		t.Error("Open(relative) worked")
	}
}
