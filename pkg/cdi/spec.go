// Package cdi describes the active driver tree to container runtimes as a
// Container Device Interface (CDI) spec, and holds the logic of the
// createContainer hook that spec names.
//
// The spec (kind nvidia.com/gpu) offers one device per GPU node
// /dev/nvidia<N>, named "<N>", also by PCI address and GPU UUID where
// /proc/driver/nvidia/gpus tells them, and "all". Injecting any of them
// adds the common edits:
//
//   - the control nodes that exist (/dev/nvidiactl, /dev/nvidia-uvm,
//     /dev/nvidia-uvm-tools, /dev/nvidia-modeset);
//   - read-only bind mounts of the libraries of the tree's lib64/ under
//     ContainerLibDir: each regular file under its own name, and each
//     symlink that is not a SONAME link (libcuda.so, vendor aliases) as its
//     target file under the link's name. SONAME links are not mounted:
//     ldconfig makes them in the container from each file's DT_SONAME,
//     exactly as the tree's links were made, with half the mounts.
//     Subdirectories (vdpau/, gbm/) are left out;
//   - read-only bind mounts of the tree's bin/ tools under ContainerBinDir,
//     which is on every image's PATH, except the host-only ones
//     (nvidia-persistenced, nvidia-modprobe, the installer);
//   - a createContainer hook running "nvidia-driverd cdi-hook
//     update-ldcache --folder ContainerLibDir" (see UpdateLdcache), so that
//     the dynamic linker finds the libraries without LD_LIBRARY_PATH.
//
// Paths in the spec are host paths of the concrete tree, never under the
// root the host is mounted at; existence is checked under that root.
package cdi

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"
	cdilib "tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
	specs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
)

// Names and paths of the spec.
const (
	Kind            = "nvidia.com/gpu"
	AllDevices      = "all"
	SpecFile        = "nvidia-driverd.yaml"     // in the CDI directory
	DefaultHookPath = "/opt/bin/nvidia-driverd" // host path of the hook binary
	ContainerLibDir = "/usr/local/nvidia/lib64" // where CUDA images already look
	ContainerBinDir = "/usr/bin"                // on every image's PATH
	HookCommand     = "cdi-hook"                // nvidia-driverd's hook command
	LdcacheHook     = "update-ldcache"          // its subcommand
)

// hostOnly are tools of bin/ that serve the host, not a container.
var hostOnly = map[string]bool{
	"nvidia-persistenced": true,
	"nvidia-modprobe":     true,
	"nvidia-installer":    true,
	"nvidia-uninstall":    true,
}

// controlNodes are the nodes every device needs, in spec order.
var controlNodes = []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"}

// mountOptions make every mount a read-only bind.
var mountOptions = []string{"ro", "nosuid", "nodev", "bind"}

// ErrNoGPU is wrapped when the host has no /dev/nvidia<N> node: then the
// spec would offer no device.
var ErrNoGPU = errors.New("no GPU device node")

// Host is what a spec is generated from: the GPUs the loaded nvidia module
// lists, and the host tree that holds /dev and the driver tree;
// *hostinfo.Host is the real one.
type Host interface {
	NvidiaGPUInfos() ([]hostinfo.GPUInfo, error)
	FS() *hostfs.Root
}

var _ Host = (*hostinfo.Host)(nil)

// Options say which tree to describe on which host.
type Options struct {
	Host     Host
	Tree     string // host path of the tree; links are resolved inside the host tree
	HookPath string // host path of nvidia-driverd for the hook; "" means DefaultHookPath
}

