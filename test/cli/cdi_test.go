package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
)

func TestCDI(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("device nodes need root")
	}
	root := host(t, "flatcar-ready")
	const tree = "/opt/nvidia/550.54.14/3815.2.0"
	if err := os.RemoveAll(filepath.Join(root, tree)); err != nil {
		t.Fatal(err)
	}
	if err := hostfixture.DriverTree(filepath.Join(root, tree), "550.54.14", "6.1.77-flatcar", "6.1.77-flatcar SMP preempt mod_unload"); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "dev"), 0o755))
	must(unix.Mknod(filepath.Join(root, "dev/nvidia0"), unix.S_IFCHR|0o666, int(unix.Mkdev(195, 0))))
	must(unix.Mknod(filepath.Join(root, "dev/nvidiactl"), unix.S_IFCHR|0o666, int(unix.Mkdev(195, 255))))

	r := run(t, nil, "--root", root, "cdi")
	if r.code != 0 {
		t.Fatalf("cdi: exit %d: %s", r.code, r.stderr)
	}
	var spec struct {
		Kind    string `yaml:"kind"`
		Devices []struct {
			Name string `yaml:"name"`
		} `yaml:"devices"`
		ContainerEdits struct {
			DeviceNodes []struct {
				Path string `yaml:"path"`
			} `yaml:"deviceNodes"`
			Mounts []struct {
				HostPath      string `yaml:"hostPath"`
				ContainerPath string `yaml:"containerPath"`
			} `yaml:"mounts"`
			Hooks []struct {
				HookName string   `yaml:"hookName"`
				Path     string   `yaml:"path"`
				Args     []string `yaml:"args"`
			} `yaml:"hooks"`
		} `yaml:"containerEdits"`
	}
	if err := yaml.Unmarshal([]byte(r.stdout), &spec); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	var names []string
	for _, d := range spec.Devices {
		names = append(names, d.Name)
	}
	if spec.Kind != "nvidia.com/gpu" || !strings.Contains(strings.Join(names, ","), "0") || !strings.Contains(strings.Join(names, ","), "all") {
		t.Errorf("kind %q, devices %v", spec.Kind, names)
	}
	// Host paths of the concrete tree, without the --root prefix.
	var libcuda bool
	for _, m := range spec.ContainerEdits.Mounts {
		if !strings.HasPrefix(m.HostPath, tree+"/") {
			t.Errorf("mount from %s, want a path in %s", m.HostPath, tree)
		}
		libcuda = libcuda || strings.Contains(m.HostPath, "/lib64/libcuda.so.")
	}
	if !libcuda {
		t.Errorf("libcuda is not mounted: %+v", spec.ContainerEdits.Mounts)
	}
	if h := spec.ContainerEdits.Hooks; len(h) != 1 || h[0].HookName != "createContainer" || h[0].Path != "/opt/bin/nvidia-driverd" ||
		!strings.Contains(strings.Join(h[0].Args, " "), "cdi-hook update-ldcache") {
		t.Errorf("hooks %+v", h)
	}

	// --output writes the same spec.
	out := filepath.Join(t.TempDir(), "nvidia.yaml")
	if r := run(t, nil, "--root", root, "cdi", "--output", out); r.code != 0 {
		t.Fatalf("cdi --output: exit %d: %s", r.code, r.stderr)
	}
	if data, err := os.ReadFile(out); err != nil || string(data) != r.stdout {
		t.Errorf("--output wrote %q (%v), want what stdout showed", data, err)
	}

	// No GPU node: an error that says so.
	must(os.Remove(filepath.Join(root, "dev/nvidia0")))
	if r := run(t, nil, "--root", root, "cdi"); r.code != 1 || !strings.Contains(r.stderr, "GPU") {
		t.Errorf("without a GPU: exit %d, %q", r.code, r.stderr)
	}
}
