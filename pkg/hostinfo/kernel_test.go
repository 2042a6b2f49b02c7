package hostinfo

import (
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

func TestKernelRelease(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]string{
		"flatcar": "6.1.77-flatcar",
		"coreos":  "4.14.11-coreos",
		"debian":  "6.1.0-56-amd64",
	} {
		t.Run("the "+host+" fixture's release is read", func(t *testing.T) {
			got, err := KernelRelease(fixture(t, host))
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("KernelRelease = %q, want %q", got, want)
			}
		})
	}

	t.Run("surrounding whitespace is trimmed", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"proc/sys/kernel/osrelease": "  6.8.0-1-generic \n\n"})
		got, err := KernelRelease(root)
		if err != nil || got != "6.8.0-1-generic" {
			t.Errorf("KernelRelease = %q, %v", got, err)
		}
	})

	t.Run("a missing file under another root is an error naming the path", func(t *testing.T) {
		root := t.TempDir()
		_, err := KernelRelease(root)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v, want not-exist", err)
		}
		if want := filepath.Join(root, "proc/sys/kernel/osrelease"); !strings.Contains(err.Error(), want) {
			t.Errorf("err = %q, does not name %s", err, want)
		}
	})

	t.Run("an empty file is an error", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"proc/sys/kernel/osrelease": "\n"})
		if got, err := KernelRelease(root); err == nil || !strings.Contains(err.Error(), "empty") {
			t.Errorf("KernelRelease = %q, %v; want an error about an empty file", got, err)
		}
	})

	t.Run("the real root gives a release", func(t *testing.T) {
		// Either /proc/sys/kernel/osrelease or the uname fallback.
		got, err := KernelRelease("/")
		if err != nil || got == "" {
			t.Errorf("KernelRelease(/) = %q, %v", got, err)
		}
	})

	t.Run("uname gives the same release as procfs", func(t *testing.T) {
		proc, err := KernelRelease("/")
		if err != nil {
			t.Skip(err)
		}
		got, err := unameRelease()
		if err != nil || got != proc {
			t.Errorf("unameRelease = %q, %v; want %q", got, err, proc)
		}
	})
}
