// Package config holds nvidia-driverd's settings and reads them from one
// YAML file, the environment and command-line flags, in rising precedence.
//
// Every setting is described once, in the keys table; the file reader, the
// environment reader and the flag set are all driven by that table, so a key
// exists in all three forms or in none.
package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
)

// DefaultFile is read when no --config is given; its absence is not an error.
const DefaultFile = "/etc/nvidia-driverd/config.yaml"

// EnvPrefix starts the environment variable of every key:
// driver-version is NVIDIA_DRIVERD_DRIVER_VERSION.
const EnvPrefix = "NVIDIA_DRIVERD_"

// Config is the effective configuration.
type Config struct {
	DriverVersion string   // NVIDIA driver version wanted, e.g. 550.54.14
	Repository    string   // image repository, registry host included
	TagTemplate   string   // text/template over source.Vars
	Modules       []string // kernel modules the driver consists of
	Store         string   // host path of the driver store
	Keep          int      // installed trees kept by gc
	RequireGPU    bool     // refuse to act on a host without an NVIDIA GPU
}

// Default returns the configuration used where nothing is set.
func Default() Config {
	return Config{
		TagTemplate: source.DefaultTagTemplate,
		Modules:     []string{"nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm"},
		Store:       "/opt/nvidia",
		Keep:        2,
		RequireGPU:  true,
	}
}

// Template returns the parsed tag template. Load has validated it, so an
// error here means the Config was built by hand with a bad template.
func (c Config) Template() (*source.Template, error) {
	return source.ParseTemplate(c.TagTemplate)
}

type kind int

const (
	kindString kind = iota
	kindList
	kindInt
	kindBool
)

// key describes one setting. set receives the raw value(s) and validates
// them; for scalar kinds raw has exactly one element.
type key struct {
	name  string
	kind  kind
	usage string
	set   func(c *Config, raw []string) error
	get   func(c Config) any
}

var (
	driverVersionRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+){1,3}$`)
	moduleNameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,55}$`)
)

// keys is the single description of every setting.
var keys = []key{
	{
		name: "driver-version", kind: kindString,
		usage: "NVIDIA driver version to run, e.g. 550.54.14 (default: keep the installed one)",
		set: func(c *Config, raw []string) error {
			v := raw[0]
			if v != "" && !driverVersionRE.MatchString(v) {
				return fmt.Errorf("want a version such as 550.54.14, got %q", v)
			}
			c.DriverVersion = v
			return nil
		},
		get: func(c Config) any { return c.DriverVersion },
	},
	{
		name: "repository", kind: kindString,
		usage: "image repository with registry host, e.g. ghcr.io/example/nvidia-driver",
		set: func(c *Config, raw []string) error {
			if raw[0] != "" {
				if err := source.ValidateRepository(raw[0]); err != nil {
					return err
				}
			}
			c.Repository = raw[0]
			return nil
		},
		get: func(c Config) any { return c.Repository },
	},
	{
		name: "tag-template", kind: kindString,
		usage: "image tag as a Go template over .OSID .OSVersion .BuildID .DriverVersion .KernelRelease",
		set: func(c *Config, raw []string) error {
			if _, err := source.ParseTemplate(raw[0]); err != nil {
				return err
			}
			c.TagTemplate = raw[0]
			return nil
		},
		get: func(c Config) any { return c.TagTemplate },
	},
	{
		name: "modules", kind: kindList,
		usage: "kernel modules of the driver (comma-separated), loaded in dependency order",
		set: func(c *Config, raw []string) error {
			if len(raw) == 0 {
				return errors.New("want at least one module")
			}
			seen := map[string]bool{}
			for _, m := range raw {
				if !moduleNameRE.MatchString(m) {
					return fmt.Errorf("%q is not a module name", m)
				}
				if seen[canonicalModule(m)] {
					return fmt.Errorf("module %q is listed twice", m)
				}
				seen[canonicalModule(m)] = true
			}
			c.Modules = raw
			return nil
		},
		get: func(c Config) any { return c.Modules },
	},
	{
		name: "store", kind: kindString,
		usage: "host directory holding driver trees and the current link",
		set: func(c *Config, raw []string) error {
			p := raw[0]
			if !filepath.IsAbs(p) {
				return fmt.Errorf("want an absolute path, got %q", p)
			}
			if filepath.Clean(p) == "/" {
				return errors.New("the store cannot be /")
			}
			c.Store = filepath.Clean(p)
			return nil
		},
		get: func(c Config) any { return c.Store },
	},
	{
		name: "keep", kind: kindInt,
		usage: "installed driver trees kept by gc (current and previous are always kept)",
		set: func(c *Config, raw []string) error {
			n, err := strconv.Atoi(raw[0])
			if err != nil || n < 1 {
				return fmt.Errorf("want an integer of at least 1, got %q", raw[0])
			}
			c.Keep = n
			return nil
		},
		get: func(c Config) any { return c.Keep },
	},
	{
		name: "require-gpu", kind: kindBool,
		usage: "refuse to install or load on a host without an NVIDIA GPU",
		set: func(c *Config, raw []string) error {
			b, err := strconv.ParseBool(raw[0])
			if err != nil {
				return fmt.Errorf("want true or false, got %q", raw[0])
			}
			c.RequireGPU = b
			return nil
		},
		get: func(c Config) any { return c.RequireGPU },
	},
}

func lookup(name string) (key, bool) {
	for _, k := range keys {
		if k.name == name {
			return k, true
		}
	}
	return key{}, false
}

// EnvName returns the environment variable of a key.
func EnvName(keyName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(keyName, "-", "_"))
}

// splitList splits a comma-separated list, trimming blanks around items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// canonicalModule is the kernel's name for a module: dashes and underscores
// are interchangeable in module names, and the kernel reports underscores.
func canonicalModule(name string) string {
	return strings.ReplaceAll(name, "-", "_")
}
