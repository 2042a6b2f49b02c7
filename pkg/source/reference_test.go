package source

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestTemplate(t *testing.T) {
	flatcar := Vars{OSID: "flatcar", OSVersion: "3815.2.0", DriverVersion: "550.54.14", KernelRelease: "6.1.77-flatcar"}
	debian := Vars{OSID: "debian", OSVersion: "12", DriverVersion: "550.54.14", KernelRelease: "6.1.0-56-amd64"}
	cases := []struct {
		name, text string
		vars       Vars
		want       string
		wantErr    string
	}{
		{name: "the default gives the original os-driver scheme", text: DefaultTagTemplate, vars: flatcar, want: "3815.2.0-550.54.14"},
		{name: "a generic host keys by kernel release", text: "{{.OSID}}{{.OSVersion}}-{{.KernelRelease}}-{{.DriverVersion}}", vars: debian, want: "debian12-6.1.0-56-amd64-550.54.14"},
		{name: "a flavour suffix is plain text", text: "{{.OSVersion}}-{{.DriverVersion}}-tesla", vars: flatcar, want: "3815.2.0-550.54.14-tesla"},
		{name: "an empty field used by the template is an error", text: DefaultTagTemplate, vars: Vars{DriverVersion: "550.54.14"}, wantErr: "OSVersion is unknown"},
		{name: "a result with a slash is not a tag", text: "{{.OSVersion}}/x", vars: flatcar, wantErr: "not a valid tag"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, err := ParseTemplate(tc.text)
			if err != nil {
				if tc.wantErr != "" && strings.Contains(err.Error(), tc.wantErr) {
					return
				}
				t.Fatal(err)
			}
			got, err := tmpl.Render(tc.vars)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v; want error with %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}

	t.Run("parsing refuses an unknown field", func(t *testing.T) {
		if _, err := ParseTemplate("{{.Kernel}}"); err == nil {
			t.Fatal("accepted")
		}
	})
	t.Run("an unknown field is named with the fields there are, in the order of Vars", func(t *testing.T) {
		var names []string
		for _, f := range reflect.VisibleFields(reflect.TypeFor[Vars]()) {
			names = append(names, "."+f.Name)
		}
		list := "; the fields are " + strings.Join(names, ", ")
		for text, unknown := range map[string]string{
			"{{.Foo}}":                 ".Foo",
			"{{.OSVersion}}-{{.osid}}": ".osid",
			"{{.Foo.Bar}}":             ".Foo",
			`{{printf "%s-x" .Foo}}`:   ".Foo",
			"{{if .Foo}}a{{end}}":      ".Foo",
			"{{with .Foo}}a{{end}}":    ".Foo",
			"{{$.Foo}}":                ".Foo",
			"{{(.).Foo}}":              ".Foo",
			`{{define "x"}}{{.Foo}}{{end}}{{template "x" .}}`: ".Foo",
		} {
			_, err := ParseTemplate(text)
			want := fmt.Sprintf("parse tag template %q: unknown field %s%s", text, unknown, list)
			if err == nil || err.Error() != want {
				t.Errorf("%s: got %v, want %q", text, err, want)
			}
		}
	})
	t.Run("a field of a field is unknown: the fields are plain values", func(t *testing.T) {
		_, err := ParseTemplate("{{.OSID.Name}}")
		if err == nil || !strings.Contains(err.Error(), "unknown field .OSID.Name") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("errors name no Go types", func(t *testing.T) {
		for _, text := range []string{"{{.Foo}}", "{{$x := .}}{{$x.Foo}}", `{{index . "OSID"}}`, "{{len .}}", "{{call .}}"} {
			_, err := ParseTemplate(text)
			if err == nil || strings.Contains(err.Error(), "source.") || strings.Contains(err.Error(), "Vars") {
				t.Errorf("%s: got %v", text, err)
			}
		}
		// A branch the dry run on a Flatcar host does not take is
		// checked all the same.
		_, err := ParseTemplate(`{{if eq .OSID "flatcar"}}{{.OSVersion}}{{else}}{{len .}}{{end}}`)
		if err == nil || !strings.Contains(err.Error(), "function len is not allowed") || strings.Contains(err.Error(), "source.") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("the image-subdir template is checked the same way", func(t *testing.T) {
		_, err := ParseSubdir("opt/nvidia/{{.Driver}}")
		if err == nil || !strings.Contains(err.Error(), `parse image-subdir "opt/nvidia/{{.Driver}}": unknown field .Driver; the fields are .OSID,`) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("the field table follows Vars", func(t *testing.T) {
		vf := reflect.VisibleFields(reflect.TypeFor[Vars]())
		if len(vf) != len(fields) {
			t.Fatalf("Vars has %d fields, the table %d", len(vf), len(fields))
		}
		v := reflect.New(reflect.TypeFor[Vars]()).Elem()
		for i, f := range vf {
			v.Field(i).SetString("value of " + f.Name)
		}
		for i, f := range fields {
			if f.name != vf[i].Name || f.value(v.Interface().(Vars)) != "value of "+vf[i].Name {
				t.Errorf("table entry %d is %s, Vars field %d is %s", i, f.name, i, vf[i].Name)
			}
		}
	})
	t.Run("it knows when the kernel release matters", func(t *testing.T) {
		a, _ := ParseTemplate(DefaultTagTemplate)
		b, _ := ParseTemplate("{{.KernelRelease}}-{{.DriverVersion}}")
		if a.UsesKernelRelease() || !b.UsesKernelRelease() {
			t.Fatal("UsesKernelRelease is wrong")
		}
	})
}

func TestReference(t *testing.T) {
	t.Run("repository and tag join into a full reference", func(t *testing.T) {
		ref, err := Reference("ghcr.io/example/nvidia-driver", "3815.2.0-550.54.14")
		if err != nil || ref.String() != "ghcr.io/example/nvidia-driver:3815.2.0-550.54.14" {
			t.Fatalf("got %v, %v", ref, err)
		}
	})
	t.Run("no repository is an error", func(t *testing.T) {
		if _, err := Reference("", "x"); err == nil {
			t.Fatal("accepted")
		}
	})
	t.Run("a repository must name its registry", func(t *testing.T) {
		if err := ValidateRepository("nvidia-driver"); err == nil {
			t.Fatal("accepted a Docker Hub shorthand")
		}
		if err := ValidateRepository("localhost:5000/nvidia-driver"); err != nil {
			t.Fatal(err)
		}
	})
}
