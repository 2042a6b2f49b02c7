// Package builder tests the release pipeline's scripts: everything around
// the compile, which needs root, a Flatcar developer container and the
// network. A fake installer package and modules built by test/kofixture
// stand in for the compile's output; the real nvidia-driverd publishes the
// assembled tree into an in-process registry, and `matrix` then no longer
// lists it.
package builder

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log"
	"maps"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.yaml.in/yaml/v3"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/feed"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/test/cmdtest"
	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

const (
	driver   = "550.127.05"
	kernel   = "6.6.71-flatcar" // Flatcar 4152.2.0 in test/fixtures/feeds/releases-stable.json
	vermagic = kernel + " SMP preempt mod_unload "
	feeds    = "../../test/fixtures/feeds"
)

// binary is nvidia-driverd: $NVIDIA_DRIVERD_BIN, or one built for this run.
var binary string

func TestMain(m *testing.M) {
	binary = os.Getenv("NVIDIA_DRIVERD_BIN")
	code := func() int {
		if binary == "" {
			dir, err := os.MkdirTemp("", "nvidia-driverd-builder-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(dir)
			binary = filepath.Join(dir, "nvidia-driverd")
			if out, err := exec.Command("go", "build", "-o", binary, "../../cmd/nvidia-driverd").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build nvidia-driverd: %v\n%s", err, out)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs a command with a clean environment plus env.
func run(t *testing.T, env []string, name string, args ...string) result {
	t.Helper()
	r := cmdtest.Run(t, env, name, args...)
	return result{stdout: r.Stdout, stderr: r.Stderr, code: r.Code}
}

func must(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
}

func scripts(t *testing.T) []string {
	t.Helper()
	s, err := filepath.Glob("*.sh")
	if err != nil || len(s) == 0 {
		t.Fatalf("scripts: %v %v", s, err)
	}
	return s
}

func TestScriptsCheck(t *testing.T) {
	for _, s := range scripts(t) {
		t.Run("bash -n "+s, func(t *testing.T) {
			must(t, run(t, nil, "bash", "-n", s), 0)
		})
	}
	t.Run("shellcheck", func(t *testing.T) {
		if _, err := exec.LookPath("shellcheck"); err != nil {
			t.Skip("shellcheck is not installed")
		}
		must(t, run(t, nil, "shellcheck", append([]string{"-x", "-P", "SCRIPTDIR"}, scripts(t)...)...), 0)
	})
	t.Run("every script but lib.sh is executable and has --help", func(t *testing.T) {
		for _, s := range scripts(t) {
			if s == "lib.sh" || s == "in-container.sh" || s == "docker-config.sh" {
				continue
			}
			fi, err := os.Stat(s)
			if err != nil || fi.Mode()&0o111 == 0 {
				t.Errorf("%s is not executable", s)
			}
			r := run(t, nil, "./"+s, "--help")
			if r.code != 0 || !strings.Contains(r.stdout, s) {
				t.Errorf("%s --help: exit %d\n%s%s", s, r.code, r.stdout, r.stderr)
			}
		}
	})
}

// lib runs a shell snippet with lib.sh sourced.
func lib(t *testing.T, snippet string) result {
	t.Helper()
	return run(t, nil, "bash", "-c", ". ./lib.sh; "+snippet)
}

func TestLib(t *testing.T) {
	flags := func(t *testing.T, driver, typ string) []string {
		r := lib(t, fmt.Sprintf("installer_flags %s %s %s /usr/src/linux /build/modules /build/log /build/tmp 8", driver, typ, kernel))
		must(t, r, 0)
		return strings.Fields(r.stdout)
	}
	t.Run("the original's options are all there", func(t *testing.T) {
		got := flags(t, "550.127.05", "proprietary")
		for _, want := range []string{"--no-precompiled-interface", "--kernel-source-path=/usr/src/linux", "--no-check-for-alternate-installs",
			"--no-kernel-module-source", "--no-opengl-files", "--no-distro-scripts", "--kernel-install-path=/build/modules",
			"--log-file-name=/build/log", "--kernel-name=" + kernel, "--ui=none", "--no-questions", "--no-systemd",
			"--no-nouveau-check", "--no-x-check", "--skip-depmod", "--concurrency-level=8"} {
			if !slices.Contains(got, want) {
				t.Errorf("%s missing from %v", want, got)
			}
		}
	})
	t.Run("the module type: 560 and later say it, 515 to 555 pick the kernel-open directory", func(t *testing.T) {
		for _, tc := range []struct {
			driver, typ, want, notWant string
		}{
			{"570.86.15", "open", "--kernel-module-type=open", ""},
			{"560.35.03", "proprietary", "--kernel-module-type=proprietary", ""},
			{"535.216.01", "open", "--kernel-module-build-directory=kernel-open", "--kernel-module-type"},
			{"550.127.05", "proprietary", "", "--kernel-module"},
			{"470.256.02", "proprietary", "", "--kernel-module"},
		} {
			got := strings.Join(flags(t, tc.driver, tc.typ), " ")
			if tc.want != "" && !strings.Contains(got, tc.want) {
				t.Errorf("%s %s: %s missing from %s", tc.driver, tc.typ, tc.want, got)
			}
			if tc.notWant != "" && strings.Contains(got, tc.notWant) {
				t.Errorf("%s %s: %s in %s", tc.driver, tc.typ, tc.notWant, got)
			}
		}
		if r := lib(t, "installer_flags 470.256.02 open k s d l t 1"); r.code == 0 || !strings.Contains(r.stderr, "no open kernel module") {
			t.Errorf("470 open: exit %d %s", r.code, r.stderr)
		}
		if r := lib(t, "default_kernel_type 560.28.03; default_kernel_type 555.58.02"); r.stdout != "open\nproprietary\n" {
			t.Errorf("default_kernel_type: %q", r.stdout)
		}
	})
	t.Run("download addresses", func(t *testing.T) {
		r := lib(t, `release_url "$(release_base stable)" 4152.2.0 flatcar_developer_container.bin.bz2; nvidia_url 550.127.05`)
		must(t, r, 0)
		want := "https://stable.release.flatcar-linux.net/amd64-usr/4152.2.0/flatcar_developer_container.bin.bz2\n" +
			"https://us.download.nvidia.com/tesla/550.127.05/NVIDIA-Linux-x86_64-550.127.05.run\n"
		if r.stdout != want {
			t.Errorf("got %q, want %q", r.stdout, want)
		}
	})
	t.Run("checksums: exactly one well-formed line per package", func(t *testing.T) {
		sum := strings.Repeat("ab", 32)
		file := filepath.Join(t.TempDir(), "sums")
		os.WriteFile(file, []byte("# comment\n"+strings.ToUpper(sum)+"  NVIDIA-Linux-x86_64-550.127.05.run\n"+
			sum+"  NVIDIA-Linux-x86_64-535.216.01.run\n"+sum+" *NVIDIA-Linux-x86_64-535.216.01.run\n"+
			"1234  NVIDIA-Linux-x86_64-560.35.03.run\n"), 0o644)
		r := lib(t, "checksum_for "+file+" NVIDIA-Linux-x86_64-550.127.05.run")
		must(t, r, 0)
		if strings.TrimSpace(r.stdout) != sum {
			t.Errorf("got %q", r.stdout)
		}
		for v, want := range map[string]string{"535.216.01": "more than once", "560.35.03": "not a SHA-256", "570.86.15": "no SHA-256"} {
			if r := lib(t, "checksum_for "+file+" NVIDIA-Linux-x86_64-"+v+".run"); r.code == 0 || !strings.Contains(r.stderr, want) {
				t.Errorf("%s: exit %d %q, want %q", v, r.code, r.stderr, want)
			}
		}
		f := filepath.Join(t.TempDir(), "x")
		os.WriteFile(f, []byte("hello\n"), 0o644)
		must(t, lib(t, "verify_sha256 "+f+" 5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"), 0)
		if r := lib(t, "verify_sha256 "+f+" "+sum); r.code == 0 || !strings.Contains(r.stderr, "want "+sum) {
			t.Errorf("wrong sum: exit %d %s", r.code, r.stderr)
		}
	})
	t.Run("the committed checksum file has only well-formed entries", func(t *testing.T) {
		data, err := os.ReadFile("drivers.sha256")
		if err != nil {
			t.Fatal(err)
		}
		line := regexp.MustCompile(`^[0-9a-f]{64}  NVIDIA-Linux-x86_64-[0-9]+\.[0-9]+(\.[0-9]+)?\.run$`)
		for i, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") && !line.MatchString(l) {
				t.Errorf("drivers.sha256:%d: %q", i+1, l)
			}
		}
	})
}

func TestBuildArguments(t *testing.T) {
	sum := strings.Repeat("0", 64)
	base := []string{"--channel", "stable", "--os-version", "4152.2.0", "--driver", driver, "--sha256", sum}
	ref := "registry.example.com/gpu/nvidia-driver:4152.2.0-" + driver

	t.Run("--dry-run prints the plan and touches nothing", func(t *testing.T) {
		r := run(t, nil, "./build.sh", append(base, "--kernel-release", kernel, "--dry-run", ref)...)
		must(t, r, 0)
		for _, want := range []string{
			"https://stable.release.flatcar-linux.net/amd64-usr/4152.2.0/flatcar_developer_container.bin.bz2.sig",
			"https://us.download.nvidia.com/tesla/550.127.05/NVIDIA-Linux-x86_64-550.127.05.run",
			"--kernel-name=" + kernel, "kernel modules:      proprietary", ref,
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("plan lacks %q:\n%s", want, r.stdout)
			}
		}
	})

	sums := filepath.Join(t.TempDir(), "sums")
	os.WriteFile(sums, []byte(sum+"  NVIDIA-Linux-x86_64-535.216.01.run\n"), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no arguments", nil, "--channel"},
		{"an unknown channel", []string{"--channel", "edge", "--os-version", "4152.2.0", "--driver", driver, "--sha256", sum, ref}, "--channel 'edge'"},
		{"no checksum", []string{"--channel", "stable", "--os-version", "4152.2.0", "--driver", driver, ref}, "never used unchecked"},
		{"a checksum file without the package", []string{"--channel", "stable", "--os-version", "4152.2.0", "--driver", driver, "--sha256-file", sums, ref}, "lists no SHA-256 for NVIDIA-Linux-x86_64-550.127.05.run"},
		{"a short checksum", []string{"--channel", "stable", "--os-version", "4152.2.0", "--driver", driver, "--sha256", "abc", ref}, "64 hex digits"},
		{"no REF", base, "REF"},
		{"a REF without a tag", append(base, "registry.example.com/gpu/nvidia-driver"), "registry/repository:tag"},
		{"open modules for a driver without them", append(base[:4], "--driver", "470.256.02", "--sha256", sum, "--kernel-type", "open", ref), "cannot be built as open"},
		{"an unknown option", append(base, "--fast", ref), "unknown option --fast"},
		{"a bad fingerprint", append(base, "--flatcar-key-fingerprint", "1234", ref), "40 hex digits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, nil, "./build.sh", tc.args...)
			if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, want 2 and %q\n%s", r.code, tc.want, r.stderr)
			}
		})
	}
}

