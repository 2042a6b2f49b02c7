package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func flags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestLoad(t *testing.T) {
	t.Parallel()
	t.Run("nothing set gives the defaults and a missing default file is fine", func(t *testing.T) {
		l, err := Load(Sources{File: filepath.Join(t.TempDir(), "absent.yaml")})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(l.Config, Default()) {
			t.Fatalf("got %+v, want defaults %+v", l.Config, Default())
		}
		if l.File != "" || l.Origins["keep"] != FromDefault {
			t.Fatalf("file %q origin %q", l.File, l.Origins["keep"])
		}
	})

	t.Run("a missing named file is an error", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "absent.yaml")
		_, err := Load(Sources{File: p, FileRequired: true})
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Fatalf("want an error naming %s, got %v", p, err)
		}
	})

	t.Run("a file sets every kind of key", func(t *testing.T) {
		p := writeFile(t, `# driver for the GPU pool
driver-version: "550.54.14"
repository: registry.example.com/gpu/nvidia-driver
tag-template: "{{.OSID}}-{{.OSVersion}}-{{.DriverVersion}}"
modules:
  - nvidia
  - nvidia-uvm
store: /var/lib/nvidia/
keep: 3
require-gpu: false
source: oci-layout:/media/usb/nvidia
mirrors: [mirror.example.com:5000/nvidia-driver]
insecure-registries: [mirror.example.com:5000]
digests:
  3815.2.0-550.54.14: sha256:`+strings.Repeat("ab", 32)+`
platform: linux/arm64
image-subdir: /opt/nvidia/{{.DriverVersion}}/{{.OSVersion}}/
max-image-bytes: 1000000
max-image-entries: 500
fetch-timeout: 10m
stall-timeout: 45s
module-params:
  nvidia: NVreg_EnableMSI=1  NVreg_PreserveVideoMemoryAllocations=1
  nvidia-drm: modeset=1
library-mode: ldconfig
failure-policy: keep-previous
persistenced: ""
prefetch: false
cdi-dir: /etc/cdi/
metrics-addr: 127.0.0.1:9402
metrics-textfile: /var/lib/node_exporter/textfile/nvidia-driverd.prom
`)
		l, err := Load(Sources{File: p, FileRequired: true})
		if err != nil {
			t.Fatal(err)
		}
		want := Config{
			DriverVersion: "550.54.14",
			Repository:    "registry.example.com/gpu/nvidia-driver",
			TagTemplate:   "{{.OSID}}-{{.OSVersion}}-{{.DriverVersion}}",
			Modules:       []string{"nvidia", "nvidia-uvm"},
			Store:         "/var/lib/nvidia",
			Keep:          3,
			RequireGPU:    false,

			Source:             "oci-layout:/media/usb/nvidia",
			Mirrors:            []string{"mirror.example.com:5000/nvidia-driver"},
			InsecureRegistries: []string{"mirror.example.com:5000"},
			Digests:            map[string]string{"3815.2.0-550.54.14": "sha256:" + strings.Repeat("ab", 32)},
			Platform:           "linux/arm64",
			ImageSubdir:        "opt/nvidia/{{.DriverVersion}}/{{.OSVersion}}",
			MaxImageBytes:      1000000,
			MaxImageEntries:    500,
			FetchTimeout:       10 * time.Minute,
			StallTimeout:       45 * time.Second,

			ModuleParams:  map[string]string{"nvidia": "NVreg_EnableMSI=1 NVreg_PreserveVideoMemoryAllocations=1", "nvidia_drm": "modeset=1"},
			LibraryMode:   "ldconfig",
			FailurePolicy: "keep-previous",
			Persistenced:  "",

			Prefetch:        false,
			CDIDir:          "/etc/cdi",
			MetricsAddr:     "127.0.0.1:9402",
			MetricsTextfile: "/var/lib/node_exporter/textfile/nvidia-driverd.prom",
		}
		if !reflect.DeepEqual(l.Config, want) {
			t.Fatalf("got %+v\nwant %+v", l.Config, want)
		}
		if l.File != p || l.Origins["modules"] != FromFile {
			t.Fatalf("file %q origin %q", l.File, l.Origins["modules"])
		}
	})

	t.Run("flag beats environment beats file", func(t *testing.T) {
		p := writeFile(t, "driver-version: 535.161.07\nkeep: 5\nstore: /srv/nvidia\n")
		l, err := Load(Sources{
			File: p, FileRequired: true,
			Environ: []string{"NVIDIA_DRIVERD_DRIVER_VERSION=550.54.14", "NVIDIA_DRIVERD_KEEP=4", "NVIDIA_DRIVERD_MODULES=nvidia, nvidia-uvm"},
			Flags:   flags(t, "--driver-version=560.35.03"),
		})
		if err != nil {
			t.Fatal(err)
		}
		c := l.Config
		if c.DriverVersion != "560.35.03" || c.Keep != 4 || c.Store != "/srv/nvidia" {
			t.Fatalf("got %+v", c)
		}
		if !reflect.DeepEqual(c.Modules, []string{"nvidia", "nvidia-uvm"}) {
			t.Fatalf("modules from env: %q", c.Modules)
		}
		pinned, err := Load(Sources{File: "/nonexistent", Environ: []string{"NVIDIA_DRIVERD_DIGESTS=a=sha256:" + strings.Repeat("0", 64) + ", b=sha256:" + strings.Repeat("1", 64)}})
		if err != nil || len(pinned.Config.Digests) != 2 || pinned.Config.Digests["b"] != "sha256:"+strings.Repeat("1", 64) {
			t.Fatalf("digests from env: %v, %v", pinned.Config.Digests, err)
		}
		got := map[string]Origin{"driver-version": FromFlag, "keep": FromEnv, "store": FromFile, "repository": FromDefault}
		for k, want := range got {
			if l.Origins[k] != want {
				t.Errorf("origin of %s = %s, want %s", k, l.Origins[k], want)
			}
		}
	})

	t.Run("an empty module list, from the file or a flag, loads none", func(t *testing.T) {
		l, err := Load(Sources{File: "/nonexistent", Flags: flags(t, "--modules=")})
		if err != nil || l.Config.Modules == nil || len(l.Config.Modules) != 0 {
			t.Fatalf("%q, %v", l.Config.Modules, err)
		}
		f := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(f, []byte("modules: []\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		l, err = Load(Sources{File: f})
		if err != nil || l.Config.Modules == nil || len(l.Config.Modules) != 0 {
			t.Fatalf("%q, %v", l.Config.Modules, err)
		}
	})
}

func TestLoadRejects(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, file string
		env        []string
		want       []string // substrings of the error
	}{
		{name: "an unknown key, with its line", file: "keep: 2\ndrivr-version: 550.54.14\n", want: []string{"line 2", `unknown key "drivr-version"`}},
		{name: "a bad integer, naming key and line", file: "\n\nkeep: two\n", want: []string{"line 3", "keep", `"two"`}},
		{name: "a zero keep", file: "keep: 0\n", want: []string{"keep", "at least 1"}},
		{name: "a bad boolean", file: "require-gpu: maybe\n", want: []string{"line 1", "require-gpu"}},
		{name: "a relative store", file: "store: opt/nvidia\n", want: []string{"store", "absolute"}},
		{name: "a malformed driver version", file: "driver-version: latest\n", want: []string{"driver-version", `"latest"`}},
		{name: "a repository without registry host", file: "repository: nvidia-driver\n", want: []string{"line 1", "repository"}},
		{name: "a repository with a tag", file: "repository: ghcr.io/x/y:latest\n", want: []string{"repository"}},
		{name: "a template with an unknown field", file: "tag-template: '{{.OSVersoin}}-{{.DriverVersion}}'\n", want: []string{"tag-template", "OSVersoin"}},
		{name: "a template that yields an invalid tag", file: "tag-template: '{{.OSVersion}}/{{.DriverVersion}}'\n", want: []string{"tag-template", "not a valid tag"}},
		{name: "a template syntax error", file: "tag-template: '{{.OSVersion'\n", want: []string{"tag-template"}},
		{name: "a list where a value belongs", file: "keep: [1, 2]\n", want: []string{"keep", "single value"}},
		{name: "a mapping where a value belongs", file: "store:\n  path: /x\n", want: []string{"store", "mapping"}},
		{name: "a key given twice", file: "keep: 2\nkeep: 3\n", want: []string{"line 2", "already set on line 1"}},
		{name: "a module listed twice", file: "modules: [nvidia, nvidia_uvm, nvidia-uvm]\n", want: []string{"modules", "twice"}},
		{name: "a bad module name", file: "modules: [nvidia, ../evil]\n", want: []string{"modules", "../evil"}},
		{name: "a document that is not a mapping", file: "- keep\n", want: []string{"line 1", "mapping"}},
		{name: "broken YAML", file: "keep: [\n", want: []string{"config"}},
		{name: "a source that is not an OCI layout path", file: "source: /media/usb\n", want: []string{"source", "oci-layout:"}},
		{name: "a malformed mirror", file: "mirrors: [nvidia-driver]\n", want: []string{"mirrors", "nvidia-driver"}},
		{name: "an insecure registry with a path", file: "insecure-registries: [host:5000/x]\n", want: []string{"insecure-registries", "host:5000/x"}},
		{name: "a digest pin that is not sha256", file: "digests:\n  x: md5:abc\n", want: []string{"line 2", "digests", "pin for x"}},
		{name: "digests as a list", file: "digests: [a, b]\n", want: []string{"digests", "single value"}},
		{name: "a bad platform", file: "platform: amd64\n", want: []string{"platform", "linux/amd64"}},
		{name: "an image-subdir that climbs", file: "image-subdir: ../{{.OSVersion}}\n", want: []string{"image-subdir", "clean relative"}},
		{name: "a zero byte limit", file: "max-image-bytes: 0\n", want: []string{"max-image-bytes"}},
		{name: "a module parameter without a value", file: "module-params:\n  nvidia: NVreg_EnableMSI\n", want: []string{"line 2", "module-params", "NVreg_EnableMSI"}},
		{name: "an unknown library mode", file: "library-mode: copy\n", want: []string{"library-mode", "copy"}},
		{name: "an unknown failure policy", file: "failure-policy: retry\n", want: []string{"failure-policy", "retry"}},
		{name: "a persistenced that is not a service", file: "persistenced: nvidia.timer\n", want: []string{"persistenced"}},
		{name: "a relative cdi-dir", file: "cdi-dir: run/cdi\n", want: []string{"line 1", "cdi-dir", "absolute"}},
		{name: "a metrics address without a port", file: "metrics-addr: 127.0.0.1\n", want: []string{"metrics-addr", "host:port"}},
		{name: "a metrics textfile node_exporter ignores", file: "metrics-textfile: /var/lib/node_exporter/nvidia.txt\n", want: []string{"metrics-textfile", ".prom"}},
		{name: "a bad environment value", env: []string{"NVIDIA_DRIVERD_KEEP=-1"}, want: []string{"NVIDIA_DRIVERD_KEEP", "keep"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, tc.file)
			_, err := Load(Sources{File: p, FileRequired: true, Environ: tc.env})
			if err == nil {
				t.Fatal("Load accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if tc.file != "" && tc.env == nil && !strings.Contains(err.Error(), p) {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestYAMLRoundTrip(t *testing.T) {
	t.Parallel()
	t.Run("the printed configuration loads back to the same values", func(t *testing.T) {
		l, err := Load(Sources{File: "/nonexistent", Environ: []string{"NVIDIA_DRIVERD_DRIVER_VERSION=550.54.14"}})
		if err != nil {
			t.Fatal(err)
		}
		out, err := l.YAML()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), "driver-version: 550.54.14 # env") {
			t.Errorf("origin comment missing:\n%s", out)
		}
		var probe yaml.Node
		if err := yaml.Unmarshal(out, &probe); err != nil {
			t.Fatal(err)
		}
		back, err := Load(Sources{File: writeFile(t, string(out)), FileRequired: true})
		if err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(back.Config, l.Config) {
			t.Fatalf("got %+v, want %+v", back.Config, l.Config)
		}
	})
}

func TestEnvName(t *testing.T) {
	t.Parallel()
	if got := EnvName("driver-version"); got != "NVIDIA_DRIVERD_DRIVER_VERSION" {
		t.Fatal(got)
	}
}
