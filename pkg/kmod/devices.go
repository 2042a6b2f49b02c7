package kmod

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Character device numbers of the NVIDIA driver, fixed by the driver.
const (
	nvidiaMajor  = 195
	modesetMinor = 254
	ctlMinor     = 255
	nodeMode     = 0o666
)

// The nodes of fixed name Devices makes (beside nvidiaN), and
// RemoveDevices removes.
const (
	nodeCtl       = "nvidiactl"
	nodeModeset   = "nvidia-modeset"
	nodeUVM       = "nvidia-uvm"
	nodeUVMTools  = "nvidia-uvm-tools"
	nodeGPUPrefix = "nvidia" // + the GPU's minor
)

// devNode is a character device node to have in the host's /dev.
type devNode struct {
	name         string
	major, minor uint32
}

// Devices creates the NVIDIA device nodes in the host's /dev, character
// devices of mode 0666 owned by root:root: nvidiactl (195:255); nvidiaN
// (195:N) for each GPU, N being the "Device Minor" of
// /proc/driver/nvidia/gpus/<address>/information when that exists,
// else the GPU's index among the sorted addresses; nvidia-modeset
// (195:254) when nvidia_modeset is live; nvidia-uvm and nvidia-uvm-tools
// (minors 0 and 1 of the major /proc/devices gives "nvidia-uvm")
// when nvidia_uvm is live.
//
// A node that already has the right type, device number, mode and owner
// is left alone; anything else at its path (a regular file, a wrong device
// number or mode) is replaced atomically: the node is made under a
// temporary name in the same directory and renamed over it.
//
// It returns the paths created or replaced (nil when all were right), or
// those before an error naming the path: host is nil, a GPU address is
// invalid, information or /proc/devices cannot be read or parsed, a minor
// is out of range, nvidia-uvm has no major, or making the node fails (EPERM
// without CAP_MKNOD).
func Devices(host Host, gpus []string) ([]string, error) {
	if host == nil {
		return nil, errors.New("create device nodes: no host")
	}
	nodes, err := wantedNodes(host, gpus)
	if err != nil {
		return nil, err
	}
	var changed []string
	for _, d := range nodes {
		path, err := host.FS().Lpath("/dev/" + d.name)
		if err != nil {
			return changed, fmt.Errorf("create device node: %w", err)
		}
		right, err := nodeIsRight(path, d)
		if err != nil {
			return changed, err
		}
		if right {
			continue
		}
		if err := replaceNode(path, d); err != nil {
			return changed, err
		}
		changed = append(changed, path)
	}
	return changed, nil
}

// wantedNodes returns the nodes Devices is to make. It returns an error
// as Devices describes.
func wantedNodes(host Host, gpus []string) ([]devNode, error) {
	nodes := []devNode{{nodeCtl, nvidiaMajor, ctlMinor}}
	for i, addr := range slices.Sorted(slices.Values(gpus)) {
		minor, err := gpuMinor(host, addr, i)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, devNode{nodeGPUPrefix + strconv.Itoa(int(minor)), nvidiaMajor, minor})
	}
	if live(host, "nvidia_modeset") {
		nodes = append(nodes, devNode{nodeModeset, nvidiaMajor, modesetMinor})
	}
	if live(host, "nvidia_uvm") {
		major, err := host.CharDeviceMajor("nvidia-uvm")
		if err != nil {
			return nil, fmt.Errorf("create nvidia-uvm device nodes: %w", err)
		}
		nodes = append(nodes, devNode{nodeUVM, major, 0}, devNode{nodeUVMTools, major, 1})
	}
	return nodes, nil
}

// live reports whether module name is live according to
// /sys/module; false when that cannot be read.
func live(host Host, name string) bool {
	sys, err := readSysModule(host, name)
	return err == nil && sys.live()
}