// Generate returns the spec for tree o.Tree on the host mounted at o.Root
// (see the package documentation), validated by the CDI library. It
// returns an error naming the tree when Root, Tree or HookPath is not
// absolute, the tree does not resolve to a directory inside Root, lib64/
// is missing or holds no library, a directory cannot be read, or the spec
// is invalid; one wrapping ErrNoGPU when <root>/dev has no GPU node.
func Generate(o Options) (*specs.Spec, error) {
	if o.Host == nil {
		return nil, errors.New("generate CDI spec: no host")
	}
	fs := o.Host.FS()
	tree, treeHost, err := resolve(fs, o.Tree)
	if err != nil {
		return nil, fmt.Errorf("generate CDI spec: %w", err)
	}
	hook := o.HookPath
	if hook == "" {
		hook = DefaultHookPath
	}
	if !filepath.IsAbs(hook) {
		return nil, fmt.Errorf("generate CDI spec for %s: hook path %q must be absolute", treeHost, hook)
	}
	libs, err := libraryMounts(fs, tree, treeHost)
	if err != nil {
		return nil, fmt.Errorf("generate CDI spec for %s: %w", treeHost, err)
	}
	bins, err := binaryMounts(fs, tree, treeHost)
	if err != nil {
		return nil, fmt.Errorf("generate CDI spec for %s: %w", treeHost, err)
	}
	devices, err := gpuDevices(o.Host)
	if err != nil {
		return nil, fmt.Errorf("generate CDI spec for %s: %w", treeHost, err)
	}
	var ctl []*specs.DeviceNode
	for _, name := range controlNodes {
		if n, ok, err := charNode(fs, name); err != nil {
			return nil, fmt.Errorf("generate CDI spec for %s: %w", treeHost, err)
		} else if ok {
			ctl = append(ctl, n)
		}
	}
	s := &specs.Spec{
		Kind:    Kind,
		Devices: devices,
		ContainerEdits: specs.ContainerEdits{
			DeviceNodes: ctl,
			Mounts:      append(libs, bins...),
			Hooks: []*specs.Hook{{
				HookName: cdilib.CreateContainerHook,
				Path:     hook,
				Args:     []string{filepath.Base(hook), HookCommand, LdcacheHook, "--folder", ContainerLibDir},
			}},
		},
	}
	// The oldest version that carries the spec, for older runtimes.
	if s.Version, err = specs.MinimumRequiredVersion(s); err != nil {
		return nil, fmt.Errorf("generate CDI spec for %s: %w", treeHost, err)
	}
	return s, nil
}

// Encode returns s as the YAML written to SpecFile, after the CDI library
// has parsed and validated exactly those bytes (through a temporary file,
// the only way the library validates). It returns an error when s cannot
// be marshalled or is invalid.
func Encode(s *specs.Spec) ([]byte, error) {
	data, err := encode(s)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "nvidia-driverd-cdi-")
	if err != nil {
		return nil, fmt.Errorf("validate CDI spec: %w", err)
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, SpecFile)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		return nil, fmt.Errorf("validate CDI spec: %w", err)
	}
	if err := validate(p); err != nil {
		return nil, err
	}
	return data, nil
}

func encode(s *specs.Spec) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# Written by nvidia-driverd on every activation; changes are lost.\n---\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(s); err != nil {
		return nil, fmt.Errorf("encode CDI spec: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode CDI spec: %w", err)
	}
	return buf.Bytes(), nil
}

// validate loads the spec file at p with the CDI library, as a runtime
// would.
func validate(p string) error {
	if _, err := cdilib.ReadSpec(p, 0); err != nil {
		return fmt.Errorf("validate CDI spec: %w", err)
	}
	return nil
}

// Path returns where the spec lives for CDI directory dir (a host path)
// in host tree fs, resolved inside it (/var/run is a link to /run on most
// hosts).
func Path(fs *hostfs.Root, dir string) (string, error) {
	return fs.Path(filepath.Join(dir, SpecFile))
}

// Write encodes s (see Encode) and replaces <root>/<dir>/SpecFile with it
// atomically, creating dir (0755) when missing. It returns the path and
// whether the file changed: writing the same spec again changes nothing.
// It returns an error when dir is not absolute, s is invalid or the write
// fails.
func Write(fs *hostfs.Root, dir string, s *specs.Spec) (string, bool, error) {
	if !filepath.IsAbs(dir) {
		return "", false, fmt.Errorf("write CDI spec: directory %q must be absolute", dir)
	}
	p, err := Path(fs, dir)
	if err != nil {
		return "", false, fmt.Errorf("write CDI spec: %w", err)
	}
	data, err := encode(s)
	if err != nil {
		return p, false, fmt.Errorf("write CDI spec %s: %w", p, err)
	}
	// Validated as the very file renamed into place, beside it: no
	// temporary directory needed (a container image may have no /tmp).
	changed, err := atomicfile.ReplaceChecked(p, data, 0o644, validate)
	if err != nil {
		return p, changed, fmt.Errorf("write CDI spec: %w", err)
	}
	return p, changed, nil
}

