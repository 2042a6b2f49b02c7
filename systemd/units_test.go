package units

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// syntaxProblem matches what systemd says about a unit file it cannot
// read as written; missing binaries on this machine are not problems.
var syntaxProblem = regexp.MustCompile(`(?i)unknown (key|section|lvalue)|failed to parse|invalid|ignoring|bad`)

func TestUnitsParse(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed; the VM tests run the units for real")
	}
	dir := t.TempDir()
	var files []string
	for _, f := range Layout {
		data, err := Files.ReadFile(f.Name)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(f.Name))
		if filepath.Dir(f.Name) == "kubelet.service.d" {
			// A drop-in is checked as the unit it would become.
			p = filepath.Join(dir, "kubelet.service")
			data = append([]byte("[Service]\nExecStart=/bin/true\n"), data...)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(p, ".service") {
			files = append(files, p)
		}
	}
	out, _ := exec.Command(analyze, append([]string{"verify", "--man=no"}, files...)...).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if syntaxProblem.MatchString(line) {
			t.Errorf("systemd-analyze: %s", line)
		}
	}
}

func TestLayout(t *testing.T) {
	t.Run("every embedded file is installed somewhere under /etc", func(t *testing.T) {
		for _, f := range Layout {
			if _, err := Files.ReadFile(f.Name); err != nil {
				t.Errorf("%s: %v", f.Name, err)
			}
			if !strings.HasPrefix(f.Dest, "/etc/") {
				t.Errorf("%s goes to %s", f.Name, f.Dest)
			}
		}
	})
	t.Run("the daemon unit is Type=notify and does not namespace its mounts away", func(t *testing.T) {
		data, _ := Files.ReadFile("nvidia-driverd.service")
		unit := string(data)
		for _, want := range []string{"Type=notify", "NotifyAccess=main", "ExecReload=", "Restart=on-failure", "WatchdogSec="} {
			if !strings.Contains(unit, "\n"+want) {
				t.Errorf("missing %s", want)
			}
		}
		for _, bad := range []string{"ProtectSystem=", "PrivateTmp=", "ProtectHome=", "ReadWritePaths=", "ProtectKernelModules=", "PrivateMounts="} {
			if strings.Contains(unit, "\n"+bad) {
				t.Errorf("%s would hide the daemon's mounts or forbid module loading", bad)
			}
		}
	})
}

func TestPersistencedUnit(t *testing.T) {
	t.Run("persistenced is not ordered after the daemon that starts it", func(t *testing.T) {
		data, _ := Files.ReadFile("nvidia-persistenced.service")
		if strings.Contains(string(data), "\nAfter=nvidia-driverd.service") {
			t.Fatal("After=nvidia-driverd.service deadlocks: the daemon waits for this job before READY=1")
		}
	})
	t.Run("persistenced runs from the current tree, whatever the library mode", func(t *testing.T) {
		data, _ := Files.ReadFile("nvidia-persistenced.service")
		if !strings.Contains(string(data), "\nExecStart=/opt/nvidia/current/bin/nvidia-persistenced ") {
			t.Fatal("ExecStart must use /opt/nvidia/current/bin")
		}
	})
}
