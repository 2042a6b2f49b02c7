// Package config holds nvidia-driverd's settings and reads them from one
// YAML file, the environment and command-line flags, in rising precedence.
//
// Every setting is described once, in the keys table; the file reader, the
// environment reader and the flag set are all driven by that table, so a key
// exists in all three forms or in none.
package config

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
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

	Source             string            // "" (the repository) or oci-layout:/path
	Mirrors            []string          // repositories tried before Repository
	InsecureRegistries []string          // hosts allowed plain HTTP / unverified TLS
	Digests            map[string]string // tag -> sha256 digest pins
	Platform           string            // os/arch[/variant]
	ImageSubdir        string            // template: the tree's directory inside the image
	MaxImageBytes      int64             // unpack limit on file bytes
	MaxImageEntries    int               // unpack limit on entries
	FetchTimeout       time.Duration     // the most one fetch of an image may take
	StallTimeout       time.Duration     // a download making no progress this long is retried, then failed

	ModuleParams  map[string]string // module -> "k=v k2=v2"
	LibraryMode   string            // auto, overlay or ldconfig
	FailurePolicy string            // fail or keep-previous
	Persistenced  string            // unit started once the driver is loaded; "" for none

	Prefetch        bool   // fetch the driver for a staged OS update or a newly installed kernel
	CDIDir          string // host directory the CDI spec is written to; "" for none
	MetricsAddr     string // host:port serving Prometheus metrics; "" for none
	MetricsTextfile string // node_exporter textfile written after each change; "" for none
}

