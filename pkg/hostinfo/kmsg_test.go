package hostinfo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/test/needs"
)

func TestKernelLog(t *testing.T) {
	t.Run("records since a time, continuation lines and escapes dropped, newest kept", func(t *testing.T) {
		root := t.TempDir()
		log := strings.Join([]string{
			"6,1,1000000,-;NVRM: before",
			" SUBSYSTEM=pci",
			" DEVICE=+pci:0000:01:00.0",
			`3,2,2000000,-;NVRM: one\x09tab`,
			"not a record",
			"4,3,3000000,c;NVRM: two",
			"4,4,4000000,-;usb: other",
			"4,5,5000000,-;NVRM: three",
		}, "\n") // no newline at the end: a file cut mid-record
		if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "dev/kmsg"), []byte(log), 0o644); err != nil {
			t.Fatal(err)
		}
		h, err := Open(root)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		msgs, err := h.KernelLog(2*time.Second, func(s string) bool { return strings.HasPrefix(s, "NVRM:") }, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != 2 || msgs[0].Text != "NVRM: two" || msgs[0].At != 3*time.Second || msgs[1].Text != "NVRM: three" {
			t.Errorf("msgs %+v", msgs)
		}
		all, _ := h.KernelLog(0, nil, 0)
		if len(all) != 5 || all[1].Text != "NVRM: one tab" {
			t.Errorf("all %+v", all)
		}
	})

	t.Run("a host without /dev/kmsg has no messages", func(t *testing.T) {
		h, err := Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if msgs, err := h.KernelLog(0, nil, 0); msgs != nil || err != nil {
			t.Errorf("%v, %v", msgs, err)
		}
	})

	t.Run("the kernel's own /dev/kmsg is read to its end without blocking", func(t *testing.T) {
		needs.Root(t, "read /dev/kmsg")
		h, err := Open("/")
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		done := make(chan error, 1)
		go func() {
			_, err := h.KernelLog(Monotonic(), nil, 10)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("KernelLog blocked on /dev/kmsg")
		}
	})
}
