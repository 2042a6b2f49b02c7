package cli

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
)

// driverTree builds a driver tree for kernel from the prefetched sample
// host's modules, plus libraries and a binary.
func driverTree(t *testing.T) string {
	t.Helper()
	pf := host(t, "flatcar-prefetched")
	dir := t.TempDir()
	if err := os.Rename(filepath.Join(pf, "opt/nvidia/550.54.14/3815.2.0/lib"), filepath.Join(dir, "lib")); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"lib64/libcuda.so.550.54.14":        strings.Repeat("cuda", 10000),
		"lib64/libnvidia-ml.so.550.54.14":   strings.Repeat("nvml", 5000),
		"bin/nvidia-smi":                    "#!/bin/sh\ncat /sys/module/nvidia/version\n",
		"firmware/nvidia/550.54.14/gsp.bin": "gsp",
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{"lib64/libcuda.so.1": "libcuda.so.550.54.14", "lib64/libnvidia-ml.so.1": "libnvidia-ml.so.550.54.14"} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func must(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
}

func TestInstallFromOCILayout(t *testing.T) {
	root := host(t, "flatcar-updated")
	layout := "--source=oci-layout:/media/usb"

	t.Run("publish writes the image into an OCI layout and prints its digest", func(t *testing.T) {
		r := run(t, nil, "--root", root, "publish", "--from", driverTree(t), "--os-version", "3815.2.0",
			"--kernel-release", "6.1.77-flatcar", "--oci-layout", filepath.Join(root, "media/usb"), "3815.2.0-550.54.14")
		must(t, r, 0)
		if !strings.HasPrefix(r.stdout, "sha256:") {
			t.Fatalf("stdout %q", r.stdout)
		}
	})

	t.Run("install fetches the image and switches current, keeping the old tree as previous", func(t *testing.T) {
		r := run(t, nil, "--root", root, layout, "install", "--no-activate")
		must(t, r, 0)
		if r.stdout != "current -> /opt/nvidia/550.54.14/3815.2.0\n" {
			t.Fatalf("stdout %q", r.stdout)
		}
		s := statusJSON(t, root)
		if s.Current == nil || s.Current.Path != "/opt/nvidia/550.54.14/3815.2.0" || !s.Current.MatchesKernel || s.Plan.Action != "load" {
			t.Fatalf("current %+v plan %+v", s.Current, s.Plan)
		}
		if target, _ := os.Readlink(filepath.Join(root, "opt/nvidia/previous")); target != "550.54.14/3760.2.0" {
			t.Fatalf("previous -> %q", target)
		}
		if b, _ := os.ReadFile(filepath.Join(root, "opt/nvidia/current/lib64/libcuda.so.1")); len(b) != 40000 {
			t.Fatalf("libcuda.so.1 through current: %d bytes", len(b))
		}
		// The tree's size and file count are what the install unpacked.
		var files int
		var bytes int64
		filepath.WalkDir(filepath.Join(root, "opt/nvidia/550.54.14/3815.2.0"), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() && d.Name() != ".nvidia-driverd.json" {
				fi, _ := d.Info()
				files++
				bytes += fi.Size()
			}
			return nil
		})
		if s.Current.Files != files || s.Current.Bytes != bytes || files == 0 {
			t.Errorf("status says %d files, %d bytes; the tree has %d, %d", s.Current.Files, s.Current.Bytes, files, bytes)
		}
		if h := run(t, nil, "--root", root, "status"); !strings.Contains(h.stdout, fmt.Sprintf("/opt/nvidia/550.54.14/3815.2.0 (%d files, ", files)) {
			t.Errorf("status:\n%s", h.stdout)
		}
	})

	t.Run("a second install changes nothing", func(t *testing.T) {
		r := run(t, nil, "--root", root, layout, "install", "--no-activate")
		must(t, r, 0)
		if !strings.Contains(r.stdout, "is current and matches kernel 6.1.77-flatcar") {
			t.Fatalf("stdout %q", r.stdout)
		}
	})

	t.Run("gc keeps current and previous", func(t *testing.T) {
		r := run(t, nil, "--root", root, "--keep", "1", "gc")
		must(t, r, 0)
		if !strings.HasPrefix(r.stdout, "nothing to remove") {
			t.Fatalf("removed %q", r.stdout)
		}
	})

	t.Run("rollback switches back and forth", func(t *testing.T) {
		r := run(t, nil, "--root", root, "rollback")
		must(t, r, 0)
		if !strings.HasPrefix(r.stdout, "current -> /opt/nvidia/550.54.14/3760.2.0") {
			t.Fatalf("stdout %q", r.stdout)
		}
		// The tree gone back to was built for the kernel before the update:
		// the rollback will not last, and it says so.
		if !strings.Contains(r.stdout, "note: /opt/nvidia/550.54.14/3760.2.0 does not match the running kernel (") || !strings.Contains(r.stdout, "will switch at its next start") {
			t.Errorf("no note that the rollback will not stick:\n%s", r.stdout)
		}
		back := run(t, nil, "--root", root, "rollback")
		must(t, back, 0)
		if strings.Contains(back.stdout, "note:") {
			t.Errorf("a rollback to a matching tree is noted:\n%s", back.stdout)
		}
		if s := statusJSON(t, root); s.Current == nil || s.Current.OSVersion != "3815.2.0" {
			t.Fatalf("current %+v", s.Current)
		}
	})

	t.Run("fetch for a staged OS version reads the kernel from the image and leaves current alone", func(t *testing.T) {
		r := run(t, nil, "--root", root, "publish", "--from", driverTree(t), "--os-version", "3850.0.0",
			"--kernel-release", "6.1.77-flatcar", "--oci-layout", filepath.Join(root, "media/usb"), "3850.0.0-550.54.14")
		must(t, r, 0)
		r = run(t, nil, "--root", root, layout, "fetch", "--os-version", "3850.0.0")
		must(t, r, 0)
		if !strings.Contains(r.stdout, "into /opt/nvidia/550.54.14/3850.0.0") {
			t.Fatalf("stdout %q", r.stdout)
		}
		if target, _ := os.Readlink(filepath.Join(root, "opt/nvidia/current")); target != "550.54.14/3815.2.0" {
			t.Fatalf("current -> %q", target)
		}
	})
}

