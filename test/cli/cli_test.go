// Package cli runs the nvidia-driverd binary the way an operator or a
// script would, against sample host trees, and checks what it prints and
// how it exits.
package cli

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/test/cmdtest"
	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
)

// binary is the nvidia-driverd under test: $NVIDIA_DRIVERD_BIN (make e2e
// sets it to the built binary), or one built for this test run.
var binary string

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		os.Stderr.WriteString("cli tests: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	binary = os.Getenv("NVIDIA_DRIVERD_BIN")
	if binary == "" {
		dir, err := os.MkdirTemp("", "nvidia-driverd-cli-")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "nvidia-driverd")
		out, err := exec.Command("go", "build", "-o", binary, "../../cmd/nvidia-driverd").CombinedOutput()
		if err != nil {
			return 0, errors.New("build: " + string(out))
		}
	}
	return m.Run(), nil
}

// host lays out the named sample host in a temp dir.
func host(t *testing.T, name string) string {
	t.Helper()
	root := t.TempDir()
	if err := hostfixture.Make("../fixtures/hosts", root, hostfixture.Specs[name]); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return root
}

type result struct {
	stdout, stderr string
	code           int
}

func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	r := cmdtest.Run(t, env, binary, args...)
	return result{stdout: r.Stdout, stderr: r.Stderr, code: r.Code}
}

// status is the part of `status --json` these tests read; the names are
// the documented, stable ones.
type status struct {
	OS struct {
		ID, Family, Version string
	} `json:"os"`
	Kernel struct {
		Release, Vermagic string
		FlagsKnown        bool `json:"flags_known"`
	} `json:"kernel"`
	Driver struct {
		Version, Loaded string
		FromCurrent     bool `json:"from_current"`
	} `json:"driver"`
	Current   *tree  `json:"current"`
	Installed []tree `json:"installed"`
	Loaded    map[string]struct {
		Version   string
		Refcnt    int
		InitState string
		Holders   []string
	} `json:"loaded"`
	GPUs []struct {
		Address, Device string
	} `json:"gpus"`
	Plan struct {
		Action, Reason, Tree, Image string
		Cleanup                     []string
	} `json:"plan"`
	Failed []struct {
		Digest, Reason string
	} `json:"failed_images"`
}

type tree struct {
	Path          string
	Driver        string
	OSVersion     string `json:"os_version"`
	Vermagic      string
	MatchesKernel bool `json:"matches_kernel"`
	Problem       string
	Files         int
	Bytes         int64
}

