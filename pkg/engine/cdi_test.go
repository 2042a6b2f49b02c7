package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/test/needs"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod/kmodtest"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/libs/libstest"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/cdi"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
)

const (
	cdiDriver = "550.54.14"
	cdiKernel = "6.1.77-flatcar"
	cdiFlags  = "SMP preempt mod_unload"
)

// cdiHost lays out a Flatcar host after a reboot (no driver loaded) with
// a GPU and the given driver trees (names under /opt/nvidia/<driver>),
// and returns the root and an Activator for it.
func cdiHost(t *testing.T, cdiDir string, trees ...string) (string, *Activator, *[]string) {
	t.Helper()
	needs.Root(t, "make the device nodes activation makes")
	root := t.TempDir()
	spec := hostfixture.Spec{Base: "flatcar", Flags: cdiFlags, Unload: true}
	if err := hostfixture.Make("../../test/fixtures/hosts", root, spec); err != nil {
		t.Skipf("host fixture: %v", err)
	}
	for _, tree := range trees {
		dst := filepath.Join(root, "opt/nvidia", cdiDriver, tree)
		if err := hostfixture.DriverTree(dst, cdiDriver, cdiKernel, cdiKernel+" "+cdiFlags); err != nil {
			t.Skipf("driver tree: %v", err)
		}
	}
	for name, body := range map[string]string{
		"etc/ld.so.conf": "include /etc/ld.so.conf.d/*.conf\n",
		"mountinfo":      "",
	} {
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.LibraryMode = "ldconfig"
	cfg.Persistenced = ""
	cfg.CDIDir = cdiDir
	var steps []string
	a := &Activator{
		Config: cfg, Syscalls: &kmodtest.Syscalls{Root: root}, Mounter: libstest.NoMounts{},
		Mountinfo: filepath.Join(root, "mountinfo"),
		Observe: func(step string, done bool, err error) {
			if done {
				steps = append(steps, step)
			}
		},
	}
	return root, a, &steps
}

// cdiActivate gathers the facts and activates tree, skipping the test where
// device nodes cannot be made.
func cdiActivate(t *testing.T, root string, a *Activator, tree string) Activation {
	t.Helper()
	h := hostfixture.Open(t, root)
	f, err := Gather(h, a.Config)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.GPUs) == 0 {
		t.Fatal("the fixture has no GPU")
	}
	act, err := a.Activate(context.Background(), h, f, tree)
	if err != nil && strings.Contains(err.Error(), "operation not permitted") {
		t.Skipf("needs CAP_MKNOD: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return act
}

// cdiInject loads the specs of dir as a runtime would and injects
// nvidia.com/gpu=all into an empty OCI spec.
func cdiInject(t *testing.T, dir string) *oci.Spec {
	t.Helper()
	cache, err := cdilib.NewCache(cdilib.WithSpecDirs(dir), cdilib.WithAutoRefresh(false))
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Refresh(); err != nil {
		t.Fatal(err)
	}
	s := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if _, err := cache.InjectDevices(s, cdi.Kind+"=all", cdi.Kind+"=0"); err != nil {
		t.Fatal(err)
	}
	return s
}

func mountSources(s *oci.Spec) map[string]string {
	out := map[string]string{}
	for _, m := range s.Mounts {
		out[m.Destination] = m.Source
	}
	return out
}

func TestActivateWritesCDISpec(t *testing.T) {
	t.Parallel()
	const dir = "/etc/cdi"
	root, a, steps := cdiHost(t, dir, "3815.2.0", "3815.2.1")
	oldTree := "/opt/nvidia/" + cdiDriver + "/3815.2.0"
	newTree := "/opt/nvidia/" + cdiDriver + "/3815.2.1"
	specPath := filepath.Join(root, dir, cdi.SpecFile)

	act := cdiActivate(t, root, a, oldTree)
	if want := []string{"firmware", "libraries", "modules", "devices", "cdi"}; !slices.Equal(*steps, want) {
		t.Errorf("steps %v, want %v", *steps, want)
	}
	if act.CDI != specPath {
		t.Errorf("Activation.CDI = %q, want %q", act.CDI, specPath)
	}
	s := cdiInject(t, filepath.Join(root, dir))
	var nodes []string
	for _, d := range s.Linux.Devices {
		nodes = append(nodes, d.Path)
		// The node the devices step made is the one the spec names.
		if _, err := os.Stat(filepath.Join(root, d.Path)); err != nil {
			t.Errorf("%s: %v", d.Path, err)
		}
	}
	slices.Sort(nodes)
	if want := []string{"/dev/nvidia-modeset", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidiactl"}; !slices.Equal(nodes, want) {
		t.Errorf("device nodes %v, want %v", nodes, want)
	}
	lib := cdi.ContainerLibDir + "/libcuda.so." + cdiDriver
	if got := mountSources(s)[lib]; got != oldTree+"/lib64/libcuda.so."+cdiDriver {
		t.Errorf("%s is mounted from %q, want the old tree", lib, got)
	}
	if got := mountSources(s)[cdi.ContainerBinDir+"/nvidia-smi"]; got != oldTree+"/bin/nvidia-smi" {
		t.Errorf("nvidia-smi is mounted from %q", got)
	}
	if len(s.Hooks.CreateContainer) != 1 || s.Hooks.CreateContainer[0].Path != cdi.DefaultHookPath {
		t.Errorf("hooks %+v", s.Hooks)
	}

	// Activating the same tree again leaves the spec alone.
	before, _ := os.ReadFile(specPath)
	*steps = nil
	if act = cdiActivate(t, root, a, oldTree); act.CDI != "" {
		t.Errorf("second activation rewrote %s", act.CDI)
	}
	if after, _ := os.ReadFile(specPath); string(after) != string(before) {
		t.Error("the spec changed")
	}

	// Switching trees regenerates it.
	if act = cdiActivate(t, root, a, newTree); act.CDI != specPath {
		t.Errorf("switch: Activation.CDI = %q", act.CDI)
	}
	data, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), oldTree+"/") {
		t.Errorf("the spec still names %s:\n%s", oldTree, data)
	}
	if got := mountSources(cdiInject(t, filepath.Join(root, dir)))[lib]; got != newTree+"/lib64/libcuda.so."+cdiDriver {
		t.Errorf("after the switch %s is mounted from %q", lib, got)
	}

	*steps = nil
	act, err = a.Deactivate(context.Background(), hostfixture.Open(t, root))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"unload", "devices", "cdi", "libraries"}; !slices.Equal(*steps, want) {
		t.Errorf("deactivate steps %v, want %v", *steps, want)
	}
	if act.CDI != specPath {
		t.Errorf("Deactivate: Activation.CDI = %q, want %q", act.CDI, specPath)
	}
	if _, err := os.Lstat(specPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the spec is still there: %v", err)
	}
	// Deactivating again finds nothing to remove.
	if act, err = a.Deactivate(context.Background(), hostfixture.Open(t, root)); err != nil || act.CDI != "" {
		t.Errorf("second Deactivate: %q, %v", act.CDI, err)
	}
}