// fakePackage lays out what `NVIDIA-Linux-x86_64-<driver>.run
// --extract-only` gives, with small stand-ins for the real files, and
// the modules directory the installer fills.
func fakePackage(t *testing.T) (extract, modules string) {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc is not installed")
	}
	extract, modules = t.TempDir(), t.TempDir()
	for lib, soname := range map[string]string{
		"libcuda.so." + driver:                   "libcuda.so.1",
		"libnvidia-ml.so." + driver:              "libnvidia-ml.so.1",
		"libnvidia-ptxjitcompiler.so." + driver:  "libnvidia-ptxjitcompiler.so.1",
		"libnvidia-cfg.so." + driver:             "libnvidia-cfg.so.1",
		"libEGL.so.1.1.0":                        "libEGL.so.1",
		"libnvidia-egl-wayland.so.1.1.13":        "libnvidia-egl-wayland.so.1",
		"32/libcuda.so." + driver:                "libcuda.so.1",
		"libnvidia-allocator.so." + driver + "x": "libnvidia-allocator.so.1",
	} {
		out := filepath.Join(extract, lib)
		os.MkdirAll(filepath.Dir(out), 0o755)
		cmd := exec.Command("gcc", "-shared", "-fPIC", "-o", out, "-Wl,-soname,"+soname, "-x", "c", "-")
		cmd.Stdin = strings.NewReader("int nv_fake(void) { return 0; }\n")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("gcc %s: %v\n%s", lib, err, b)
		}
	}
	for name, body := range map[string]string{
		"nvidia-smi":                "#!/bin/sh\necho NVIDIA-SMI " + driver + "\n",
		"nvidia-persistenced":       "#!/bin/sh\n",
		"nvidia-debugdump":          "#!/bin/sh\n",
		"nvidia-cuda-mps-control":   "#!/bin/sh\n",
		"nvidia-installer":          "#!/bin/sh\n",
		"nvidia-settings":           "#!/bin/sh\n",
		"firmware/gsp_ga10x.bin":    "gsp ga10x",
		"firmware/gsp_tu10x.bin":    "gsp tu10x",
		".manifest":                 "NVIDIA-Linux-x86_64-" + driver + "\n",
		"LICENSE":                   "license\n",
		"kernel/nvidia/nv-kernel.o": "object",
	} {
		p := filepath.Join(extract, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The four every host loads, and nvidia-peermem, which a driver
	// package builds too.
	for _, m := range append(slices.Clone(hostfixture.DriverModules),
		hostfixture.DriverModule{File: "nvidia-peermem", Name: "nvidia_peermem", Depends: []string{"nvidia", "ib_core"}}) {
		kofixture.Build(t, modules, kofixture.Module{Name: m.File, Fields: kofixture.Standard(m.Name, driver, vermagic, m.Depends...)})
	}
	return extract, modules
}

// listing describes a tree: "path mode" for files, "path -> target" for
// links, "path/" for directories.
func listing(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out = append(out, rel+" -> "+target)
		case fi.IsDir():
			out = append(out, rel+"/")
		default:
			out = append(out, fmt.Sprintf("%s %04o", rel, fi.Mode().Perm()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func assemble(t *testing.T, extract, modules, out string, extra ...string) result {
	t.Helper()
	return run(t, nil, "./assemble-tree.sh", append([]string{"--extract", extract, "--modules", modules,
		"--driver", driver, "--kernel-release", kernel, "--out", out}, extra...)...)
}

func TestAssembleTree(t *testing.T) {
	extract, modules := fakePackage(t)

	t.Run("the package and modules become the image layout", func(t *testing.T) {
		conf := filepath.Join(t.TempDir(), "nvidia.conf")
		os.WriteFile(conf, []byte("options nvidia NVreg_EnableGpuFirmware=1\n"), 0o600)
		out := filepath.Join(t.TempDir(), "tree")
		must(t, assemble(t, extract, modules, out, "--modprobe-conf", conf), 0)
		want := []string{
			"bin/",
			"bin/nvidia-cuda-mps-control 0755",
			"bin/nvidia-debugdump 0755",
			"bin/nvidia-persistenced 0755",
			"bin/nvidia-smi 0755",
			"etc/",
			"etc/modprobe.d/",
			"etc/modprobe.d/nvidia.conf 0644",
			"firmware/",
			"firmware/nvidia/",
			"firmware/nvidia/" + driver + "/",
			"firmware/nvidia/" + driver + "/gsp_ga10x.bin 0644",
			"firmware/nvidia/" + driver + "/gsp_tu10x.bin 0644",
			"lib/",
			"lib/modules/",
			"lib/modules/" + kernel + "/",
			"lib/modules/" + kernel + "/video/",
			"lib/modules/" + kernel + "/video/nvidia-drm.ko 0644",
			"lib/modules/" + kernel + "/video/nvidia-modeset.ko 0644",
			"lib/modules/" + kernel + "/video/nvidia-peermem.ko 0644",
			"lib/modules/" + kernel + "/video/nvidia-uvm.ko 0644",
			"lib/modules/" + kernel + "/video/nvidia.ko 0644",
			"lib64/",
			"lib64/libcuda.so.1 -> libcuda.so." + driver,
			"lib64/libcuda.so." + driver + " 0755",
			"lib64/libnvidia-cfg.so.1 -> libnvidia-cfg.so." + driver,
			"lib64/libnvidia-cfg.so." + driver + " 0755",
			"lib64/libnvidia-ml.so.1 -> libnvidia-ml.so." + driver,
			"lib64/libnvidia-ml.so." + driver + " 0755",
			"lib64/libnvidia-ptxjitcompiler.so.1 -> libnvidia-ptxjitcompiler.so." + driver,
			"lib64/libnvidia-ptxjitcompiler.so." + driver + " 0755",
		}
		if got := listing(t, out); !reflect.DeepEqual(got, want) {
			t.Fatalf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})

	for _, tc := range []struct {
		name   string
		remove string
		want   string
	}{
		{"a missing module is named", "modules:nvidia-drm.ko", "nvidia-drm.ko is missing"},
		{"a package of another driver version is refused", "extract:libcuda.so." + driver, "libcuda.so." + driver + " is missing"},
		{"a missing nvidia-persistenced is named", "extract:nvidia-persistenced", "nvidia-persistenced is missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, m := copyDir(t, extract), copyDir(t, modules)
			where, file, _ := strings.Cut(tc.remove, ":")
			dir := map[string]string{"extract": e, "modules": m}[where]
			if err := os.Remove(filepath.Join(dir, file)); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "tree")
			r := assemble(t, e, m, out)
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, want 1 and %q\n%s", r.code, tc.want, r.stderr)
			}
		})
	}

	t.Run("a distribution's unpacked packages give the same tree as the installer", func(t *testing.T) {
		// Debian's layout: libraries under usr/lib/<triplet>/nvidia/current
		// with links one level up, nvidia-smi in usr/lib/nvidia/current,
		// an absolute link through /etc/alternatives, firmware under
		// lib/firmware/nvidia/<driver>.
		sys := t.TempDir()
		libdir := filepath.Join(sys, "usr/lib/x86_64-linux-gnu/nvidia/current")
		for _, d := range []string{libdir, filepath.Join(sys, "usr/bin"), filepath.Join(sys, "usr/lib/nvidia/current"),
			filepath.Join(sys, "etc/alternatives"), filepath.Join(sys, "lib/firmware/nvidia", driver)} {
			noErr(t, os.MkdirAll(d, 0o755))
		}
		for _, l := range []string{"libcuda.so.", "libnvidia-ml.so.", "libnvidia-ptxjitcompiler.so.", "libnvidia-cfg.so."} {
			b, err := os.ReadFile(filepath.Join(extract, l+driver))
			noErr(t, err)
			noErr(t, os.WriteFile(filepath.Join(libdir, l+driver), b, 0o644))
			noErr(t, os.Symlink("nvidia/current/"+l+driver, filepath.Join(sys, "usr/lib/x86_64-linux-gnu", l+driver)))
		}
		copyFile := func(from, to string) {
			b, err := os.ReadFile(filepath.Join(extract, from))
			noErr(t, err)
			noErr(t, os.WriteFile(to, b, 0o755))
		}
		// nvidia-smi as unpacked, before the alternatives link it into
		// usr/bin.
		copyFile("nvidia-smi", filepath.Join(sys, "usr/lib/nvidia/current/nvidia-smi"))
		copyFile("nvidia-persistenced", filepath.Join(sys, "usr/bin/nvidia-persistenced"))
		copyFile("nvidia-debugdump", filepath.Join(sys, "usr/lib/nvidia/current/nvidia-debugdump"))
		noErr(t, os.Symlink("/usr/lib/nvidia/current/nvidia-debugdump", filepath.Join(sys, "etc/alternatives/nvidia-debugdump")))
		noErr(t, os.Symlink("/etc/alternatives/nvidia-debugdump", filepath.Join(sys, "usr/bin/nvidia-debugdump")))
		copyFile("nvidia-cuda-mps-control", filepath.Join(sys, "usr/bin/nvidia-cuda-mps-control"))
		noErr(t, os.Symlink("/nowhere", filepath.Join(sys, "usr/bin/nvidia-bug-report.sh")))
		for _, fw := range []string{"gsp_ga10x.bin", "gsp_tu10x.bin"} {
			copyFile("firmware/"+fw, filepath.Join(sys, "lib/firmware/nvidia", driver, fw))
		}
		fromRun, fromDebs := filepath.Join(t.TempDir(), "tree"), filepath.Join(t.TempDir(), "tree")
		must(t, assemble(t, extract, modules, fromRun), 0)
		r := run(t, nil, "./assemble-tree.sh", "--sysroot", sys, "--modules", modules,
			"--driver", driver, "--kernel-release", kernel, "--out", fromDebs)
		must(t, r, 0)
		if got, want := listing(t, fromDebs), listing(t, fromRun); !reflect.DeepEqual(got, want) {
			t.Fatalf("from packages:\n%s\nfrom the installer:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if !strings.Contains(r.stderr, "nvidia-bug-report.sh leads nowhere") {
			t.Errorf("a dangling link is not reported: %s", r.stderr)
		}
		if r := run(t, nil, "./assemble-tree.sh", "--sysroot", sys, "--extract", extract, "--modules", modules,
			"--driver", driver, "--kernel-release", kernel, "--out", t.TempDir()); r.code != 2 {
			t.Errorf("--sysroot with --extract: exit %d", r.code)
		}
	})

	t.Run("an existing tree is not written over", func(t *testing.T) {
		out := t.TempDir()
		os.WriteFile(filepath.Join(out, "x"), nil, 0o644)
		if r := assemble(t, extract, modules, out); r.code != 1 || !strings.Contains(r.stderr, "not empty") {
			t.Fatalf("exit %d %s", r.code, r.stderr)
		}
	})

	t.Run("bad arguments", func(t *testing.T) {
		if r := run(t, nil, "./assemble-tree.sh", "--extract", extract); r.code != 2 {
			t.Fatalf("exit %d %s", r.code, r.stderr)
		}
		if r := run(t, nil, "./assemble-tree.sh", "--extract", extract, "--modules", modules, "--driver", "latest",
			"--kernel-release", kernel, "--out", t.TempDir()); r.code != 2 {
			t.Fatalf("exit %d %s", r.code, r.stderr)
		}
	})
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	if b, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, b)
	}
	return dst
}

// matrixJSON runs `nvidia-driverd matrix --json` over the stable fixture
// feed's newest release.
func matrixJSON(t *testing.T, host string) []feed.Combination {
	t.Helper()
	r := run(t, nil, binary, "--root", t.TempDir(), "--insecure-registries", host, "--repository", host+"/gpu/nvidia-driver",
		"matrix", "--feed", filepath.Join(feeds, "releases-stable.json"), "--driver", driver, "--last", "1", "--json")
	must(t, r, 0)
	var out []feed.Combination
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	return out
}

func TestPublishedTreeLeavesTheMatrix(t *testing.T) {
	extract, modules := fakePackage(t)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	repo := host + "/gpu/nvidia-driver"

	before := matrixJSON(t, host)
	want := []feed.Combination{{OSVersion: "4152.2.0", Channel: "stable", KernelRelease: kernel, Driver: driver,
		Tag: "4152.2.0-" + driver, Image: repo + ":4152.2.0-" + driver}}
	if !reflect.DeepEqual(before, want) {
		t.Fatalf("before publishing: %+v, want %+v", before, want)
	}

	tree := filepath.Join(t.TempDir(), "tree")
	must(t, assemble(t, extract, modules, tree), 0)
	c := before[0]
	env := []string{"NVIDIA_DRIVERD=" + binary, "NVIDIA_DRIVERD_INSECURE_REGISTRIES=" + host}
	r := run(t, env, "./publish.sh", tree, c.OSVersion, c.KernelRelease, c.Driver, c.Image)
	must(t, r, 0)
	digest := strings.TrimSpace(r.stdout)
	if !strings.HasPrefix(digest, "sha256:") {
		t.Fatalf("stdout %q", r.stdout)
	}

	if after := matrixJSON(t, host); len(after) != 0 {
		t.Fatalf("after publishing: %+v, want nothing missing", after)
	}

	// The image says what it is for, as nvidia-driverd on a host will check.
	src, err := source.NewRegistry(repo, source.Options{Insecure: []string{host}, Platform: v1.Platform{OS: "linux", Architecture: "amd64"}})
	if err != nil {
		t.Fatal(err)
	}
	img, err := src.Image(context.Background(), c.Tag)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{publish.LabelKernel: kernel, publish.LabelDriver: driver, publish.LabelOSVer: "4152.2.0",
		publish.LabelOSID: "flatcar", publish.LabelVermagic: strings.TrimSpace(vermagic)} {
		if img.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, img.Labels[k], v)
		}
	}
	if img.Digest.String() != digest {
		t.Errorf("digest %s, publish printed %s", img.Digest, digest)
	}

	t.Run("a tree whose modules are for another kernel is not published", func(t *testing.T) {
		r := run(t, env, "./publish.sh", tree, "4081.2.1", "6.6.65-flatcar", driver, repo+":4081.2.1-"+driver)
		if r.code != 1 || !strings.Contains(r.stderr, "6.6.65-flatcar") {
			t.Fatalf("exit %d %s", r.code, r.stderr)
		}
	})
}

func TestDockerConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "docker")
	r := run(t, []string{"REGISTRY_USERNAME=bot", "REGISTRY_PASSWORD=s3cret"}, "./docker-config.sh", "registry.example.com:5000", dir)
	must(t, r, 0)
	data, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Auths map[string]struct{ Auth string }
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("%v: %s", err, data)
	}
	if got := cfg.Auths["registry.example.com:5000"].Auth; got != base64.StdEncoding.EncodeToString([]byte("bot:s3cret")) {
		t.Fatalf("auth %q", got)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "config.json")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if r := run(t, []string{"REGISTRY_USERNAME=bot"}, "./docker-config.sh", "registry.example.com", dir); r.code != 2 {
		t.Fatalf("a user without a password: exit %d", r.code)
	}
}

// workflow is the part of a GitHub Actions workflow the test reads.
type workflow struct {
	On   map[string]any `yaml:"on"`
	Env  map[string]string
	Jobs map[string]struct {
		Needs    any
		If       string
		RunsOn   string `yaml:"runs-on"`
		Outputs  map[string]string
		Strategy struct {
			Matrix map[string]any
		}
		Steps []struct {
			ID, Name, Uses, Run string
			Env                 map[string]string
		}
	}
}

// commands returns the shell commands of run, continuation lines joined.
func commands(run string) []string {
	return strings.Split(strings.ReplaceAll(run, "\\\n", " "), "\n")
}