func statusJSON(t *testing.T, root string, args ...string) status {
	t.Helper()
	r := run(t, nil, append([]string{"--root", root, "status", "--json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var s status
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("decode: %v\n%s", err, r.stdout)
	}
	return s
}

func TestStatus(t *testing.T) {
	t.Run("a ready Flatcar host reports everything and plans nothing", func(t *testing.T) {
		s := statusJSON(t, host(t, "flatcar-ready"))
		if s.OS.ID != "flatcar" || s.OS.Family != "flatcar" || s.OS.Version != "3815.2.0" {
			t.Errorf("os %+v", s.OS)
		}
		if s.Kernel.Release != "6.1.77-flatcar" || s.Kernel.Vermagic != "6.1.77-flatcar SMP preempt mod_unload" || !s.Kernel.FlagsKnown {
			t.Errorf("kernel %+v", s.Kernel)
		}
		if s.Driver.Version != "550.54.14" {
			t.Errorf("driver %+v", s.Driver)
		}
		if s.Current == nil || s.Current.Path != "/opt/nvidia/550.54.14/3815.2.0" || !s.Current.MatchesKernel ||
			s.Current.Driver != "550.54.14" || s.Current.OSVersion != "3815.2.0" || s.Current.Vermagic != "6.1.77-flatcar SMP preempt mod_unload" {
			t.Errorf("current %+v", s.Current)
		}
		if len(s.Installed) != 1 {
			t.Errorf("installed %+v", s.Installed)
		}
		if m := s.Loaded["nvidia"]; m.Version != "550.54.14" || m.Refcnt != 2 || m.InitState != "live" || len(m.Holders) != 2 || s.Driver.Loaded != "550.54.14" {
			t.Errorf("loaded %+v", s.Loaded)
		}
		if len(s.GPUs) != 1 || s.GPUs[0].Address != "0000:3b:00.0" || s.GPUs[0].Device != "0x2330" {
			t.Errorf("gpus %+v", s.GPUs)
		}
		if s.Plan.Action != "none" {
			t.Errorf("plan %+v", s.Plan)
		}
	})

	t.Run("after an OS update the old tree no longer matches and the new image is planned", func(t *testing.T) {
		s := statusJSON(t, host(t, "flatcar-updated"))
		if s.Current == nil || s.Current.MatchesKernel || !strings.Contains(s.Current.Problem, "6.1.73-flatcar") {
			t.Errorf("current %+v", s.Current)
		}
		if len(s.Loaded) != 0 {
			t.Errorf("loaded %+v", s.Loaded)
		}
		if s.Plan.Action != "install" || s.Plan.Image != "registry.example.com/gpu/nvidia-driver:3815.2.0-550.54.14" ||
			s.Plan.Tree != "/opt/nvidia/550.54.14/3815.2.0" {
			t.Errorf("plan %+v", s.Plan)
		}
	})

	t.Run("a tree prefetched for the new OS is switched to", func(t *testing.T) {
		s := statusJSON(t, host(t, "flatcar-prefetched"))
		if s.Plan.Action != "switch" || s.Plan.Tree != "/opt/nvidia/550.54.14/3815.2.0" {
			t.Errorf("plan %+v", s.Plan)
		}
	})

	t.Run("modules whose vermagic names another kernel are refused even in the right directory", func(t *testing.T) {
		s := statusJSON(t, host(t, "flatcar-wrong-vermagic"))
		if s.Current == nil || s.Current.MatchesKernel || !strings.Contains(s.Current.Problem, `"6.1.73-flatcar" != running kernel "6.1.77-flatcar"`) {
			t.Errorf("current %+v", s.Current)
		}
		if s.Plan.Action == "load" || s.Plan.Action == "none" {
			t.Errorf("plan %+v", s.Plan)
		}
	})

	t.Run("a half-written staging dir is listed for cleanup, never used", func(t *testing.T) {
		s := statusJSON(t, host(t, "flatcar-crashed"))
		if s.Plan.Action != "install" || len(s.Plan.Cleanup) != 1 || !strings.HasPrefix(s.Plan.Cleanup[0], "/opt/nvidia/.staging/") {
			t.Errorf("plan %+v", s.Plan)
		}
		if len(s.Installed) != 0 {
			t.Errorf("installed %+v", s.Installed)
		}
	})

	t.Run("a CoreOS tree from the original installer is recognised and kept", func(t *testing.T) {
		s := statusJSON(t, host(t, "coreos-legacy"))
		if s.OS.Family != "coreos" || s.Driver.Version != "384.111" {
			t.Errorf("os %+v driver %+v", s.OS, s.Driver)
		}
		if s.Current == nil || !s.Current.MatchesKernel || s.Plan.Action != "load" {
			t.Errorf("current %+v plan %+v", s.Current, s.Plan)
		}
		if r := run(t, nil, "--root", host(t, "coreos-legacy"), "status"); !strings.Contains(r.stdout, "driver 384.111 (driver-version is unset: the current tree's)") {
			t.Errorf("status does not say where the wanted version comes from:\n%s", r.stdout)
		}
	})

	t.Run("a generic host without a GPU has nothing to do, or is keyed by kernel when allowed", func(t *testing.T) {
		root := host(t, "debian-generic")
		s := statusJSON(t, root)
		if s.OS.Family != "generic" || s.Kernel.Vermagic != "6.1.0-56-amd64 SMP preempt mod_unload modversions" {
			t.Errorf("os %+v kernel %+v", s.OS, s.Kernel)
		}
		if s.Plan.Action != "no-gpu" || !strings.Contains(s.Plan.Reason, "no NVIDIA GPU") || !strings.Contains(s.Plan.Reason, "nothing to load") {
			t.Errorf("plan %+v", s.Plan)
		}
		s = statusJSON(t, root, "--require-gpu=false")
		if s.Plan.Action != "install" || s.Plan.Image != "registry.example.com/gpu/nvidia-driver:debian12-6.1.0-56-amd64-550.54.14" ||
			s.Plan.Tree != "/opt/nvidia/550.54.14/6.1.0-56-amd64" {
			t.Errorf("plan %+v", s.Plan)
		}
	})

	t.Run("the human form names the plan", func(t *testing.T) {
		r := run(t, nil, "--root", host(t, "flatcar-updated"), "status")
		for _, want := range []string{"Kernel", "6.1.77-flatcar", "Current", "does not match", "Plan", "install:", "fetch registry.example.com/gpu/nvidia-driver:3815.2.0-550.54.14"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("missing %q in:\n%s", want, r.stdout)
			}
		}
	})
}

func TestStatusReady(t *testing.T) {
	// The driver is loaded from the current tree: ready.
	r := run(t, nil, "--root", host(t, "flatcar-ready"), "status", "--ready")
	if r.code != 0 || !strings.Contains(r.stdout, "Plan") {
		t.Errorf("flatcar-ready: exit %d, stderr %q", r.code, r.stderr)
	}
	// After an OS update, before the daemon has run: not ready, and why.
	r = run(t, nil, "--root", host(t, "flatcar-updated"), "status", "--ready", "--json")
	if r.code != 3 || !strings.Contains(r.stderr, "not ready: install: ") || !strings.Contains(r.stdout, `"action": "install"`) {
		t.Errorf("flatcar-updated: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestPlan(t *testing.T) {
	t.Run("plan --json has action and reason", func(t *testing.T) {
		r := run(t, nil, "--root", host(t, "flatcar-ready"), "plan", "--json")
		var d struct{ Action, Reason string }
		if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || r.code != 0 {
			t.Fatalf("exit %d, %v: %s %s", r.code, err, r.stdout, r.stderr)
		}
		if d.Action != "none" || d.Reason == "" {
			t.Fatalf("%+v", d)
		}
	})
	t.Run("flags override the config file", func(t *testing.T) {
		r := run(t, nil, "--root", host(t, "flatcar-ready"), "--driver-version", "560.35.03", "plan")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "install:") || !strings.Contains(r.stdout, ":3815.2.0-560.35.03") {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
	t.Run("the environment overrides the config file", func(t *testing.T) {
		r := run(t, []string{"NVIDIA_DRIVERD_DRIVER_VERSION=560.35.03"}, "--root", host(t, "flatcar-ready"), "plan", "--json")
		if r.code != 0 || !strings.Contains(r.stdout, `"driver": "560.35.03"`) {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	})
}

func TestBadInput(t *testing.T) {
	t.Run("a host without os-release exits 1 naming the files", func(t *testing.T) {
		root := host(t, "flatcar-ready")
		os.Remove(filepath.Join(root, "etc/os-release"))
		os.Remove(filepath.Join(root, "usr/lib/os-release"))
		r := run(t, nil, "--root", root, "status")
		if r.code != 1 || !strings.Contains(r.stderr, "os-release") || !strings.Contains(r.stderr, root) {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("a bad config file exits 2 naming file, line and key", func(t *testing.T) {
		root := host(t, "flatcar-ready")
		cfg := filepath.Join(root, "etc/nvidia-driverd/config.yaml")
		if err := os.WriteFile(cfg, []byte("driver-version: 550.54.14\nkeep: many\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := run(t, nil, "--root", root, "status")
		if r.code != 2 || !strings.Contains(r.stderr, cfg) || !strings.Contains(r.stderr, "line 2") || !strings.Contains(r.stderr, "keep") {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("a missing --config file exits 2", func(t *testing.T) {
		r := run(t, nil, "--root", host(t, "flatcar-ready"), "--config", "/nonexistent/config.yaml", "status")
		if r.code != 2 || !strings.Contains(r.stderr, "/nonexistent/config.yaml") {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("a bad environment variable exits 2 naming it", func(t *testing.T) {
		r := run(t, []string{"NVIDIA_DRIVERD_MODULES=nvidia,../x"}, "--root", host(t, "flatcar-ready"), "plan")
		if r.code != 2 || !strings.Contains(r.stderr, "NVIDIA_DRIVERD_MODULES") {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("an unknown flag exits 2", func(t *testing.T) {
		if r := run(t, nil, "status", "--jsn"); r.code != 2 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("a relative --root exits 2", func(t *testing.T) {
		if r := run(t, nil, "--root", "rootfs", "status"); r.code != 2 || !strings.Contains(r.stderr, "--root") {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("a corrupt module in a tree is named, not a crash", func(t *testing.T) {
		root := host(t, "flatcar-ready")
		ko := filepath.Join(root, "opt/nvidia/550.54.14/3815.2.0/lib/modules/6.1.77-flatcar/video/nvidia-uvm.ko")
		if err := os.WriteFile(ko, []byte("\x7fELF garbage"), 0o644); err != nil {
			t.Fatal(err)
		}
		s := statusJSON(t, root)
		if s.Current == nil || s.Current.MatchesKernel || !strings.Contains(s.Current.Problem, "nvidia-uvm.ko") {
			t.Fatalf("current %+v", s.Current)
		}
	})
}

func TestConfigCommand(t *testing.T) {
	t.Run("config prints every key with its origin", func(t *testing.T) {
		r := run(t, []string{"NVIDIA_DRIVERD_KEEP=3"}, "--root", host(t, "flatcar-ready"), "--store", "/var/lib/nvidia", "config")
		for _, want := range []string{"driver-version: 550.54.14 # file", "keep: 3 # env", "store: /var/lib/nvidia # flag", "require-gpu: true # default"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("missing %q in:\n%s", want, r.stdout)
			}
		}
	})
}

func TestHelp(t *testing.T) {
	for _, cmd := range []string{"", "status", "plan", "config", "version"} {
		t.Run("help for "+cmd+" exits 0", func(t *testing.T) {
			r := run(t, nil, strings.Fields(cmd+" --help")...)
			if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
				t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
		})
	}
	t.Run("version prints a version", func(t *testing.T) {
		r := run(t, nil, "version")
		if r.code != 0 || !strings.HasPrefix(r.stdout, "nvidia-driverd ") {
			t.Fatalf("exit %d %s", r.code, r.stdout)
		}
	})
}

func TestUsageErrors(t *testing.T) {
	// Usage errors are found before any host file is read, so no --root.
	for _, tc := range []struct{ args, want string }{
		{"bogus", `unknown command "bogus" for "nvidia-driverd"`},
		{"stauts", `unknown command "stauts" for "nvidia-driverd"; did you mean "status"?`},
		{"--jsn status", "unknown flag: --jsn"},
		{"status --jsn", "unknown flag: --jsn"},
		{"status extra", `unknown command "extra" for "nvidia-driverd status"`},
		{"publish", "accepts 1 arg(s), received 0"},
		{"publish a b", "accepts 1 arg(s), received 2"},
		{"cdi-hook bogus", `unknown command "bogus" for "nvidia-driverd cdi-hook"`},
		{"cdi-hook update-ldcache extra", `unknown command "extra" for "nvidia-driverd cdi-hook update-ldcache"`},
		{"completion bogus", `unknown command "bogus" for "nvidia-driverd completion"`},
		{"help bogus", `unknown command "bogus" for "nvidia-driverd"`},
	} {
		t.Run(tc.args+" exits 2 and says so once", func(t *testing.T) {
			r := run(t, nil, strings.Fields(tc.args)...)
			if r.code != 2 || r.stdout != "" || r.stderr != "nvidia-driverd: "+tc.want+"\n" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want exit 2 and stderr %q", r.code, r.stdout, r.stderr, "nvidia-driverd: "+tc.want+"\n")
			}
		})
	}
	for _, args := range []string{"", "cdi-hook", "completion", "help status"} {
		t.Run(strings.TrimSpace("nvidia-driverd "+args)+" still prints help and exits 0", func(t *testing.T) {
			r := run(t, nil, strings.Fields(args)...)
			if r.code != 0 || !strings.Contains(r.stdout, "Usage:") || r.stderr != "" {
				t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
		})
	}
	t.Run("an error from the host is printed once too", func(t *testing.T) {
		root := host(t, "flatcar-ready")
		os.Remove(filepath.Join(root, "etc/os-release"))
		os.Remove(filepath.Join(root, "usr/lib/os-release"))
		r := run(t, nil, "--root", root, "status")
		if r.code != 1 || strings.Count(r.stderr, "read os-release") != 1 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
	t.Run("a failed fetch is printed once, as the log line", func(t *testing.T) {
		root := host(t, "flatcar-updated")
		r := run(t, nil, "--root", root, "--source", "oci-layout:/media/usb", "install", "--no-activate")
		if r.code != 1 || strings.Count(r.stderr, "index.json") != 1 || strings.Count(r.stderr, "fetch failed") != 1 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
	})
}

func TestTagTemplate(t *testing.T) {
	const fields = "the fields are .OSID, .OSVersion, .BuildID, .DriverVersion, .KernelRelease"
	check := func(t *testing.T, r result, want ...string) {
		t.Helper()
		if r.code != 2 || r.stdout != "" || strings.Contains(r.stderr, "source.") || strings.Contains(r.stderr, "Vars") {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		for _, w := range want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("missing %q in %s", w, r.stderr)
			}
		}
	}
	t.Run("an unknown field in --tag-template is named, with the fields there are", func(t *testing.T) {
		r := run(t, nil, "--root", host(t, "flatcar-ready"), "--tag-template", "{{.Foo}}", "config")
		check(t, r, `--tag-template: parse tag template "{{.Foo}}": unknown field .Foo; `+fields+"\n")
	})
	t.Run("one in the config file is named with its line, before anything runs", func(t *testing.T) {
		root := host(t, "flatcar-ready")
		cfg := filepath.Join(root, "etc/nvidia-driverd/config.yaml")
		if err := os.WriteFile(cfg, []byte("driver-version: 550.54.14\ntag-template: '{{.OSVersion}}-{{.Driver}}'\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		check(t, run(t, nil, "--root", root, "plan"), cfg, "line 2", "unknown field .Driver; "+fields)
	})
	t.Run("a function the template may not call is named, without Go types", func(t *testing.T) {
		r := run(t, []string{"NVIDIA_DRIVERD_TAG_TEMPLATE={{len .}}"}, "--root", host(t, "flatcar-ready"), "plan")
		check(t, r, "NVIDIA_DRIVERD_TAG_TEMPLATE", "function len is not allowed")
	})
}
