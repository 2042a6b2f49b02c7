package kmod

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// requireMknod skips the test when this process may not make device nodes
// in a temporary directory (no CAP_MKNOD, as in a rootless container).
func requireMknod(t *testing.T) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "probe")
	if err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("cannot make device nodes here (mknod: %v); Devices needs CAP_MKNOD", err)
	}
}

// deviceHost returns a fixture with two GPUs, the first reporting Device
// Minor 3 in /proc, and nvidia_modeset and nvidia_uvm live, nvidia-uvm
// having major 507.
func deviceHost(t *testing.T) (*fixture, []string) {
	f := newFixture(t)
	f.write("proc/driver/nvidia/gpus/0000:01:00.0/information", "Model: \t\t NVIDIA L4\nIRQ:   \t\t 140\nDevice Minor: \t 3\nBus Location: \t 0000:01:00.0\n")
	f.write("proc/devices", "Character devices:\n  1 mem\n195 nvidia-frontend\n507 nvidia-uvm\n508 nvidia-caps\n\nBlock devices:\n  7 loop\n509 nvidia-uvm\n")
	f.loaded("nvidia_modeset", testVersion, 0)
	f.loaded("nvidia_uvm", testVersion, 0)
	return f, []string{"0000:41:00.0", "0000:01:00.0"}
}

// checkNode fails the test unless path is character device major:minor,
// mode 0666, owned by root.
func checkNode(t *testing.T, path string, major, minor uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != major || unix.Minor(st.Rdev) != minor || st.Mode&0o7777 != 0o666 || st.Uid != 0 || st.Gid != 0 {
		t.Errorf("%s: mode %#o rdev %d:%d owner %d:%d; want char 0666 %d:%d root", path, st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev), st.Uid, st.Gid, major, minor)
	}
}

func TestDevices(t *testing.T) {
	t.Parallel()
	requireMknod(t)

	t.Run("nodes are made with the right numbers and mode", func(t *testing.T) {
		f, gpus := deviceHost(t)
		got, err := Devices(f.host, gpus)
		if err != nil {
			t.Fatal(err)
		}
		dev := filepath.Join(f.root, "dev")
		want := []string{"nvidiactl", "nvidia3", "nvidia1", "nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools"}
		for i := range want {
			want[i] = filepath.Join(dev, want[i])
		}
		if !slices.Equal(got, want) {
			t.Errorf("made %v, want %v", got, want)
		}
		checkNode(t, filepath.Join(dev, "nvidiactl"), 195, 255)
		checkNode(t, filepath.Join(dev, "nvidia3"), 195, 3) // Device Minor from /proc
		checkNode(t, filepath.Join(dev, "nvidia1"), 195, 1) // index among sorted addresses
		checkNode(t, filepath.Join(dev, "nvidia-modeset"), 195, 254)
		checkNode(t, filepath.Join(dev, "nvidia-uvm"), 507, 0)
		checkNode(t, filepath.Join(dev, "nvidia-uvm-tools"), 507, 1)
	})

	t.Run("a second run changes nothing", func(t *testing.T) {
		f, gpus := deviceHost(t)
		if _, err := Devices(f.host, gpus); err != nil {
			t.Fatal(err)
		}
		got, err := Devices(f.host, gpus)
		if err != nil || got != nil {
			t.Errorf("Devices = %v, %v; want nil, nil", got, err)
		}
	})

	t.Run("wrong nodes are replaced and right ones left", func(t *testing.T) {
		f, gpus := deviceHost(t)
		dev := filepath.Join(f.root, "dev")
		if _, err := Devices(f.host, gpus); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"nvidiactl", "nvidia3", "nvidia-modeset"} {
			if err := os.Remove(filepath.Join(dev, n)); err != nil {
				t.Fatal(err)
			}
		}
		writeFile(t, filepath.Join(dev, "nvidiactl"), "not a device")
		mknod(t, filepath.Join(dev, "nvidia3"), 195, 0, 0o666)
		mknod(t, filepath.Join(dev, "nvidia-modeset"), 195, 254, 0o600)

		got, err := Devices(f.host, gpus)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{filepath.Join(dev, "nvidiactl"), filepath.Join(dev, "nvidia3"), filepath.Join(dev, "nvidia-modeset")}
		if !slices.Equal(got, want) {
			t.Errorf("replaced %v, want %v", got, want)
		}
		checkNode(t, filepath.Join(dev, "nvidiactl"), 195, 255)
		checkNode(t, filepath.Join(dev, "nvidia3"), 195, 3)
		checkNode(t, filepath.Join(dev, "nvidia-modeset"), 195, 254)
		entries, _ := os.ReadDir(dev)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("left over %s", e.Name())
			}
		}
	})

	t.Run("modeset and uvm nodes wait for their modules", func(t *testing.T) {
		f := newFixture(t)
		got, err := Devices(f.host, []string{"0000:01:00.0"})
		if err != nil {
			t.Fatal(err)
		}
		want := []string{filepath.Join(f.root, "dev", "nvidiactl"), filepath.Join(f.root, "dev", "nvidia0")}
		if !slices.Equal(got, want) {
			t.Errorf("made %v, want %v", got, want)
		}
	})

	t.Run("nvidia_uvm without a major in /proc/devices is an error", func(t *testing.T) {
		f := newFixture(t)
		f.loaded("nvidia_uvm", testVersion, 0)
		f.write("proc/devices", "Character devices:\n195 nvidia-frontend\n\nBlock devices:\n511 nvidia-uvm\n")
		_, err := Devices(f.host, nil)
		if err == nil || !strings.Contains(err.Error(), `no character device "nvidia-uvm"`) {
			t.Errorf("err %v", err)
		}
	})

	t.Run("a bad Device Minor or address is an error naming the GPU", func(t *testing.T) {
		f := newFixture(t)
		f.write("proc/driver/nvidia/gpus/0000:01:00.0/information", "Device Minor: 254\n")
		if _, err := Devices(f.host, []string{"0000:01:00.0"}); err == nil || !strings.Contains(err.Error(), "GPU 0000:01:00.0") {
			t.Errorf("err %v", err)
		}
		if _, err := Devices(f.host, []string{"../../etc"}); err == nil {
			t.Error("no error for an address with '/'")
		}
	})

	t.Run("a directory in a node's place is an error naming it", func(t *testing.T) {
		f := newFixture(t)
		mkdir(t, filepath.Join(f.root, "dev", "nvidiactl", "x"))
		_, err := Devices(f.host, nil)
		if err == nil || !strings.Contains(err.Error(), filepath.Join(f.root, "dev", "nvidiactl")) {
			t.Errorf("err %v", err)
		}
		if errors.Is(err, os.ErrNotExist) {
			t.Errorf("err %v", err)
		}
	})
}

// mknod makes a character device node with exactly the given mode.
func mknod(t *testing.T, path string, major, minor, mode uint32) {
	t.Helper()
	if err := unix.Mknod(path, unix.S_IFCHR|mode, int(unix.Mkdev(major, minor))); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
