package daemon

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod/kmodtest"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/libs/libstest"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
	"go.uber.org/zap"
)

// countingHost is a real Host that counts how often it is opened and how
// often each fact is read.
type countingHost struct {
	*hostinfo.Host
	c *counts
}

type counts struct {
	mu    sync.Mutex
	opens int
	reads map[string]int
}

func (c *counts) add(what string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads[what]++
}

func (h countingHost) OSRelease() (hostinfo.OSRelease, error) {
	h.c.add("os-release")
	return h.Host.OSRelease()
}

func (h countingHost) KernelRelease() (string, error) {
	h.c.add("kernel release")
	return h.Host.KernelRelease()
}

func (h countingHost) NvidiaGPUs() ([]hostinfo.GPU, error) {
	h.c.add("gpus")
	return h.Host.NvidiaGPUs()
}

func (h countingHost) NvidiaProcVersion() (string, error) {
	h.c.add("nvidia version")
	return h.Host.NvidiaProcVersion()
}

func (h countingHost) KernelFlags(release string) ([]string, string, bool) {
	h.c.add("kernel flags")
	return h.Host.KernelFlags(release)
}

func TestReconcileAssessesTheHostOnce(t *testing.T) {
	for _, c := range []struct {
		name    string
		publish bool
	}{
		{"an install (fetch, switch, activate)", true},
		{"a failed fetch (no image)", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, nil)
			if c.publish {
				r.publish(t, driver, kernel)
			}
			n := &counts{reads: map[string]int{}}
			r.d.OpenHost = func() (Host, error) {
				h, err := hostinfo.Open(r.root)
				if err != nil {
					return nil, err
				}
				n.mu.Lock()
				n.opens++
				n.mu.Unlock()
				return countingHost{h, n}, nil
			}
			_, err := r.d.Reconcile(context.Background())
			if c.publish && err != nil {
				t.Fatal(err)
			}
			if n.opens != 1 {
				t.Errorf("host opened %d times, want 1", n.opens)
			}
			for _, what := range []string{"os-release", "kernel release", "gpus", "nvidia version", "kernel flags"} {
				if n.reads[what] != 1 {
					t.Errorf("%s read %d times, want 1 (all: %v)", what, n.reads[what], n.reads)
				}
			}
		})
	}
}

func TestNewRejectsMissingDependencies(t *testing.T) {
	t.Parallel()
	full := func() Deps {
		return Deps{Root: "/", Log: zap.NewNop(), Notify: systemd.NewNotifier(false),
			Syscalls: &kmodtest.Syscalls{}, Mounter: libstest.NoMounts{}, Units: &fakeUnits{}}
	}
	if _, err := New(full()); err != nil {
		t.Fatalf("New with every dependency: %v", err)
	}
	for name, drop := range map[string]func(*Deps){
		"Log":      func(d *Deps) { d.Log = nil },
		"Notify":   func(d *Deps) { d.Notify = nil },
		"Syscalls": func(d *Deps) { d.Syscalls = nil },
		"Mounter":  func(d *Deps) { d.Mounter = nil },
		"Units":    func(d *Deps) { d.Units = nil },
		"Root":     func(d *Deps) { d.Root = "relative" },
	} {
		d := full()
		drop(&d)
		if _, err := New(d); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("without %s: %v, want an error naming it", name, err)
		}
	}
}
