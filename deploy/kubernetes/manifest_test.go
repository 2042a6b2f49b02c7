// Package kubernetes holds the DaemonSet manifest; its test checks what
// users of the manifest rely on.
package kubernetes

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
)

const manifestFile = "nvidia-driverd.yaml"

// The parts of the objects the test looks at.
type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	NodeSelector map[string]string `yaml:"nodeSelector"`
	Tolerations  []map[string]any  `yaml:"tolerations"`
	HostPID      bool              `yaml:"hostPID"`
	HostNetwork  bool              `yaml:"hostNetwork"`
	Containers   []container       `yaml:"containers"`
	Volumes      []struct {
		Name     string `yaml:"name"`
		HostPath *struct {
			Path string `yaml:"path"`
		} `yaml:"hostPath"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	SecurityContext struct {
		Privileged bool `yaml:"privileged"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name             string `yaml:"name"`
		MountPath        string `yaml:"mountPath"`
		MountPropagation string `yaml:"mountPropagation"`
		ReadOnly         bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
	ReadinessProbe *struct {
		Exec struct {
			Command []string `yaml:"command"`
		} `yaml:"exec"`
	} `yaml:"readinessProbe"`
}

// objects reads every document of the manifest.
func objects(t *testing.T) []object {
	t.Helper()
	data, err := os.ReadFile(manifestFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var out []object
	for {
		var o object
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", manifestFile, err)
		}
		out = append(out, o)
	}
}

func find(t *testing.T, objs []object, kind string) object {
	t.Helper()
	for _, o := range objs {
		if o.Kind == kind {
			return o
		}
	}
	t.Fatalf("%s has no %s", manifestFile, kind)
	return object{}
}

