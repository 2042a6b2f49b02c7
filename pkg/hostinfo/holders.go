package hostinfo

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// DeviceHolder is a process with a device file open.
type DeviceHolder struct {
	PID     int
	Command string // /proc/<pid>/comm
	Device  string // the path it has open, e.g. /dev/nvidia0
}

func (d DeviceHolder) String() string {
	return fmt.Sprintf("pid %d (%s) has %s open", d.PID, d.Command, d.Device)
}

// maxHolders bounds what DeviceHolders returns: enough to name who to
// stop, not a listing of a busy node.
const maxHolders = 8

// DeviceHolders returns the processes that have a file under prefix open
// (prefix "/dev/nvidia" finds /dev/nvidia0, /dev/nvidiactl, /dev/nvidia-uvm),
// by the links in /proc/<pid>/fd, sorted by pid, at most eight, each
// device named once per process. Processes that exit while it looks, or
// whose descriptors it may not read, are passed over.
func (h *Host) DeviceHolders(prefix string) ([]DeviceHolder, error) {
	procDir := h.hostPath("/proc")
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	var out []DeviceHolder
	for _, pid := range pids {
		dir := filepath.Join(procDir, strconv.Itoa(pid))
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue
		}
		seen := map[string]bool{}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err != nil || !strings.HasPrefix(target, prefix) || seen[target] {
				continue
			}
			seen[target] = true
			comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
			out = append(out, DeviceHolder{PID: pid, Command: strings.TrimSpace(string(comm)), Device: target})
			if len(out) == maxHolders {
				return out, nil
			}
		}
	}
	return out, nil
}