// Remove deletes <root>/<dir>/SpecFile. It returns the path and whether a
// file was removed; an absent file is not an error. It returns an error
// when dir is not absolute or the removal fails.
func Remove(fs *hostfs.Root, dir string) (string, bool, error) {
	if !filepath.IsAbs(dir) {
		return "", false, fmt.Errorf("remove CDI spec: directory %q must be absolute", dir)
	}
	p, err := Path(fs, dir)
	if err != nil {
		return "", false, fmt.Errorf("remove CDI spec: %w", err)
	}
	err = os.Remove(p)
	if errors.Is(err, os.ErrNotExist) {
		return p, false, nil
	}
	if err != nil {
		return p, false, fmt.Errorf("remove CDI spec: %w", err)
	}
	return p, true, atomicfile.SyncDir(filepath.Dir(p))
}

// resolve returns the real path of rootDir, the real path of host path
// tree under it, and that as a host path. It returns an error when either
// is not absolute or does not resolve, or the tree is not a directory
// inside the root.
func resolve(fs *hostfs.Root, tree string) (real, host string, err error) {
	if !filepath.IsAbs(tree) {
		return "", "", fmt.Errorf("tree %q must be absolute", tree)
	}
	if real, err = fs.Path(tree); err != nil {
		return "", "", fmt.Errorf("resolve tree: %w", err)
	}
	if real == fs.Dir() {
		return "", "", fmt.Errorf("resolve tree %s: it is the host root %s", tree, real)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", "", fmt.Errorf("resolve tree %s: %w", tree, err)
	}
	if !fi.IsDir() {
		return "", "", fmt.Errorf("resolve tree %s: %s is not a directory", tree, real)
	}
	return real, fs.Host(real), nil
}

// libraryMounts returns the mounts of the libraries of tree's lib64/ (see
// the package documentation). It returns an error when lib64/ cannot be
// read or holds no library.
func libraryMounts(fs *hostfs.Root, tree, treeHost string) ([]*specs.Mount, error) {
	dir := filepath.Join(tree, "lib64")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("the tree has no lib64/ directory: its libraries are needed in containers")
	}
	if err != nil {
		return nil, fmt.Errorf("read libraries: %w", err)
	}
	var mounts []*specs.Mount
	for _, e := range entries {
		name := e.Name()
		if !isLibrary(name) {
			continue
		}
		switch {
		case e.Type().IsRegular():
			mounts = append(mounts, bindMount(filepath.Join(treeHost, "lib64", name), filepath.Join(ContainerLibDir, name)))
		case e.Type()&os.ModeSymlink != 0:
			target, ok := regularTarget(fs, tree, filepath.Join(treeHost, "lib64", name))
			if !ok || sonameOf(target) == name {
				continue // dangling, or made by ldconfig in the container
			}
			mounts = append(mounts, bindMount(fs.Host(target), filepath.Join(ContainerLibDir, name)))
		}
	}
	if len(mounts) == 0 {
		return nil, fmt.Errorf("%s holds no library (lib*.so*)", filepath.Join(treeHost, "lib64"))
	}
	return mounts, nil
}

// binaryMounts returns the mounts of the executables of tree's bin/ but
// the host-only ones; none when there is no bin/. It returns an error
// when bin/ cannot be read.
func binaryMounts(fs *hostfs.Root, tree, treeHost string) ([]*specs.Mount, error) {
	dir := filepath.Join(tree, "bin")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read binaries: %w", err)
	}
	var mounts []*specs.Mount
	for _, e := range entries {
		name := e.Name()
		if hostOnly[name] || strings.HasPrefix(name, ".") {
			continue
		}
		target, ok := regularTarget(fs, tree, filepath.Join(treeHost, "bin", name))
		if !ok {
			continue
		}
		if fi, err := os.Stat(target); err != nil || fi.Mode()&0o111 == 0 {
			continue
		}
		mounts = append(mounts, bindMount(fs.Host(target), filepath.Join(ContainerBinDir, name)))
	}
	return mounts, nil
}

// isLibrary reports whether name looks like a shared library.
func isLibrary(name string) bool {
	return strings.HasPrefix(name, "lib") && (strings.HasSuffix(name, ".so") || strings.Contains(name, ".so."))
}