// flagValue returns the value following flag in args, and whether flag
// is there with a value.
func flagValue(args []string, flag string) (string, bool) {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

func TestTheDaemonSetRunsTheDaemonAgainstTheHostAtRootfs(t *testing.T) {
	objs := objects(t)
	ns := find(t, objs, "Namespace")
	ds := find(t, objs, "DaemonSet")
	if ds.APIVersion != "apps/v1" {
		t.Errorf("DaemonSet apiVersion %q, want apps/v1", ds.APIVersion)
	}
	for _, o := range objs {
		if o.Kind != "Namespace" && o.Metadata.Namespace != ns.Metadata.Name {
			t.Errorf("%s %s is in namespace %q, want %q", o.Kind, o.Metadata.Name, o.Metadata.Namespace, ns.Metadata.Name)
		}
	}
	if got := ns.Metadata.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace enforces Pod Security level %q; a privileged pod needs privileged", got)
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template", k, v)
		}
	}

	pod := ds.Spec.Template.Spec
	if len(pod.NodeSelector) == 0 {
		t.Error("no nodeSelector: the daemon would run, and fail, on nodes without GPUs")
	}
	if len(pod.Tolerations) == 0 {
		t.Error("no tolerations: GPU nodes are commonly tainted")
	}
	if !pod.HostPID {
		t.Error("hostPID is off: the pid recorded in the store's lock would mean nothing on the host")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]

	t.Run("privileged", func(t *testing.T) {
		if !c.SecurityContext.Privileged {
			t.Error("not privileged: finit_module, mount and mknod need it, and so does Bidirectional propagation")
		}
	})

	t.Run("the host's / at /rootfs, with Bidirectional propagation", func(t *testing.T) {
		var vol string
		for _, m := range c.VolumeMounts {
			if m.MountPath == "/rootfs" {
				vol = m.Name
				if m.MountPropagation != "Bidirectional" {
					t.Errorf("/rootfs has mountPropagation %q, want Bidirectional: the overlays must reach the host", m.MountPropagation)
				}
				if m.ReadOnly {
					t.Error("/rootfs is read-only")
				}
			}
			if m.MountPath != "/rootfs" && strings.HasPrefix(m.MountPath, "/rootfs/") {
				t.Errorf("%s is mounted under /rootfs and would hide the host's files there", m.MountPath)
			}
		}
		if vol == "" {
			t.Fatal("nothing is mounted at /rootfs")
		}
		for _, v := range pod.Volumes {
			if v.Name == vol && (v.HostPath == nil || v.HostPath.Path != "/") {
				t.Errorf("volume %s is not hostPath /", vol)
			}
		}
	})

	t.Run("run --root /rootfs", func(t *testing.T) {
		if len(c.Command) != 0 {
			t.Errorf("command %q overrides the image's entrypoint", c.Command)
		}
		if len(c.Args) == 0 || c.Args[0] != "run" {
			t.Errorf("args %q do not start with run", c.Args)
		}
		if root, _ := flagValue(c.Args, "--root"); root != "/rootfs" {
			t.Errorf("args %q: --root %q, want /rootfs", c.Args, root)
		}
	})

	t.Run("the host's system bus", func(t *testing.T) {
		var got string
		for _, e := range c.Env {
			if e.Name == "DBUS_SYSTEM_BUS_ADDRESS" {
				got = e.Value
			}
		}
		if got != "unix:path=/rootfs/run/dbus/system_bus_socket" {
			t.Errorf("DBUS_SYSTEM_BUS_ADDRESS = %q, want the host's socket under /rootfs", got)
		}
	})

	t.Run("the readiness probe runs status --ready with the daemon's root and config", func(t *testing.T) {
		if c.ReadinessProbe == nil {
			t.Fatal("no readiness probe")
		}
		cmd := c.ReadinessProbe.Exec.Command
		if len(cmd) < 2 || cmd[0] != "nvidia-driverd" || cmd[len(cmd)-2] != "status" || cmd[len(cmd)-1] != "--ready" {
			t.Fatalf("probe %q, want nvidia-driverd ... status --ready", cmd)
		}
		for _, flag := range []string{"--root", "--config"} {
			want, _ := flagValue(c.Args, flag)
			if got, _ := flagValue(cmd, flag); got != want {
				t.Errorf("probe %s %q, the daemon's %q", flag, got, want)
			}
		}
	})

	t.Run("the config file comes from the ConfigMap and is valid", func(t *testing.T) {
		file, ok := flagValue(c.Args, "--config")
		if !ok {
			t.Fatal("no --config: the daemon would read the host's /etc/nvidia-driverd/config.yaml")
		}
		cm := find(t, objs, "ConfigMap")
		var mounted bool
		for _, m := range c.VolumeMounts {
			for _, v := range pod.Volumes {
				if v.Name == m.Name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Metadata.Name && filepath.Dir(file) == m.MountPath {
					mounted = true
				}
			}
		}
		if !mounted {
			t.Errorf("--config %s is not in a mount of ConfigMap %s", file, cm.Metadata.Name)
		}
		data, ok := cm.Data[filepath.Base(file)]
		if !ok {
			t.Fatalf("ConfigMap %s has no key %s", cm.Metadata.Name, filepath.Base(file))
		}
		p := filepath.Join(t.TempDir(), "config.yaml")
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := config.Load(config.Sources{File: p, FileRequired: true}); err != nil {
			t.Errorf("the ConfigMap's config: %v", err)
		}
	})

	t.Run("the image is the one make image builds", func(t *testing.T) {
		if want := makeVar(t, "IMAGE"); c.Image != want {
			t.Errorf("image %q, make image builds %q", c.Image, want)
		}
	})
}

func TestTheKustomizationListsTheManifest(t *testing.T) {
	data, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `yaml:"resources"`
	}
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(k.Resources, manifestFile) {
		t.Errorf("kustomization.yaml resources %q lack %s", k.Resources, manifestFile)
	}
}

// makeVar returns the default the top-level Makefile gives variable v
// with `v ?= value`.
func makeVar(t *testing.T, v string) string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), "?=")
		if ok && strings.TrimSpace(name) == v {
			return strings.TrimSpace(value)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("the Makefile does not set %s ?=", v)
	return ""
}
