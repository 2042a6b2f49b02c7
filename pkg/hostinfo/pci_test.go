package hostinfo

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestNvidiaGPUsFixtures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		host string
		want []GPU
	}{
		{"flatcar", []GPU{{Address: "0000:3b:00.0", Vendor: "0x10de", Device: "0x2330", Class: "0x030200", Driver: "nvidia"}}},
		{"coreos", []GPU{{Address: "0000:00:1e.0", Vendor: "0x10de", Device: "0x1db4", Class: "0x030000"}}},
		{"debian", nil},
	}
	for _, tt := range tests {
		t.Run("the "+tt.host+" fixture's GPUs are found", func(t *testing.T) {
			got, err := NvidiaGPUs(fixture(t, tt.host))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// realSysfs returns the files of a sysfs laid out as the kernel does: the
// bus entries are relative symlinks into /sys/devices, and a bound
// function's driver link points back into /sys/bus.
func realSysfs() map[string]string {
	const (
		bridge = "sys/devices/pci0000:00/0000:00:01.0/"
		other  = "sys/devices/pci0000:00/"
	)
	return map[string]string{
		bridge + "0000:3b:00.0/vendor":       "0x10de\n",
		bridge + "0000:3b:00.0/device":       "0x2330\n",
		bridge + "0000:3b:00.0/class":        "0x030200\n",
		bridge + "0000:3b:00.0/driver":       "->../../../../bus/pci/drivers/nvidia",
		bridge + "0000:3b:00.1/vendor":       "0x10de\n",
		bridge + "0000:3b:00.1/device":       "0x22a3\n",
		bridge + "0000:3b:00.1/class":        "0x040300\n",
		bridge + "0000:3b:00.1/driver":       "->../../../../bus/pci/drivers/snd_hda_intel",
		bridge + "vendor":                    "0x8086\n",
		bridge + "class":                     "0x060400\n",
		other + "0000:00:02.0/vendor":        "0x8086\n",
		other + "0000:00:02.0/class":         "0x030000\n",
		other + "0000:00:02.0/device":        "0x4692\n",
		other + "0000:17:00.0/vendor":        "0x10de\n",
		other + "0000:17:00.0/device":        "0x20b5\n",
		other + "0000:17:00.0/class":         "0x030200\n",
		"sys/bus/pci/drivers/nvidia/":        "",
		"sys/bus/pci/drivers/snd_hda_intel/": "",
		"sys/bus/pci/devices/0000:3b:00.0":   "->../../../devices/pci0000:00/0000:00:01.0/0000:3b:00.0",
		"sys/bus/pci/devices/0000:3b:00.1":   "->../../../devices/pci0000:00/0000:00:01.0/0000:3b:00.1",
		"sys/bus/pci/devices/0000:00:01.0":   "->../../../devices/pci0000:00/0000:00:01.0",
		"sys/bus/pci/devices/0000:00:02.0":   "->../../../devices/pci0000:00/0000:00:02.0",
		"sys/bus/pci/devices/0000:17:00.0":   "->../../../devices/pci0000:00/0000:17:00.0",
	}
}

func TestNvidiaGPUs(t *testing.T) {
	t.Parallel()
	t.Run("symlinked sysfs entries are resolved inside root", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, realSysfs())
		got, err := NvidiaGPUs(root)
		if err != nil {
			t.Fatal(err)
		}
		want := []GPU{
			{Address: "0000:17:00.0", Vendor: "0x10de", Device: "0x20b5", Class: "0x030200"},
			{Address: "0000:3b:00.0", Vendor: "0x10de", Device: "0x2330", Class: "0x030200", Driver: "nvidia"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got  %+v\nwant %+v", got, want)
		}
	})

	t.Run("an absolute entry symlink is resolved inside root", func(t *testing.T) {
		root := t.TempDir()
		files := realSysfs()
		files["sys/bus/pci/devices/0000:3b:00.0"] = "->/sys/devices/pci0000:00/0000:00:01.0/0000:3b:00.0"
		writeTree(t, root, files)
		got, err := NvidiaGPUs(root)
		if err != nil || len(got) != 2 || got[1].Address != "0000:3b:00.0" {
			t.Errorf("NvidiaGPUs = %+v, %v", got, err)
		}
	})

	t.Run("an entry whose device has gone is skipped", func(t *testing.T) {
		root := t.TempDir()
		files := realSysfs()
		files["sys/bus/pci/devices/0000:af:00.0"] = "->../../../devices/pci0000:ae/0000:af:00.0"
		writeTree(t, root, files)
		got, err := NvidiaGPUs(root)
		if err != nil || len(got) != 2 {
			t.Errorf("NvidiaGPUs = %+v, %v", got, err)
		}
	})

	t.Run("upper-case hex is accepted", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"sys/bus/pci/devices/0000:01:00.0/vendor": "0x10DE\n",
			"sys/bus/pci/devices/0000:01:00.0/device": "0x2330\n",
			"sys/bus/pci/devices/0000:01:00.0/class":  "0x0302FF\n",
		})
		got, err := NvidiaGPUs(root)
		if err != nil || len(got) != 1 {
			t.Errorf("NvidiaGPUs = %+v, %v", got, err)
		}
	})

	t.Run("a missing /sys/bus/pci/devices gives no GPUs and no error", func(t *testing.T) {
		got, err := NvidiaGPUs(t.TempDir())
		if err != nil || got != nil {
			t.Errorf("NvidiaGPUs = %+v, %v; want nil, nil", got, err)
		}
	})

	t.Run("a bad class is an error naming the file", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{
			"sys/bus/pci/devices/0000:01:00.0/vendor": "0x10de\n",
			"sys/bus/pci/devices/0000:01:00.0/class":  "display\n",
		})
		_, err := NvidiaGPUs(root)
		want := filepath.Join(root, "sys/bus/pci/devices/0000:01:00.0/class")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want one naming %s", err, want)
		}
	})

	t.Run("a missing vendor file is an error", func(t *testing.T) {
		root := t.TempDir()
		writeTree(t, root, map[string]string{"sys/bus/pci/devices/0000:01:00.0/class": "0x030000\n"})
		if got, err := NvidiaGPUs(root); err == nil {
			t.Errorf("NvidiaGPUs = %+v, want error", got)
		}
	})
}
