package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// Origin says where a key's effective value came from.
type Origin string

// The origins, in rising precedence.
const (
	FromDefault Origin = "default"
	FromFile    Origin = "file"
	FromEnv     Origin = "env"
	FromFlag    Origin = "flag"
)

// Sources are the inputs Load merges.
type Sources struct {
	// File is the YAML file to read. Empty means DefaultFile.
	File string
	// FileRequired is true when the file was named explicitly (--config):
	// then a missing file is an error; a missing DefaultFile is not.
	FileRequired bool
	// Environ is the environment as "KEY=value" strings (os.Environ()).
	Environ []string
	// Flags holds the flags registered by BindFlags; only flags the user
	// set are applied. Nil means no flags.
	Flags *pflag.FlagSet
}

// Loaded is the result of Load: the configuration and where each value
// came from.
type Loaded struct {
	Config  Config
	Origins map[string]Origin // key name -> origin
	File    string            // the file read, "" when none was
	// Warnings are things worth telling the user that do not stop the
	// load: an environment variable that looks like a misspelt key.
	Warnings []string
}

// BindFlags registers one flag per key on fs. Values are parsed and
// validated by Load, so flags, the environment and the file share one
// parser and one set of error messages.
// Each flag shows its kind and its default, and is marked with
// SettingAnnotation so that help can list the settings apart.
func BindFlags(fs *pflag.FlagSet) {
	def := Default()
	for _, k := range keys {
		v := &settingValue{kind: k.kind}
		fs.Var(v, k.name, k.usage+" (env "+EnvName(k.name)+")")
		f := fs.Lookup(k.name)
		f.DefValue = formatDefault(k.get(def))
		f.Annotations = map[string][]string{SettingAnnotation: {"true"}}
	}
}

// maxFileBytes bounds the config file read: a few dozen keys.
const maxFileBytes = 1 << 20

// Load merges defaults, the file, the environment and the flags, in that
// order of rising precedence. It returns an error naming the file and line,
// the environment variable or the flag for a malformed or unknown setting,
// and an error for a missing file only when FileRequired is set.
func Load(src Sources) (Loaded, error) {
	out := Loaded{Config: Default(), Origins: map[string]Origin{}}
	for _, k := range keys {
		out.Origins[k.name] = FromDefault
	}

	file := src.File
	if file == "" {
		file = DefaultFile
	}
	data, err := hostfs.ReadRegular(file, maxFileBytes)
	switch {
	case err == nil:
		if err := applyYAML(&out, file, data); err != nil {
			return Loaded{}, err
		}
		out.File = file
	case errors.Is(err, fs.ErrNotExist) && !src.FileRequired:
		// The default file is optional.
	default:
		return Loaded{}, fmt.Errorf("read config: %w", err)
	}

	env := map[string]string{}
	for _, kv := range src.Environ {
		if name, value, ok := strings.Cut(kv, "="); ok {
			env[name] = value
		}
	}
	out.Warnings = append(out.Warnings, misspeltEnv(env)...)
	for _, k := range keys {
		value, ok := env[EnvName(k.name)]
		if !ok {
			continue
		}
		if err := apply(&out.Config, k, value); err != nil {
			return Loaded{}, fmt.Errorf("environment %s: %s: %w", EnvName(k.name), k.name, err)
		}
		out.Origins[k.name] = FromEnv
	}

	if src.Flags != nil {
		for _, k := range keys {
			f := src.Flags.Lookup(k.name)
			if f == nil || !f.Changed {
				continue
			}
			if err := apply(&out.Config, k, f.Value.String()); err != nil {
				return Loaded{}, fmt.Errorf("flag --%s: %w", k.name, err)
			}
			out.Origins[k.name] = FromFlag
		}
	}
	return out, nil
}

// apply sets a key from its one-string form (environment or flag): lists
// are comma-separated.
func apply(c *Config, k key, value string) error {
	if k.kind == kindList || k.kind == kindMap {
		return k.set(c, splitList(value))
	}
	return k.set(c, []string{value})
}

// applyYAML applies a config file strictly: the document must be a mapping
// of known keys, each given once, with a value of the key's kind.
func applyYAML(out *Loaded, file string, data []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("config %s: %w", file, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil // empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		if root.Tag == "!!null" {
			return nil // only comments
		}
		return fmt.Errorf("config %s: line %d: want a mapping of settings", file, root.Line)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], root.Content[i+1]
		where := fmt.Sprintf("config %s: line %d", file, kn.Line)
		k, ok := lookup(kn.Value)
		if !ok {
			if near := nearest(kn.Value); near != "" {
				return fmt.Errorf("%s: unknown key %q; did you mean %s?", where, kn.Value, near)
			}
			return fmt.Errorf("%s: unknown key %q (known: %s)", where, kn.Value, keyNames())
		}
		if first, dup := seen[k.name]; dup {
			return fmt.Errorf("%s: %s is already set on line %d", where, k.name, first)
		}
		seen[k.name] = kn.Line
		raw, err := nodeValues(k, vn)
		if err == nil {
			err = k.set(&out.Config, raw)
		}
		if err != nil {
			return fmt.Errorf("config %s: line %d: %s: %w", file, vn.Line, k.name, err)
		}
		out.Origins[k.name] = FromFile
	}
	return nil
}