// Default returns the configuration used where nothing is set.
func Default() Config {
	return Config{
		TagTemplate: source.DefaultTagTemplate,
		Modules:     []string{"nvidia", "nvidia-uvm", "nvidia-modeset", "nvidia-drm"},
		Store:       "/opt/nvidia",
		Keep:        2,
		RequireGPU:  true,
		Platform:    "linux/" + runtime.GOARCH,
		Digests:     map[string]string{},

		MaxImageBytes:   8 << 30,
		MaxImageEntries: 200000,
		FetchTimeout:    30 * time.Minute,
		StallTimeout:    time.Minute,

		ModuleParams:  map[string]string{},
		LibraryMode:   "auto",
		FailurePolicy: "fail",
		Persistenced:  "nvidia-persistenced.service",

		Prefetch: true,
		CDIDir:   "/var/run/cdi",
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
	kindMap // "k=v" items; a YAML mapping in the file
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
	digestRE        = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	platformRE      = regexp.MustCompile(`^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$`)
	hostRE          = regexp.MustCompile(`^[A-Za-z0-9.-]+(:[0-9]{1,5})?$`)
	paramRE         = regexp.MustCompile(`^[A-Za-z0-9_]+=[^\s=]*$`)
	unitRE          = regexp.MustCompile(`^[A-Za-z0-9:_.@-]+\.service$`)
	moduleNameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,55}$`)
)

// sharedDirs are directories of the filesystem hierarchy that other
// software keeps files in: none can be the store.
var sharedDirs = []string{"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt",
	"/opt", "/opt/bin", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin",
	"/usr/lib", "/usr/lib64", "/usr/local", "/usr/share", "/var", "/var/lib", "/var/opt", "/var/tmp"}

// positiveDuration parses a duration such as 90s or 30m, which must be
// positive.
func positiveDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("want a positive duration such as 90s or 30m, got %q", v)
	}
	return d, nil
}

// IsDriverVersion reports whether v has the shape of an NVIDIA driver
// version: two to four dot-separated numbers, such as 550.54.14.
func IsDriverVersion(v string) bool { return driverVersionRE.MatchString(v) }

// keys is the single description of every setting.
var keys = []key{
	{
		name: "driver-version", kind: kindString,
		usage: "NVIDIA driver version to run, e.g. 550.54.14 (default: keep the installed one)",
		set: func(c *Config, raw []string) error {
			v := raw[0]
			if v != "" && !IsDriverVersion(v) {
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
		usage: "kernel modules of the driver (comma-separated), loaded in dependency order; empty loads none (user space only)",
		set: func(c *Config, raw []string) error {
			seen := map[string]bool{}
			for _, m := range raw {
				if !moduleNameRE.MatchString(m) {
					return fmt.Errorf("%q is not a module name", m)
				}
				if seen[modinfo.KernelName(m)] {
					return fmt.Errorf("module %q is listed twice", m)
				}
				seen[modinfo.KernelName(m)] = true
			}
			c.Modules = append([]string{}, raw...) // [] (none), never nil
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
			p = filepath.Clean(p)
			if slices.Contains(sharedDirs, p) {
				return fmt.Errorf("%s is a directory other software shares, and nvidia-driverd creates and removes trees in its store: use a directory of its own, such as /opt/nvidia", p)
			}
			c.Store = p
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
	{
		name: "source", kind: kindString,
		usage: "where images come from: empty for the repository, or oci-layout:/path for an OCI layout directory",
		set: func(c *Config, raw []string) error {
			v := raw[0]
			if v != "" {
				p, ok := strings.CutPrefix(v, source.LayoutPrefix)
				if !ok || !filepath.IsAbs(p) {
					return fmt.Errorf("want %s/absolute/path or nothing, got %q", source.LayoutPrefix, v)
				}
			}
			c.Source = v
			return nil
		},
		get: func(c Config) any { return c.Source },
	},
	{
		name: "mirrors", kind: kindList,
		usage: "repositories tried, in order, before the repository (comma-separated)",
		set: func(c *Config, raw []string) error {
			for _, m := range raw {
				if err := source.ValidateRepository(m); err != nil {
					return err
				}
			}
			c.Mirrors = raw
			return nil
		},
		get: func(c Config) any { return c.Mirrors },
	},
	{
		name: "insecure-registries", kind: kindList,
		usage: "registry hosts (host[:port]) reached over plain HTTP or unverified TLS (comma-separated)",
		set: func(c *Config, raw []string) error {
			for _, h := range raw {
				if !hostRE.MatchString(h) {
					return fmt.Errorf("%q is not a host or host:port", h)
				}
			}
			c.InsecureRegistries = raw
			return nil
		},
		get: func(c Config) any { return c.InsecureRegistries },
	},
	{
		name: "digests", kind: kindMap,
		usage: "digest pins, tag=sha256:... (comma-separated): a tag resolving to another digest is refused",
		set: func(c *Config, raw []string) error {
			pins := map[string]string{}
			for _, kv := range raw {
				tag, d, ok := strings.Cut(kv, "=")
				if !ok || tag == "" {
					return fmt.Errorf("want tag=sha256:<64 hex>, got %q", kv)
				}
				if !digestRE.MatchString(d) {
					return fmt.Errorf("pin for %s: want sha256:<64 hex>, got %q", tag, d)
				}
				pins[tag] = d
			}
			c.Digests = pins
			return nil
		},
		get: func(c Config) any { return c.Digests },
	},
	{
		name: "platform", kind: kindString,
		usage: "image platform os/arch[/variant] chosen from an index and required of an image",
		set: func(c *Config, raw []string) error {
			if !platformRE.MatchString(raw[0]) {
				return fmt.Errorf("want os/arch such as linux/amd64, got %q", raw[0])
			}
			c.Platform = raw[0]
			return nil
		},
		get: func(c Config) any { return c.Platform },
	},
	{
		name: "image-subdir", kind: kindString,
		usage: "directory inside the image holding the tree, as a template (original CoreOS images: opt/nvidia/{{.DriverVersion}}/{{.OSVersion}})",
		set: func(c *Config, raw []string) error {
			v := strings.Trim(raw[0], "/")
			if v != "" {
				if _, err := source.ParseSubdir(v); err != nil {
					return err
				}
			}
			c.ImageSubdir = v
			return nil
		},
		get: func(c Config) any { return c.ImageSubdir },
	},
	{
		name: "max-image-bytes", kind: kindInt,
		usage: "most file bytes an image may unpack to",
		set: func(c *Config, raw []string) error {
			n, err := strconv.ParseInt(raw[0], 10, 64)
			if err != nil || n < 1 {
				return fmt.Errorf("want a positive number of bytes, got %q", raw[0])
			}
			c.MaxImageBytes = n
			return nil
		},
		get: func(c Config) any { return c.MaxImageBytes },
	},
	{
		name: "max-image-entries", kind: kindInt,
		usage: "most files, directories and links an image may hold",
		set: func(c *Config, raw []string) error {
			n, err := strconv.Atoi(raw[0])
			if err != nil || n < 1 {
				return fmt.Errorf("want a positive integer, got %q", raw[0])
			}
			c.MaxImageEntries = n
			return nil
		},
		get: func(c Config) any { return c.MaxImageEntries },
	},
	{
		name: "fetch-timeout", kind: kindString,
		usage: "the most one image download may take, e.g. 30m; it then fails and the store lock is released",
		set: func(c *Config, raw []string) error {
			d, err := positiveDuration(raw[0])
			c.FetchTimeout = d
			return err
		},
		get: func(c Config) any { return c.FetchTimeout.String() },
	},
	{
		name: "stall-timeout", kind: kindString,
		usage: "a registry read that makes no progress this long, e.g. 1m, is retried, then fails",
		set: func(c *Config, raw []string) error {
			d, err := positiveDuration(raw[0])
			c.StallTimeout = d
			return err
		},
		get: func(c Config) any { return c.StallTimeout.String() },
	},
	{
		name: "module-params", kind: kindMap,
		usage: "module parameters, module=\"k=v k2=v2\" (a YAML mapping in the file); merged over the tree's etc/modprobe.d",
		set: func(c *Config, raw []string) error {
			params := map[string]string{}
			for _, kv := range raw {
				mod, value, ok := strings.Cut(kv, "=")
				if !ok || !moduleNameRE.MatchString(mod) {
					return fmt.Errorf("want module=\"k=v ...\", got %q", kv)
				}
				for _, p := range strings.Fields(value) {
					if !paramRE.MatchString(p) {
						return fmt.Errorf("parameter %q of %s: want key=value", p, mod)
					}
				}
				params[modinfo.KernelName(mod)] = strings.Join(strings.Fields(value), " ")
			}
			c.ModuleParams = params
			return nil
		},
		get: func(c Config) any { return c.ModuleParams },
	},
	{
		name: "library-mode", kind: kindString,
		usage: "how libraries reach the system: overlay (read-only overlay on /usr/lib64 and /opt/bin), ldconfig (an ld.so.conf.d drop-in), or auto (overlay on Flatcar and CoreOS, ldconfig elsewhere)",
		set: func(c *Config, raw []string) error {
			switch raw[0] {
			case "auto", "overlay", "ldconfig":
				c.LibraryMode = raw[0]
				return nil
			}
			return fmt.Errorf("want auto, overlay or ldconfig, got %q", raw[0])
		},
		get: func(c Config) any { return c.LibraryMode },
	},
	{
		name: "failure-policy", kind: kindString,
		usage: "when the driver cannot be activated: fail (exit, so Requires= dependants do not start) or keep-previous (use the previous tree if it matches, else report degraded and stay up)",
		set: func(c *Config, raw []string) error {
			switch raw[0] {
			case "fail", "keep-previous":
				c.FailurePolicy = raw[0]
				return nil
			}
			return fmt.Errorf("want fail or keep-previous, got %q", raw[0])
		},
		get: func(c Config) any { return c.FailurePolicy },
	},
	{
		name: "persistenced", kind: kindString,
		usage: "systemd unit started over D-Bus once the driver is loaded; empty for none",
		set: func(c *Config, raw []string) error {
			if raw[0] != "" && !unitRE.MatchString(raw[0]) {
				return fmt.Errorf("want a unit name such as nvidia-persistenced.service, got %q", raw[0])
			}
			c.Persistenced = raw[0]
			return nil
		},
		get: func(c Config) any { return c.Persistenced },
	},
	{
		name: "prefetch", kind: kindBool,
		usage: "fetch the driver for a staged OS update (Flatcar's update_engine) or a newly installed kernel before the reboot",
		set: func(c *Config, raw []string) error {
			b, err := strconv.ParseBool(raw[0])
			if err != nil {
				return fmt.Errorf("want true or false, got %q", raw[0])
			}
			c.Prefetch = b
			return nil
		},
		get: func(c Config) any { return c.Prefetch },
	},
	{
		name: "cdi-dir", kind: kindString,
		usage: "directory the Container Device Interface spec for the active driver is written to (/var/run/cdi or /etc/cdi); empty for none",
		set: func(c *Config, raw []string) error {
			if raw[0] != "" && !filepath.IsAbs(raw[0]) {
				return fmt.Errorf("want an absolute path or nothing, got %q", raw[0])
			}
			c.CDIDir = cleanOrEmpty(raw[0])
			return nil
		},
		get: func(c Config) any { return c.CDIDir },
	},
	{
		name: "metrics-addr", kind: kindString,
		usage: "host:port to serve Prometheus metrics on, e.g. 127.0.0.1:9402; empty for none",
		set: func(c *Config, raw []string) error {
			if raw[0] != "" {
				if _, port, err := net.SplitHostPort(raw[0]); err != nil || port == "" {
					return fmt.Errorf("want host:port or nothing, got %q", raw[0])
				}
			}
			c.MetricsAddr = raw[0]
			return nil
		},
		get: func(c Config) any { return c.MetricsAddr },
	},
	{
		name: "metrics-textfile", kind: kindString,
		usage: "file (*.prom, in node_exporter's textfile directory) the metrics are written to after each change; empty for none",
		set: func(c *Config, raw []string) error {
			if raw[0] != "" && (!filepath.IsAbs(raw[0]) || !strings.HasSuffix(raw[0], ".prom")) {
				return fmt.Errorf("want an absolute path ending in .prom or nothing, got %q", raw[0])
			}
			c.MetricsTextfile = cleanOrEmpty(raw[0])
			return nil
		},
		get: func(c Config) any { return c.MetricsTextfile },
	},
}

// cleanOrEmpty cleans a path and keeps "" as "".
func cleanOrEmpty(p string) string {
	if p == "" {
		return ""
	}
	return filepath.Clean(p)
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
