package hostinfo

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"strings"
)

// GPUInfo is what the loaded nvidia module says of one GPU in
// /proc/driver/nvidia/gpus/<address>/information.
type GPUInfo struct {
	Address string // PCI address, the directory's name
	Minor   int    // "Device Minor": N of /dev/nvidiaN
	UUID    string // "GPU UUID", "" when absent
	Model   string // "Model", "" when absent
}

// NvidiaGPUInfo reads the information file of the GPU at PCI address
// addr. It returns ok false when the file does not exist (the nvidia
// module is not loaded, or does not drive that GPU), and an error naming
// the file when addr is not a plain name, or the file cannot be read or
// has no numeric Device Minor line.
func (h *Host) NvidiaGPUInfo(addr string) (GPUInfo, bool, error) {
	if addr == "" || addr == "." || addr == ".." || strings.ContainsAny(addr, "/\x00") {
		return GPUInfo{}, false, fmt.Errorf("read GPU information: invalid PCI address %q", addr)
	}
	p := path.Join(nvidiaGPUsDir, addr, "information")
	b, err := h.readFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return GPUInfo{}, false, nil
	}
	if err != nil {
		return GPUInfo{}, false, errorf("read GPU information", err)
	}
	text := string(b)
	g := GPUInfo{Address: addr, UUID: field(text, "GPU UUID"), Model: field(text, "Model")}
	minor, ok := fieldOK(text, "Device Minor")
	if !ok {
		return GPUInfo{}, false, fmt.Errorf("read GPU information: %s: no Device Minor line", h.hostPath(p))
	}
	if g.Minor, err = strconv.Atoi(minor); err != nil || g.Minor < 0 {
		return GPUInfo{}, false, fmt.Errorf("read GPU information: %s: Device Minor %q is not a number", h.hostPath(p), minor)
	}
	return g, true, nil
}

// NvidiaGPUInfos returns the information of every GPU the loaded nvidia
// module lists under /proc/driver/nvidia/gpus, sorted by address; a GPU
// whose file cannot be read or parsed is left out. It returns nil when
// the directory does not exist, and an error naming it when it cannot be
// read.
func (h *Host) NvidiaGPUInfos() ([]GPUInfo, error) {
	entries, err := h.fs.ReadDir(nvidiaGPUsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, errorf("read GPU information", err)
	}
	var out []GPUInfo
	for _, e := range entries {
		if g, ok, err := h.NvidiaGPUInfo(e.Name()); err == nil && ok {
			out = append(out, g)
		}
	}
	return out, nil
}

// CharDeviceMajor returns the major of the character device driver name
// from the "Character devices:" section of /proc/devices ("511
// nvidia-uvm"). It returns an error naming the file when it cannot be
// read or has no such line.
func (h *Host) CharDeviceMajor(name string) (uint32, error) {
	b, err := h.fs.ReadFile(procDevicesPath, limitProcList)
	if err != nil {
		return 0, errorf("read character devices", err)
	}
	inChar := false
	for line := range strings.SplitSeq(string(b), "\n") {
		words := strings.Fields(line)
		switch {
		case strings.HasSuffix(line, "devices:"):
			inChar = line == "Character devices:"
		case inChar && len(words) == 2 && words[1] == name:
			if n, err := strconv.ParseUint(words[0], 10, 32); err == nil {
				return uint32(n), nil
			}
		}
	}
	return 0, fmt.Errorf("read character devices: %s has no character device %q", h.hostPath(procDevicesPath), name)
}

// field returns the trimmed value of the first "<key>: value" line of s,
// "" when there is none.
func field(s, key string) string {
	v, _ := fieldOK(s, key)
	return v
}

func fieldOK(s, key string) (string, bool) {
	for line := range strings.SplitSeq(s, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}