// nodeValues extracts the raw value(s) of a YAML node for a key: a scalar
// for every kind, or a sequence of scalars for lists.
func nodeValues(k key, n *yaml.Node) ([]string, error) {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" && k.kind == kindMap {
			return nil, nil
		}
		if n.Tag == "!!null" && k.kind != kindString {
			return nil, errors.New("no value given")
		}
		if n.Tag == "!!null" {
			return []string{""}, nil
		}
		if k.kind == kindList || k.kind == kindMap {
			return splitList(n.Value), nil
		}
		return []string{n.Value}, nil
	case yaml.MappingNode:
		if k.kind != kindMap {
			return nil, errors.New("want a plain value, got a mapping")
		}
		var raw []string
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn, vn := n.Content[i], n.Content[i+1]
			if kn.Kind != yaml.ScalarNode || vn.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: want plain key: value pairs", kn.Line)
			}
			raw = append(raw, kn.Value+"="+vn.Value)
		}
		return raw, nil
	case yaml.SequenceNode:
		if k.kind != kindList {
			return nil, errors.New("want a single value, got a list")
		}
		var raw []string
		for _, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: want a plain list item", item.Line)
			}
			raw = append(raw, item.Value)
		}
		return raw, nil
	default:
		return nil, errors.New("want a plain value, got a mapping")
	}
}

func keyNames() string {
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.name
	}
	return strings.Join(names, ", ")
}

// Setting is one key of the effective configuration.
type Setting struct {
	Key    string `json:"key"`
	Value  any    `json:"value"`
	Origin Origin `json:"origin"`
	Env    string `json:"env"`
}

// Settings lists every key with its effective value and origin, in the
// order of the keys table.
func (l Loaded) Settings() []Setting {
	out := make([]Setting, len(keys))
	for i, k := range keys {
		out[i] = Setting{Key: k.name, Value: k.get(l.Config), Origin: l.Origins[k.name], Env: EnvName(k.name)}
	}
	return out
}

// YAML renders the effective configuration as a config file that Load
// accepts, each line commented with the value's origin.
func (l Loaded) YAML() ([]byte, error) {
	var doc yaml.Node
	doc.Kind = yaml.MappingNode
	for _, s := range l.Settings() {
		var kn, vn yaml.Node
		kn.SetString(s.Key)
		if err := vn.Encode(s.Value); err != nil {
			return nil, fmt.Errorf("encode %s: %w", s.Key, err)
		}
		if vn.Kind == yaml.SequenceNode {
			vn.Style = yaml.FlowStyle
		}
		vn.LineComment = string(s.Origin)
		doc.Content = append(doc.Content, &kn, &vn)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode config: %w", err)
	}
	return buf.Bytes(), nil
}

// misspeltEnv returns a warning for each NVIDIA_DRIVERD_ variable that is
// no key's but close to one's (an unrelated variable of the same prefix,
// a test's say, is left alone).
func misspeltEnv(env map[string]string) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(env)) {
		rest, ok := strings.CutPrefix(name, EnvPrefix)
		if !ok {
			continue
		}
		key := strings.ToLower(strings.ReplaceAll(rest, "_", "-"))
		if _, known := lookup(key); known {
			continue
		}
		if near := nearest(key); near != "" {
			out = append(out, fmt.Sprintf("environment %s is not a setting; did you mean %s?", name, EnvName(near)))
		}
	}
	return out
}

// nearest returns the key within two edits of name, "" when there is
// none or name is one.
func nearest(name string) string {
	best, bestD := "", 3
	for _, k := range keys {
		if d := editDistance(name, k.name); d < bestD && d > 0 {
			best, bestD = k.name, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// SettingAnnotation marks the flags BindFlags adds, one per setting.
const SettingAnnotation = "nvidia-driverd/setting"

// settingValue holds a setting's flag as given; Load parses it.
type settingValue struct {
	kind kind
	s    string
}

func (v *settingValue) String() string     { return v.s }
func (v *settingValue) Set(s string) error { v.s = s; return nil }

// Type is the kind of value the setting takes, as help shows it.
func (v *settingValue) Type() string {
	switch v.kind {
	case kindInt:
		return "int"
	case kindBool:
		return "true|false"
	case kindList:
		return "list"
	case kindMap:
		return "k=v,..."
	}
	return "string"
}

// formatDefault writes a default as help shows it: lists comma-separated,
// maps as k=v pairs, "" for an empty value (then help shows none).
func formatDefault(v any) string {
	switch v := v.(type) {
	case []string:
		return strings.Join(v, ",")
	case map[string]string:
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(v)) {
			parts = append(parts, k+"="+v[k])
		}
		return strings.Join(parts, ",")
	case bool:
		return strconv.FormatBool(v)
	}
	return fmt.Sprint(v)
}