func TestInstallRefusals(t *testing.T) {
	t.Run("a second writer is told who holds the store", func(t *testing.T) {
		root := host(t, "flatcar-updated")
		tree, err := hostfs.Open(root)
		if err != nil {
			t.Fatal(err)
		}
		defer tree.Close()
		s, err := store.Open(tree, "/opt/nvidia")
		if err != nil {
			t.Fatal(err)
		}
		l, err := s.Lock(context.Background(), false)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Unlock()
		r := run(t, nil, "--root", root, "--source=oci-layout:/media/usb", "install")
		must(t, r, 1)
		if !strings.Contains(r.stderr, "locked") || !strings.Contains(r.stderr, strconv.Itoa(os.Getpid())) || !strings.Contains(r.stderr, "--wait") {
			t.Fatalf("stderr %q", r.stderr)
		}
	})

	t.Run("publish refuses modules built for another kernel", func(t *testing.T) {
		root := host(t, "flatcar-updated")
		r := run(t, nil, "--root", root, "publish", "--from", driverTree(t), "--os-version", "3815.2.0",
			"--kernel-release", "6.1.80-flatcar", "--oci-layout", filepath.Join(t.TempDir(), "l"), "x")
		must(t, r, 1)
		if !strings.Contains(r.stderr, "6.1.80-flatcar") {
			t.Fatalf("stderr %q", r.stderr)
		}
	})

	t.Run("publish without its required flags is a usage error", func(t *testing.T) {
		must(t, run(t, nil, "publish", "registry.example.com/x:y"), 2)
	})

	t.Run("install with nothing to fetch from says so and changes nothing", func(t *testing.T) {
		root := host(t, "flatcar-updated")
		r := run(t, nil, "--root", root, "--repository=", "install")
		if r.code == 0 || !strings.Contains(r.stderr, "no repository") {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if target, _ := os.Readlink(filepath.Join(root, "opt/nvidia/current")); target != "550.54.14/3760.2.0" {
			t.Fatalf("current -> %q", target)
		}
	})

	t.Run("an image missing from the layout fails with its tag and keeps current", func(t *testing.T) {
		root := host(t, "flatcar-updated")
		if err := os.MkdirAll(filepath.Join(root, "media/usb"), 0o755); err != nil {
			t.Fatal(err)
		}
		r := run(t, nil, "--root", root, "publish", "--from", driverTree(t), "--os-version", "3815.2.0",
			"--kernel-release", "6.1.77-flatcar", "--oci-layout", filepath.Join(root, "media/usb"), "other-tag")
		must(t, r, 0)
		r = run(t, nil, "--root", root, "--source=oci-layout:/media/usb", "install")
		must(t, r, 1)
		if !strings.Contains(r.stderr, "3815.2.0-550.54.14") {
			t.Fatalf("stderr %q", r.stderr)
		}
		if target, _ := os.Readlink(filepath.Join(root, "opt/nvidia/current")); target != "550.54.14/3760.2.0" {
			t.Fatalf("current -> %q", target)
		}
	})
}

func TestInstallFromRegistry(t *testing.T) {
	t.Run("publish pushes to a registry and install pulls from it, no Docker involved", func(t *testing.T) {
		srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
		defer srv.Close()
		hostPort := strings.TrimPrefix(srv.URL, "http://")
		root := host(t, "flatcar-updated")
		flags := []string{"--root", root, "--insecure-registries", hostPort, "--repository", hostPort + "/gpu/nvidia-driver"}
		r := run(t, nil, append(flags, "publish", "--from", driverTree(t), "--os-version", "3815.2.0",
			"--kernel-release", "6.1.77-flatcar", hostPort+"/gpu/nvidia-driver:3815.2.0-550.54.14")...)
		must(t, r, 0)
		digest := strings.TrimSpace(r.stdout)
		r = run(t, nil, append(flags, "install", "--no-activate")...)
		must(t, r, 0)
		meta, err := os.ReadFile(filepath.Join(root, "opt/nvidia/550.54.14/3815.2.0", store.MetaFile))
		if err != nil || !strings.Contains(string(meta), digest) {
			t.Fatalf("meta %s, %v; want digest %s", meta, err, digest)
		}
	})
}
