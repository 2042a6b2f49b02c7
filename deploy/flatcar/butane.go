// Package flatcar translates the part of Butane's Flatcar v1.0.0
// specification that nvidia-driverd.bu uses into an Ignition 3.3.0
// config, so that the repository can check its Butane config without the
// butane binary (whose Go module the Go proxy does not serve). A field it
// does not know is an error, never dropped. `butane --strict` is the real
// tool; its output differs in form (it may gzip file contents) but not in
// meaning.
package flatcar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/coreos/ignition/v2/config/v3_3/types"
	"go.yaml.in/yaml/v3"
)

// The Butane variant and version translated, and the Ignition version
// they produce.
const (
	Variant         = "flatcar"
	Version         = "1.0.0"
	IgnitionVersion = "3.3.0"
)

// The Butane fields understood, with Butane's names.
type butaneConfig struct {
	Variant string   `yaml:"variant"`
	Version string   `yaml:"version"`
	Passwd  *passwd  `yaml:"passwd"`
	Storage *storage `yaml:"storage"`
	Systemd *systemd `yaml:"systemd"`
}

type passwd struct {
	Users []user `yaml:"users"`
}

type user struct {
	Name         string  `yaml:"name"`
	System       *bool   `yaml:"system"`
	NoCreateHome *bool   `yaml:"no_create_home"`
	HomeDir      *string `yaml:"home_dir"`
	Shell        *string `yaml:"shell"`
	Gecos        *string `yaml:"gecos"`
}

type storage struct {
	Directories []directory `yaml:"directories"`
	Files       []file      `yaml:"files"`
}

type directory struct {
	Path      string `yaml:"path"`
	Mode      *int   `yaml:"mode"`
	Overwrite *bool  `yaml:"overwrite"`
}

type file struct {
	Path      string    `yaml:"path"`
	Mode      *int      `yaml:"mode"`
	Overwrite *bool     `yaml:"overwrite"`
	Contents  *resource `yaml:"contents"`
}

type resource struct {
	Source       *string `yaml:"source"`
	Inline       *string `yaml:"inline"`
	Local        *string `yaml:"local"`
	Verification *struct {
		Hash *string `yaml:"hash"`
	} `yaml:"verification"`
}

type systemd struct {
	Units []unit `yaml:"units"`
}

type unit struct {
	Name     string   `yaml:"name"`
	Enabled  *bool    `yaml:"enabled"`
	Mask     *bool    `yaml:"mask"`
	Contents *string  `yaml:"contents"`
	Dropins  []dropin `yaml:"dropins"`
}

type dropin struct {
	Name     string  `yaml:"name"`
	Contents *string `yaml:"contents"`
}

// Translate returns the Ignition config, as indented JSON ending in a
// newline, for the Butane config bu. Contents named by `local` are read
// under filesDir, as butane's --files-dir.
//
// It returns an error naming the line for a field it does not know, and
// an error for another variant or version, a resource with more than one
// of source, inline and local, a `local` without filesDir or leading
// outside it, or a file that cannot be read.
func Translate(bu []byte, filesDir string) ([]byte, error) {
	dec := yaml.NewDecoder(bytes.NewReader(bu))
	dec.KnownFields(true)
	var c butaneConfig
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("read Butane config: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("read Butane config: want one YAML document")
	}
	if c.Variant != Variant || c.Version != Version {
		return nil, fmt.Errorf("variant %q version %q: want %s %s", c.Variant, c.Version, Variant, Version)
	}

	out := types.Config{Ignition: types.Ignition{Version: IgnitionVersion}}
	if c.Passwd != nil {
		for _, u := range c.Passwd.Users {
			out.Passwd.Users = append(out.Passwd.Users, types.PasswdUser{
				Name: u.Name, System: u.System, NoCreateHome: u.NoCreateHome,
				HomeDir: u.HomeDir, Shell: u.Shell, Gecos: u.Gecos,
			})
		}
	}
	if c.Storage != nil {
		for _, d := range c.Storage.Directories {
			var dir types.Directory
			dir.Path, dir.Overwrite, dir.Mode = d.Path, d.Overwrite, d.Mode
			out.Storage.Directories = append(out.Storage.Directories, dir)
		}
		for _, f := range c.Storage.Files {
			var file types.File
			file.Path, file.Overwrite, file.Mode = f.Path, f.Overwrite, f.Mode
			if f.Contents != nil {
				r, err := f.Contents.translate(filesDir)
				if err != nil {
					return nil, fmt.Errorf("file %s: %w", f.Path, err)
				}
				file.Contents = r
			}
			out.Storage.Files = append(out.Storage.Files, file)
		}
	}
	if c.Systemd != nil {
		for _, u := range c.Systemd.Units {
			tu := types.Unit{Name: u.Name, Enabled: u.Enabled, Mask: u.Mask, Contents: u.Contents}
			for _, d := range u.Dropins {
				tu.Dropins = append(tu.Dropins, types.Dropin{Name: d.Name, Contents: d.Contents})
			}
			out.Systemd.Units = append(out.Systemd.Units, tu)
		}
	}
	return marshal(out)
}

// translate returns r as an Ignition resource: inline and local contents
// become data URLs.
func (r *resource) translate(filesDir string) (types.Resource, error) {
	var out types.Resource
	n := 0
	for _, p := range []*string{r.Source, r.Inline, r.Local} {
		if p != nil {
			n++
		}
	}
	if n > 1 {
		return out, errors.New("contents: source, inline and local are mutually exclusive")
	}
	switch {
	case r.Source != nil:
		out.Source = r.Source
	case r.Inline != nil:
		s := DataURL([]byte(*r.Inline))
		out.Source = &s
	case r.Local != nil:
		data, err := readLocal(filesDir, *r.Local)
		if err != nil {
			return out, err
		}
		s := DataURL(data)
		out.Source = &s
	}
	if r.Verification != nil {
		out.Verification.Hash = r.Verification.Hash
	}
	return out, nil
}

// readLocal reads the relative path local under filesDir. It returns an
// error when filesDir is "", or local is absolute or leads outside it.
func readLocal(filesDir, local string) ([]byte, error) {
	if filesDir == "" {
		return nil, fmt.Errorf("contents: local %q needs a files directory (butane --files-dir)", local)
	}
	if !filepath.IsLocal(local) {
		return nil, fmt.Errorf("contents: local %q must be a relative path inside the files directory", local)
	}
	root, err := os.OpenRoot(filesDir)
	if err != nil {
		return nil, fmt.Errorf("contents: %w", err)
	}
	defer root.Close()
	data, err := root.ReadFile(local)
	if err != nil {
		return nil, fmt.Errorf("contents: %w", err)
	}
	return data, nil
}

// DataURL returns data as an RFC 2397 data URL, percent-encoding every
// byte but RFC 3986's unreserved characters.
func DataURL(data []byte) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.WriteString("data:,")
	for _, c := range data {
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// marshal returns c as indented JSON without empty objects and lists,
// which Ignition's types would otherwise write for every unset section.
func marshal(c types.Config) ([]byte, error) {
	raw, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false) // keep the units' "->" readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(prune(v)); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// prune drops empty objects and lists from v, depth first.
func prune(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = prune(e)
			if isEmpty(t[k]) {
				delete(t, k)
			}
		}
	case []any:
		for i, e := range t {
			t[i] = prune(e)
		}
	}
	return v
}

func isEmpty(v any) bool {
	switch t := v.(type) {
	case map[string]any:
		return len(t) == 0
	case []any:
		return len(t) == 0
	}
	return false
}