// helpFlags are the --flags a command's --help mentions.
func helpFlags(t *testing.T, name string, args ...string) map[string]bool {
	t.Helper()
	r := run(t, nil, name, args...)
	must(t, r, 0)
	out := map[string]bool{}
	for _, f := range regexp.MustCompile(`--[a-z0-9][a-z0-9-]*`).FindAllString(r.stdout, -1) {
		out[f] = true
	}
	return out
}

func flagsOf(cmd string) []string {
	var out []string
	for _, tok := range strings.Fields(cmd) {
		if strings.HasPrefix(tok, "--") {
			f, _, _ := strings.Cut(tok, "=")
			out = append(out, f)
		}
	}
	return out
}

func TestWorkflow(t *testing.T) {
	data, err := os.ReadFile("workflow.yml")
	if err != nil {
		t.Fatal(err)
	}
	var w workflow
	if err := yaml.Unmarshal(data, &w); err != nil {
		t.Fatal(err)
	}
	if _, ok := w.On["workflow_dispatch"]; !ok {
		t.Error("no workflow_dispatch trigger")
	}
	if s, ok := w.On["schedule"].([]any); !ok || len(s) == 0 {
		t.Errorf("no schedule: %v", w.On["schedule"])
	}

	// matrix's own flags, and the settings every command takes (which
	// the root's help lists).
	matrixFlags := helpFlags(t, binary, "matrix", "--help")
	maps.Copy(matrixFlags, helpFlags(t, binary, "--help"))
	buildFlags := helpFlags(t, "./build.sh", "--help")
	var combo feed.Combination
	fields := map[string]bool{}
	for i := range reflect.TypeOf(combo).NumField() {
		fields[reflect.TypeOf(combo).Field(i).Tag.Get("json")] = true
	}

	m, ok := w.Jobs["matrix"]
	if !ok {
		t.Fatal("no matrix job")
	}
	if m.Outputs["builds"] != "${{ steps.matrix.outputs.builds }}" {
		t.Errorf("matrix job outputs %v", m.Outputs)
	}
	found := false
	for _, s := range m.Steps {
		for _, c := range commands(s.Run) {
			if !strings.Contains(c, "nvidia-driverd") || !strings.Contains(c, " matrix ") {
				continue
			}
			found = true
			if s.ID != "matrix" {
				t.Errorf("the matrix command runs in step %q, want id matrix", s.ID)
			}
			for _, f := range flagsOf(c) {
				if !matrixFlags[f] {
					t.Errorf("the workflow passes %s, which `nvidia-driverd matrix` does not have", f)
				}
			}
			for _, f := range []string{"--json", "--feed", "--repository"} {
				if !strings.Contains(c, f+" ") {
					t.Errorf("the matrix command lacks %s: %s", f, c)
				}
			}
			// The drivers come from a variable, as an array of --driver flags.
			if !strings.Contains(s.Run, "+=(--driver ") || !strings.Contains(c, `"${drivers[@]}"`) {
				t.Errorf("the matrix step does not pass --driver for each of NVIDIA_DRIVERS:\n%s", s.Run)
			}
			for _, ch := range feed.Channels {
				if !strings.Contains(c, "--feed "+feed.URL(ch)+" ") {
					t.Errorf("the matrix command does not read the %s feed %s", ch, feed.URL(ch))
				}
			}
		}
	}
	if !found {
		t.Fatal("no step runs nvidia-driverd matrix")
	}

	b, ok := w.Jobs["build"]
	if !ok {
		t.Fatal("no build job")
	}
	if b.Needs != "matrix" || b.RunsOn == "" {
		t.Errorf("build job needs %v, runs-on %q", b.Needs, b.RunsOn)
	}
	if inc := b.Strategy.Matrix["include"]; inc != "${{ fromJSON(needs.matrix.outputs.builds) }}" {
		t.Errorf("build matrix include %v", inc)
	}
	matrixRef := regexp.MustCompile(`\$\{\{\s*matrix\.([a-z_]+)\s*\}\}`)
	built := false
	for _, s := range b.Steps {
		for _, v := range s.Env {
			for _, sub := range matrixRef.FindAllStringSubmatch(v, -1) {
				if !fields[sub[1]] {
					t.Errorf("step %q reads matrix.%s, which `matrix --json` does not write", s.Name, sub[1])
				}
			}
		}
		if matrixRef.MatchString(s.Run) {
			t.Errorf("step %q splices matrix values into its script; pass them through env", s.Name)
		}
		for _, c := range commands(s.Run) {
			for _, script := range regexp.MustCompile(`deploy/builder/[a-z-]+\.sh\b`).FindAllString(c, -1) {
				fi, err := os.Stat(filepath.Base(script))
				if err != nil || fi.Mode()&0o111 == 0 {
					t.Errorf("step %q runs %s, which is missing or not executable", s.Name, script)
				}
			}
			if strings.Contains(c, "deploy/builder/build.sh") {
				built = true
				for _, f := range flagsOf(c) {
					if f != "--preserve-env" && !buildFlags[f] {
						t.Errorf("the workflow passes %s, which build.sh does not have", f)
					}
				}
				for _, f := range []string{"--sha256-file", "--flatcar-key-fingerprint", "--channel", "--os-version", "--driver"} {
					if !strings.Contains(c, f+" ") {
						t.Errorf("build.sh is run without %s", f)
					}
				}
			}
		}
	}
	if !built {
		t.Fatal("the build job does not run deploy/builder/build.sh")
	}
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
