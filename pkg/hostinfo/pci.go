package hostinfo

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

// nvidiaVendor is NVIDIA's PCI vendor ID as sysfs prints it.
const nvidiaVendor = "0x10de"

// displayClass is the PCI base class of display controllers (VGA 0x0300,
// XGA 0x0301, 3D 0x0302, other 0x0380), which compute GPUs use too.
const displayClass = 0x03

// GPU describes one NVIDIA GPU, a PCI function, as sysfs shows it.
type GPU struct {
	Address string // PCI address, e.g. "0000:3b:00.0" (the sysfs entry name)
	Vendor  string // vendor ID, "0x10de"
	Device  string // device ID, e.g. "0x2330"
	Class   string // class code, e.g. "0x030200"
	Driver  string // basename of the driver symlink's target, "" if unbound
}

// NvidiaGPUs lists the NVIDIA GPUs on the host, sorted by address: the PCI
// functions under <root>/sys/bus/pci/devices whose vendor is 0x10de and
// whose class is a display controller (class>>16 == 0x03). Other functions
// of the same card, such as its HDMI audio or USB-C controller, are not
// GPUs. Entries may be symlinks, as in real sysfs, resolved inside root, or
// plain directories.
//
// It returns (nil, nil) if <root>/sys/bus/pci/devices does not exist or
// lists no NVIDIA GPU. It returns an error naming
// the path if the directory, a function's vendor, class or device file, or
// its driver link cannot be read, or a class is not a hexadecimal number. Errors
// about a function's files name them by their resolved path.
// An entry whose target vanished since the listing (a hot-unplugged
// device) is skipped.
func (h *Host) NvidiaGPUs() ([]GPU, error) {
	entries, err := h.fs.ReadDir(pciDevicesPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list nvidia gpus: %w", err)
	}
	var gpus []GPU
	for _, e := range entries {
		gpu, ok, err := readNvidiaGPU(h, e.Name())
		if err != nil {
			return nil, fmt.Errorf("list nvidia gpus: %w", err)
		}
		if ok {
			gpus = append(gpus, gpu)
		}
	}
	slices.SortFunc(gpus, func(a, b GPU) int { return strings.Compare(a.Address, b.Address) })
	return gpus, nil
}

// readNvidiaGPU reads the PCI function at <root>/sys/bus/pci/devices/<addr>.
// It returns the GPU and true if the function is an NVIDIA display
// controller, false if it is something else or has gone, or an error
// naming the path as for NvidiaGPUs.
func readNvidiaGPU(h *Host, addr string) (GPU, bool, error) {
	entry := path.Join(pciDevicesPath, addr)
	real, err := h.fs.Path(entry)
	if err != nil {
		return GPU{}, false, err
	}
	if _, err := h.fs.Stat(entry); errors.Is(err, fs.ErrNotExist) {
		return GPU{}, false, nil
	} else if err != nil {
		return GPU{}, false, err
	}
	// Read through the resolved directory: one lookup instead of three,
	// and the files all come from the same device.
	dir := h.fs.Host(real)

	gpu := GPU{Address: addr}
	if gpu.Vendor, err = h.readTrimmed(path.Join(dir, "vendor")); err != nil {
		return GPU{}, false, err
	}
	if !strings.EqualFold(gpu.Vendor, nvidiaVendor) {
		return GPU{}, false, nil
	}
	if gpu.Class, err = h.readTrimmed(path.Join(dir, "class")); err != nil {
		return GPU{}, false, err
	}
	class, err := strconv.ParseUint(strings.TrimPrefix(gpu.Class, "0x"), 16, 32)
	if err != nil {
		return GPU{}, false, fmt.Errorf("%s: bad class: %w", h.hostPath(path.Join(dir, "class")), err)
	}
	if class>>16 != displayClass {
		return GPU{}, false, nil
	}
	if gpu.Device, err = h.readTrimmed(path.Join(dir, "device")); err != nil {
		return GPU{}, false, err
	}
	target, err := h.fs.Readlink(path.Join(dir, "driver"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// unbound: no driver link
	case err != nil:
		return GPU{}, false, err
	default:
		gpu.Driver = path.Base(target)
	}
	return gpu, true, nil
}