func TestActivateWithoutCDIDir(t *testing.T) {
	t.Parallel()
	root, a, steps := cdiHost(t, "", "3815.2.0")
	cdiActivate(t, root, a, "/opt/nvidia/"+cdiDriver+"/3815.2.0")
	if slices.Contains(*steps, "cdi") {
		t.Errorf("steps %v with cdi-dir empty", *steps)
	}
	if _, err := os.Stat(filepath.Join(root, config.Default().CDIDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a CDI directory was made: %v", err)
	}
	if _, err := a.Deactivate(context.Background(), hostfixture.Open(t, root)); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(*steps, "cdi") {
		t.Errorf("steps %v with cdi-dir empty", *steps)
	}
}

func TestActivateCDIStepFails(t *testing.T) {
	t.Parallel()
	root, a, steps := cdiHost(t, "/var/run/cdi", "3815.2.0")
	// A directory where the spec goes cannot be replaced.
	if err := os.MkdirAll(filepath.Join(root, "var/run/cdi", cdi.SpecFile), 0o755); err != nil {
		t.Fatal(err)
	}
	h := hostfixture.Open(t, root)
	f, err := Gather(h, a.Config)
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.Activate(context.Background(), h, f, "/opt/nvidia/"+cdiDriver+"/3815.2.0")
	if err != nil && strings.Contains(err.Error(), "operation not permitted") {
		t.Skipf("needs CAP_MKNOD: %v", err)
	}
	// The driver is usable without the spec: the activation stands, the
	// failure is reported, and the steps after it ran.
	if err != nil {
		t.Fatalf("Activate = %v, want success with CDIErr set", err)
	}
	if out.CDIErr == nil || !strings.Contains(out.CDIErr.Error(), "write CDI spec") {
		t.Fatalf("CDIErr %v, want the cdi step's error", out.CDIErr)
	}
	if !slices.Contains(*steps, "cdi") || (*steps)[len(*steps)-1] == "cdi" && a.Config.Persistenced != "" {
		t.Errorf("steps %v, want cdi and the steps after it", *steps)
	}
}

func TestCDISpecFollowsVarRunInsideTheRoot(t *testing.T) {
	t.Parallel()
	// Debian, Ubuntu and Flatcar have /var/run -> /run (or ../run): the
	// spec must land in the host's /run, never this machine's.
	local := filepath.Join("/run/cdi", cdi.SpecFile)
	_, err := os.Lstat(local)
	existed := err == nil
	root, a, _ := cdiHost(t, "/var/run/cdi", "3815.2.0")
	for _, d := range []string{"run", "var"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("/run", filepath.Join(root, "var/run")); err != nil {
		t.Fatal(err)
	}
	act := cdiActivate(t, root, a, "/opt/nvidia/"+cdiDriver+"/3815.2.0")
	want := filepath.Join(root, "run/cdi", cdi.SpecFile)
	if act.CDI != want {
		t.Errorf("spec written to %q, want %q", act.CDI, want)
	}
	if _, err := os.Stat(want); err != nil {
		t.Error(err)
	}
	if _, err := os.Lstat(local); (err == nil) != existed {
		t.Errorf("this machine's %s appeared", local)
	}
}
