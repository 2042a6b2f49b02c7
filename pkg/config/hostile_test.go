package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestHostileConfiguration is the table of settings an attacker, or a
// careless hand, might write: each is refused at load, quickly, with an
// error naming the key, and never echoing a password.
func TestHostileConfiguration(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, key, value string
		want             string // in the error; "" means the value loads
		never            string // must not appear in the error
	}{
		{"a range of 10^9 (out of memory when run)", "TAG_TEMPLATE", "{{range 1000000000}}aaaa{{end}}", "range is not allowed", ""},
		{"with", "TAG_TEMPLATE", "{{with .OSVersion}}{{.}}{{end}}", "with is not allowed", ""},
		{"printf, which can build a string of any size", "TAG_TEMPLATE", `{{printf "%0999999999d" 1}}`, "function printf is not allowed", ""},
		{"define and template", "TAG_TEMPLATE", `{{define "x"}}a{{end}}{{template "x"}}`, "not allowed", ""},
		{"a variable", "TAG_TEMPLATE", "{{$v := .OSVersion}}{{$v}}", "variables are not allowed", ""},
		{"a template of 2 KiB", "TAG_TEMPLATE", strings.Repeat("a", 2048), "longer than 1024", ""},
		{"a tag longer than 128", "TAG_TEMPLATE", strings.Repeat("{{.DriverVersion}}", 20), "longer than 128", ""},
		{"a tag starting with a dot", "TAG_TEMPLATE", ".{{.OSVersion}}", "is not a valid tag", ""},
		{"a tag starting with a dash", "TAG_TEMPLATE", "-{{.OSVersion}}", "is not a valid tag", ""},
		{"a tag with a slash", "TAG_TEMPLATE", "{{.OSVersion}}/x", "is not a valid tag", ""},
		{"string functions and comparisons are fine", "TAG_TEMPLATE", `{{if eq .OSID "flatcar"}}{{replace "." "_" .OSVersion | lower}}{{else}}x{{end}}`, "", ""},
		{"nested replaces that multiply a string", "TAG_TEMPLATE", "{{" + strings.Repeat(`replace "3" "3333333333" (`, 9) + `replace "3" "3333333333" .OSVersion` + strings.Repeat(")", 9) + "}}", "longer than 1024", ""},
		{"replace of nothing", "TAG_TEMPLATE", `{{replace "" "x" .OSVersion}}`, "say what to replace", ""},
		{"numbers in comparisons are fine", "TAG_TEMPLATE", `{{if eq 1 1}}{{.OSVersion}}{{end}}-{{.DriverVersion}}`, "", ""},
		{"an image-subdir with range", "IMAGE_SUBDIR", "{{range 100000000}}a/{{end}}", "range is not allowed", ""},
		{"a repository that climbs", "REPOSITORY", "127.0.0.1:5000/../etc", `a path component is ".."`, ""},
		{"a repository with a scheme", "REPOSITORY", "https://registry.example.com/nvidia", "no scheme", ""},
		{"a repository with a password", "REPOSITORY", "user:hunter2@registry.example.com/nvidia", "credentials", "hunter2"},
		{"a mirror with a password", "MIRRORS", "user:hunter2@mirror.example.com/nvidia", "credentials", "hunter2"},
		{"a repository with a digest", "REPOSITORY", "registry.example.com/nvidia@sha256:" + strings.Repeat("0", 64), "'@'", ""},
		{"a plain repository is fine", "REPOSITORY", "registry.example.com:5000/gpu/nvidia-driver", "", ""},
		{"a zero fetch-timeout", "FETCH_TIMEOUT", "0s", "positive duration", ""},
		{"a stall-timeout that is no duration", "STALL_TIMEOUT", "soon", "positive duration", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			_, err := Load(Sources{File: "/nonexistent", Environ: []string{EnvPrefix + c.key + "=" + c.value}})
			if took := time.Since(start); took > time.Second {
				t.Errorf("took %v", took)
			}
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want == "":
				return
			case err == nil || !strings.Contains(err.Error(), c.want):
				t.Fatalf("err = %v, want one with %q", err, c.want)
			case !strings.Contains(err.Error(), EnvPrefix+c.key):
				t.Errorf("the error does not name %s: %v", EnvPrefix+c.key, err)
			case c.never != "" && strings.Contains(err.Error(), c.never):
				t.Errorf("the error repeats %q: %v", c.never, err)
			}
		})
	}
}

func TestMisspellings(t *testing.T) {
	t.Parallel()
	t.Run("a misspelt key in the file is named with the key meant", func(t *testing.T) {
		p := t.TempDir() + "/config.yaml"
		if err := os.WriteFile(p, []byte("driver-verison: 550.54.14\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(Sources{File: p, FileRequired: true})
		if err == nil || !strings.Contains(err.Error(), `unknown key "driver-verison"; did you mean driver-version?`) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a misspelt environment variable is warned about, an unrelated one is not", func(t *testing.T) {
		l, err := Load(Sources{File: "/nonexistent", Environ: []string{
			EnvPrefix + "DRIVER_VERISON=550.54.14", EnvPrefix + "BIN=/tmp/x", EnvPrefix + "KEEP=3"}})
		if err != nil {
			t.Fatal(err)
		}
		want := "environment NVIDIA_DRIVERD_DRIVER_VERISON is not a setting; did you mean NVIDIA_DRIVERD_DRIVER_VERSION?"
		if len(l.Warnings) != 1 || l.Warnings[0] != want {
			t.Errorf("warnings %q, want [%q]", l.Warnings, want)
		}
	})
}