// gpuMinor returns the minor of the GPU at PCI address addr, the
// index-th in sorted order: the Device Minor the nvidia module gives in
// /proc/driver/nvidia/gpus/<addr>/information, or index when that file
// does not exist. It returns an error naming the GPU or file when the
// address is invalid, the file cannot be read or has no valid Device
// Minor line, or the minor is not below 254.
func gpuMinor(host Host, addr string, index int) (uint32, error) {
	info, ok, err := host.NvidiaGPUInfo(addr)
	if err != nil {
		return 0, fmt.Errorf("create device node of GPU %s: %w", addr, err)
	}
	minor := index
	if ok {
		minor = info.Minor
	}
	if minor < 0 || minor >= modesetMinor {
		return 0, fmt.Errorf("create device node of GPU %s: minor %d is not below %d", addr, minor, modesetMinor)
	}
	return uint32(minor), nil
}

// nodeIsRight reports whether path is a character device d, mode 0666,
// owned by root:root, without following a symlink. It returns false when
// nothing is there, and an error naming path when it cannot be examined.
func nodeIsRight(path string, d devNode) (bool, error) {
	var st unix.Stat_t
	err := unix.Lstat(path, &st)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("examine device node %s: %w", path, err)
	}
	return st.Mode&unix.S_IFMT == unix.S_IFCHR &&
		st.Rdev == unix.Mkdev(d.major, d.minor) &&
		st.Mode&0o7777 == nodeMode &&
		st.Uid == 0 && st.Gid == 0, nil
}

// replaceNode makes the character device d at path, replacing whatever is
// there atomically: it makes the node as .<name>.kmod-new in the same
// directory, sets its mode (which mknod filters through the umask) and
// owner, and renames it over path. It returns an error naming path when
// any of this fails, removing the temporary node.
func replaceNode(path string, d devNode) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".kmod-new")
	if err := unix.Unlink(tmp); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("create device node %s: remove leftover %s: %w", path, tmp, err)
	}
	err := unix.Mknod(tmp, unix.S_IFCHR|nodeMode, int(unix.Mkdev(d.major, d.minor)))
	if err != nil {
		return fmt.Errorf("create device node %s: mknod %s: %w", path, tmp, err)
	}
	if err = unix.Chmod(tmp, nodeMode); err == nil {
		if err = unix.Lchown(tmp, 0, 0); err == nil {
			err = unix.Rename(tmp, path)
		}
	}
	if err != nil {
		unix.Unlink(tmp)
		return fmt.Errorf("create device node %s: %w", path, err)
	}
	return nil
}

// RemoveDevices removes the NVIDIA device nodes Devices makes from the
// host's /dev: nvidiactl, nvidia-modeset, nvidia-uvm, nvidia-uvm-tools and
// nvidiaN, each only when it is a character device (a file or link of
// that name is someone else's). Call it once the modules are unloaded:
// the nodes then lead nowhere. It returns the paths removed, or those
// before an error naming the path.
func RemoveDevices(host Host) ([]string, error) {
	if host == nil {
		return nil, errors.New("remove device nodes: no host")
	}
	dev, err := host.FS().Path("/dev")
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dev)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("remove device nodes: %w", err)
	}
	var removed []string
	for _, e := range entries {
		if !isNvidiaNodeName(e.Name()) || e.Type()&os.ModeCharDevice == 0 {
			continue
		}
		p := filepath.Join(dev, e.Name())
		if err := unix.Unlink(p); err != nil && !errors.Is(err, unix.ENOENT) {
			return removed, fmt.Errorf("remove device node %s: %w", host.FS().Host(p), err)
		}
		removed = append(removed, host.FS().Host(p))
	}
	return removed, nil
}

// isNvidiaNodeName reports whether name is one of the nodes Devices makes.
func isNvidiaNodeName(name string) bool {
	switch name {
	case nodeCtl, nodeModeset, nodeUVM, nodeUVMTools:
		return true
	}
	n, ok := strings.CutPrefix(name, nodeGPUPrefix)
	if !ok || n == "" {
		return false
	}
	_, err := strconv.ParseUint(n, 10, 8)
	return err == nil
}
