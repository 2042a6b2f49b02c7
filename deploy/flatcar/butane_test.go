package flatcar

import (
	"bytes"
	"flag"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coreos/ignition/v2/config/v3_3"
	"github.com/coreos/ignition/v2/config/v3_3/types"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	units "github.com/nvidia-driverd/nvidia-driverd/systemd"
)

var update = flag.Bool("update", false, "rewrite nvidia-driverd.ign from nvidia-driverd.bu")

const (
	butaneFile   = "nvidia-driverd.bu"
	ignitionFile = "nvidia-driverd.ign"
	binaryPath   = "/opt/bin/nvidia-driverd" // where systemd/nvidia-driverd.service runs it
)

// translated returns the Ignition config translated from the Butane file.
func translated(t *testing.T) []byte {
	t.Helper()
	bu, err := os.ReadFile(butaneFile)
	if err != nil {
		t.Fatal(err)
	}
	ign, err := Translate(bu, "")
	if err != nil {
		t.Fatal(err)
	}
	return ign
}

// parsed returns the translated config as Ignition's parser reads it,
// failing on any error or warning in its report (as butane --strict does).
func parsed(t *testing.T) types.Config {
	t.Helper()
	return parsedFrom(t, translated(t))
}

// parsedFrom is what Ignition makes of the config ign.
func parsedFrom(t *testing.T, ign []byte) types.Config {
	t.Helper()
	cfg, rpt, err := v3_3.Parse(ign)
	if err != nil {
		t.Fatalf("Ignition refuses the config: %v\n%s", err, rpt.String())
	}
	if len(rpt.Entries) > 0 {
		t.Fatalf("Ignition reports on the config:\n%s", rpt.String())
	}
	return cfg
}