// regularTarget returns the real path of host path p, links followed
// inside the host tree, when it is, or links to, a regular file inside
// tree (a real path).
func regularTarget(fs *hostfs.Root, tree, p string) (string, bool) {
	real, err := fs.Path(p)
	if err != nil || !hostfs.Within(real, tree) {
		return "", false
	}
	fi, err := os.Stat(real)
	if err != nil || !fi.Mode().IsRegular() {
		return "", false
	}
	return real, true
}

// sonameOf returns the DT_SONAME of ELF file p, "" when it has none or is
// not ELF.
func sonameOf(p string) string {
	f, err := elf.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	names, err := f.DynString(elf.DT_SONAME)
	if err != nil || len(names) == 0 {
		return ""
	}
	return names[0]
}

func bindMount(host, container string) *specs.Mount {
	return &specs.Mount{HostPath: host, ContainerPath: container, Type: "bind", Options: slices.Clone(mountOptions)}
}

// gpuDevices returns a device per character device /dev/nvidia<N> under
// root, in the order of N, then one per PCI address and GPU UUID that
// /proc/driver/nvidia/gpus maps to those, then "all". It returns an error
// when <root>/dev cannot be read, and one wrapping ErrNoGPU when no such
// node exists.
func gpuDevices(host Host) ([]specs.Device, error) {
	fs := host.FS()
	entries, err := fs.ReadDir("/dev")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list GPU device nodes: %w", err)
	}
	nodes := map[int]*specs.DeviceNode{}
	var minors []int
	for _, e := range entries {
		n, ok := strings.CutPrefix(e.Name(), "nvidia")
		minor, err := strconv.Atoi(n)
		if !ok || err != nil || minor < 0 || strconv.Itoa(minor) != n {
			continue
		}
		node, ok, err := charNode(fs, e.Name())
		if err != nil {
			return nil, err
		}
		if ok {
			nodes[minor] = node
			minors = append(minors, minor)
		}
	}
	if len(minors) == 0 {
		return nil, fmt.Errorf("%w /dev/nvidia<N> under %s", ErrNoGPU, fs.Join("/dev"))
	}
	slices.Sort(minors)
	var devices []specs.Device
	all := make([]*specs.DeviceNode, 0, len(minors))
	for _, m := range minors {
		devices = append(devices, device(strconv.Itoa(m), nodes[m]))
		all = append(all, nodes[m])
	}
	for _, a := range gpuAliases(host) {
		if node, ok := nodes[a.minor]; ok {
			devices = append(devices, device(a.name, node))
		}
	}
	return append(devices, specs.Device{Name: AllDevices, ContainerEdits: specs.ContainerEdits{DeviceNodes: all}}), nil
}

func device(name string, node *specs.DeviceNode) specs.Device {
	n := *node
	return specs.Device{Name: name, ContainerEdits: specs.ContainerEdits{DeviceNodes: []*specs.DeviceNode{&n}}}
}

// alias is another name of the GPU with the given minor.
type alias struct {
	name  string
	minor int
}

// gpuAliases returns the PCI address and GPU UUID of every GPU with a
// readable <root>/proc/driver/nvidia/gpus/<address>/information that
// gives its Device Minor, sorted by address. Names that are not valid
// CDI device names are left out.
func gpuAliases(host Host) []alias {
	infos, err := host.NvidiaGPUInfos()
	if err != nil {
		return nil
	}
	var out []alias
	for _, g := range infos {
		for _, name := range []string{g.Address, g.UUID} {
			if name != "" && parser.ValidateDeviceName(name) == nil && name != AllDevices {
				out = append(out, alias{name, g.Minor})
			}
		}
	}
	return out
}

// charNode returns the device node /dev/<name> with its type and number,
// when <root>/dev/<name> is a character device; false when it is absent
// or something else. It returns an error when it cannot be examined.
func charNode(fs *hostfs.Root, name string) (*specs.DeviceNode, bool, error) {
	p, err := fs.Lpath("/dev/" + name)
	if err != nil {
		return nil, false, fmt.Errorf("examine device node: %w", err)
	}
	var st unix.Stat_t
	err = unix.Lstat(p, &st)
	if errors.Is(err, unix.ENOENT) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("examine device node %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return nil, false, nil
	}
	return &specs.DeviceNode{
		Path:  "/dev/" + name,
		Type:  "c",
		Major: int64(unix.Major(st.Rdev)),
		Minor: int64(unix.Minor(st.Rdev)),
	}, true, nil
}