func TestTheCommittedIgnitionConfigIsCurrent(t *testing.T) {
	ign := translated(t)
	if *update {
		if err := os.WriteFile(ignitionFile, ign, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	committed, err := os.ReadFile(ignitionFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, ign) {
		t.Errorf("%s is stale: run go test ./deploy/flatcar -update", ignitionFile)
	}
}

func TestIgnitionAcceptsTheConfig(t *testing.T) {
	cfg := parsed(t)
	if cfg.Ignition.Version != IgnitionVersion {
		t.Errorf("version %s, want %s", cfg.Ignition.Version, IgnitionVersion)
	}
}

// decode returns the contents of an inline (data URL) resource.
func decode(t *testing.T, r types.Resource) []byte {
	t.Helper()
	if r.Source == nil {
		t.Fatal("resource has no source")
	}
	enc, ok := strings.CutPrefix(*r.Source, "data:,")
	if !ok {
		t.Fatalf("source %.40q is not a data URL", *r.Source)
	}
	data, err := url.PathUnescape(enc)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(data)
}

// written returns what the Ignition config writes, by host path: files,
// units and drop-ins (the latter two under /etc/systemd/system, as
// Ignition writes them).
func written(t *testing.T, cfg types.Config) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, f := range cfg.Storage.Files {
		if f.Contents.Source != nil && strings.HasPrefix(*f.Contents.Source, "data:") {
			out[f.Path] = decode(t, f.Contents)
		}
	}
	for _, u := range cfg.Systemd.Units {
		if u.Contents != nil {
			out[path.Join("/etc/systemd/system", u.Name)] = []byte(*u.Contents)
		}
		for _, d := range u.Dropins {
			if d.Contents != nil {
				out[path.Join("/etc/systemd/system", u.Name+".d", d.Name)] = []byte(*d.Contents)
			}
		}
	}
	return out
}

func TestTheConfigInstallsTheRepositorysUnitsUnchanged(t *testing.T) {
	cfg := parsed(t)
	got := written(t, cfg)
	for _, f := range units.Layout {
		want, err := units.Files.ReadFile(f.Name)
		if err != nil {
			t.Fatal(err)
		}
		data, ok := got[f.Dest]
		switch {
		case !ok:
			t.Errorf("%s does not write %s (systemd/%s)", butaneFile, f.Dest, f.Name)
		case !bytes.Equal(data, want):
			t.Errorf("%s writes %s unlike systemd/%s: copy the file into %s again", butaneFile, f.Dest, f.Name, butaneFile)
		}
	}

	enabled := map[string]bool{}
	for _, u := range cfg.Systemd.Units {
		enabled[u.Name] = u.Enabled != nil && *u.Enabled
	}
	if !enabled["nvidia-driverd.service"] {
		t.Error("nvidia-driverd.service is not enabled")
	}
	if enabled["nvidia-persistenced.service"] {
		t.Error("nvidia-persistenced.service is enabled; nvidia-driverd starts it")
	}
}

func TestTheConfigInstallsTheBinaryAndAValidConfigFile(t *testing.T) {
	cfg := parsed(t)
	var bin *types.File
	for i, f := range cfg.Storage.Files {
		if f.Path == binaryPath {
			bin = &cfg.Storage.Files[i]
		}
	}
	if bin == nil {
		t.Fatalf("%s does not install %s", butaneFile, binaryPath)
	}
	if bin.Mode == nil || *bin.Mode != 0o755 {
		t.Errorf("%s has mode %v, want 0755", binaryPath, bin.Mode)
	}
	if bin.Contents.Verification.Hash == nil {
		t.Errorf("%s is fetched without a verification hash", binaryPath)
	}

	data, ok := written(t, cfg)[config.DefaultFile]
	if !ok {
		t.Fatalf("%s does not write %s", butaneFile, config.DefaultFile)
	}
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(config.Sources{File: p, FileRequired: true}); err != nil {
		t.Errorf("the config file the Butane config writes: %v", err)
	}
}

func TestTranslate(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bin"), []byte("binary\x00:, %\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	head := "variant: flatcar\nversion: 1.0.0\n"

	t.Run("local contents and octal modes", func(t *testing.T) {
		bu := head + "storage:\n  files:\n    - path: /opt/bin/x\n      mode: 0755\n      contents:\n        local: bin\n"
		ign, err := Translate([]byte(bu), dir)
		if err != nil {
			t.Fatal(err)
		}
		cfg, rpt, err := v3_3.Parse(ign)
		if err != nil || len(rpt.Entries) > 0 {
			t.Fatalf("%v\n%s", err, rpt.String())
		}
		f := cfg.Storage.Files[0]
		if f.Mode == nil || *f.Mode != 0o755 {
			t.Errorf("mode %v, want 0755", f.Mode)
		}
		if got := decode(t, f.Contents); string(got) != "binary\x00:, %\n" {
			t.Errorf("contents %q", got)
		}
	})

	for _, tc := range []struct{ name, bu, want string }{
		{"another variant", "variant: fcos\nversion: 1.0.0\n", "want flatcar 1.0.0"},
		{"another version", "variant: flatcar\nversion: 1.1.0\n", "want flatcar 1.0.0"},
		{"an unknown top-level field", head + "kernel_arguments:\n  should_exist: [quiet]\n", "not found"},
		{"an unknown file field", head + "storage:\n  files:\n    - path: /a\n      append:\n        - inline: x\n", "not found"},
		{"an unknown resource field", head + "storage:\n  files:\n    - path: /a\n      contents:\n        compression: gzip\n", "not found"},
		{"an unknown unit field", head + "systemd:\n  units:\n    - name: a.service\n      contents_local: a\n", "not found"},
		{"an unknown user field", head + "passwd:\n  users:\n    - name: a\n      uid: 5\n", "not found"},
		{"a key given twice", head + "variant: flatcar\n", "already defined"},
		{"two documents", head + "---\n" + head, "one YAML document"},
		{"source and inline", head + "storage:\n  files:\n    - path: /a\n      contents:\n        source: https://example.com/a\n        inline: a\n", "mutually exclusive"},
		{"local without a files directory", head + "storage:\n  files:\n    - path: /a\n      contents:\n        local: a\n", "--files-dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Translate([]byte(tc.bu), "")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Translate: %v, want an error with %q", err, tc.want)
			}
		})
	}

	for _, local := range []string{"../bin", "/etc/passwd", "missing"} {
		t.Run("local "+local, func(t *testing.T) {
			bu := head + "storage:\n  files:\n    - path: /a\n      contents:\n        local: " + local + "\n"
			if _, err := Translate([]byte(bu), dir); err == nil {
				t.Errorf("Translate read %s", local)
			}
		})
	}
}
