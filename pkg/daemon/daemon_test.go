package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/test/needs"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod/kmodtest"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/libs/libstest"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/metrics"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
)

const (
	driver  = "550.54.14"
	kernel  = "6.1.77-flatcar"
	layout  = "/media/usb"
	flags   = "SMP preempt mod_unload"
	osVer   = "3815.2.0"
	imgTag  = osVer + "-" + driver
	newTree = "/opt/nvidia/" + driver + "/" + osVer
)

type fakeUnits struct {
	mu      sync.Mutex
	started []string
	fail    error // what Start returns, when set
}

func (u *fakeUnits) Start(_ context.Context, unit string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.started = append(u.started, unit)
	return u.fail
}
func (u *fakeUnits) Stop(context.Context, string) error { return nil }

var _ engine.UnitControl = (*fakeUnits)(nil)

// notifySocket listens where sd_notify messages go and collects them.
type notifySocket struct {
	conn *net.UnixConn
	msgs chan string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", p)
	n := &notifySocket{conn: conn, msgs: make(chan string, 100)}
	go func() {
		buf := make([]byte, 4096)
		for {
			m, err := conn.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:m])
		}
	}()
	return n
}

// until reads messages until one contains want, and returns those read.
func (n *notifySocket) until(t *testing.T, want string) []string {
	t.Helper()
	var seen []string
	timeout := time.After(20 * time.Second)
	for {
		select {
		case m := <-n.msgs:
			seen = append(seen, m)
			if strings.Contains(m, want) {
				return seen
			}
		case <-timeout:
			t.Fatalf("no %q among %q", want, seen)
		}
	}
}

type rig struct {
	root   string
	kernel *kmodtest.Syscalls
	units  *fakeUnits
	d      *Daemon
}

// newRig lays out a Flatcar host just updated to 3815.2.0, whose store has
// the tree of the old OS current, and an OCI layout holding publishable
// images.
func newRig(t *testing.T, cfg func(*config.Config)) *rig {
	t.Helper()
	return newRigOn(t, "flatcar-updated", cfg)
}

// newRigOn is newRig on another sample host.
func newRigOn(t *testing.T, host string, cfg func(*config.Config)) *rig {
	t.Helper()
	needs.Root(t, "make the device nodes activation makes")
	root := t.TempDir()
	if err := hostfixture.Make("../../test/fixtures/hosts", root, hostfixture.Specs[host]); err != nil {
		t.Fatal(err)
	}
	// ldconfig -r <root> reads the root's own configuration.
	write(t, root, "etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n")
	if err := os.Mkdir(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := config.Default()
	c.DriverVersion = driver
	c.Source = source.LayoutPrefix + layout
	c.LibraryMode = "ldconfig"
	c.ModuleParams = map[string]string{"nvidia": "NVreg_EnableMSI=1"}
	if cfg != nil {
		cfg(&c)
	}
	r := &rig{root: root, kernel: &kmodtest.Syscalls{Root: root}, units: &fakeUnits{}}
	d, err := New(Deps{
		Root: root, Config: c, Log: zap.NewNop(),
		Notify:   systemd.NewNotifier(false),
		Syscalls: r.kernel, Mounter: libstest.NoMounts{}, Units: r.units,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.d = d
	return r
}

var amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}

func write(t *testing.T, root, name, body string) {
	t.Helper()
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// publish puts an image of a driver tree for kernel k into the layout.
func (r *rig) publish(t *testing.T, drv, k string) {
	t.Helper()
	dir := t.TempDir()
	if err := hostfixture.DriverTree(dir, drv, k, k+" "+flags); err != nil {
		t.Fatal(err)
	}
	b, err := publish.Build(dir, publish.Options{Platform: amd64, Labels: map[string]string{
		publish.LabelDriver: drv, publish.LabelKernel: k, publish.LabelOSVer: osVer}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := source.WriteLayout(filepath.Join(r.root, layout), osVer+"-"+drv, b.Image); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) current(t *testing.T) string {
	t.Helper()
	target, err := os.Readlink(filepath.Join(r.root, "opt/nvidia/current"))
	if err != nil {
		t.Fatal(err)
	}
	return "/opt/nvidia/" + target
}

// run starts Run and returns a function that stops it and returns its
// error, and the reload channel.
func (r *rig) run(t *testing.T) (stop func() error, reload chan os.Signal) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	reload = make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- r.d.Run(ctx, reload) }()
	return func() error { cancel(); return <-done }, reload
}

func TestRun(t *testing.T) {
	t.Run("after an OS update it installs, activates, and only then says READY", func(t *testing.T) {
		n := listenNotify(t)
		r := newRig(t, nil)
		r.publish(t, driver, kernel)
		stop, _ := r.run(t)
		seen := n.until(t, "READY=1")
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		ready := seen[len(seen)-1]
		if !strings.Contains(ready, "STATUS=driver "+driver+" active from "+newTree) {
			t.Errorf("READY message %q", ready)
		}
		var statuses []string
		for _, m := range seen[:len(seen)-1] {
			if strings.Contains(m, "READY=1") {
				t.Fatalf("READY before activation: %q", seen)
			}
			statuses = append(statuses, m)
		}
		if all := strings.Join(statuses, "|"); !strings.Contains(all, "STATUS=install:") || !strings.Contains(all, "STATUS=pulling") || !strings.Contains(all, "EXTEND_TIMEOUT_USEC=") || !strings.Contains(all, "STATUS=activating") {
			t.Errorf("statuses %q", statuses)
		}
		if got := strings.Join(r.kernel.Loaded(), " "); got != "nvidia nvidia_modeset nvidia_drm nvidia_uvm" && got != "nvidia nvidia_modeset nvidia_uvm nvidia_drm" && got != "nvidia nvidia_uvm nvidia_modeset nvidia_drm" {
			t.Errorf("load order %q", got)
		}
		if r.current(t) != newTree {
			t.Errorf("current %s", r.current(t))
		}
		if len(r.units.started) != 1 || r.units.started[0] != "nvidia-persistenced.service" {
			t.Errorf("units started %q", r.units.started)
		}
		for _, dev := range []string{"dev/nvidiactl", "dev/nvidia0", "dev/nvidia-uvm", "dev/nvidia-modeset"} {
			if fi, err := os.Stat(filepath.Join(r.root, dev)); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
				t.Errorf("%s: %v %v", dev, fi, err)
			}
		}
		if b, err := os.ReadFile(filepath.Join(r.root, "etc/ld.so.conf.d/nvidia-driverd.conf")); err != nil || !strings.Contains(string(b), newTree+"/lib64") {
			t.Errorf("drop-in %q %v", b, err)
		}
	})

	t.Run("a host without a GPU is ready with nothing loaded, so kubelet starts", func(t *testing.T) {
		n := listenNotify(t)
		r := newRigOn(t, "debian-generic", func(c *config.Config) { c.RequireGPU = true; c.Prefetch = true })
		r.d.Metrics = metrics.New()
		stop, reload := r.run(t)
		seen := n.until(t, "READY=1")
		if m := seen[len(seen)-1]; !strings.Contains(m, "STATUS=nothing to do: no NVIDIA GPU on the PCI bus") {
			t.Errorf("READY message %q", m)
		}
		reload <- syscall.SIGHUP // a re-check finds the same
		n.until(t, "RELOADING=1")
		if m := n.until(t, "READY=1"); !strings.Contains(m[len(m)-1], "STATUS=nothing to do: ") {
			t.Errorf("re-check %q", m)
		}
		if err := stop(); err != nil {
			t.Fatalf("Run = %v, want nil: no GPU is not a failure", err)
		}
		if got := r.kernel.Loaded(); len(got) != 0 {
			t.Errorf("loaded %q on a host without a GPU", got)
		}
		if r.d.Metrics.IsReady() {
			t.Error("driver_ready is 1 without a driver")
		}
		if _, err := os.Lstat(filepath.Join(r.root, "opt/nvidia/current")); !os.IsNotExist(err) {
			t.Errorf("current made on a host without a GPU: %v", err)
		}
	})

	t.Run("with no modules configured the user space is activated and persistenced is not started", func(t *testing.T) {
		listenNotify(t)
		r := newRig(t, func(c *config.Config) { c.Modules = []string{} })
		r.publish(t, driver, kernel)
		r.loadOld(t, "535.161.07", 0) // the host's own driver, loaded by other means
		out, err := r.d.Reconcile(context.Background())
		if err != nil || out.Tree != newTree {
			t.Fatalf("%+v, %v", out, err)
		}
		if got := r.kernel.Loaded(); len(got) != 0 {
			t.Errorf("loaded %q", got)
		}
		if names, _ := r.kernel.Deleted(); len(names) != 0 {
			t.Errorf("unloaded the host's own driver: %q", names)
		}
		// What is wanted is in place: the plan is none, so --ready holds.
		if err := r.d.Look(func(a engine.Assessment) error {
			if a.Decision.Action != engine.ActionNone {
				t.Errorf("plan after activation: %+v", a.Decision)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(r.units.started) != 0 {
			t.Errorf("started %q without a driver", r.units.started)
		}
		if b, err := os.ReadFile(filepath.Join(r.root, "etc/ld.so.conf.d/nvidia-driverd.conf")); err != nil || !strings.Contains(string(b), newTree+"/lib64") {
			t.Errorf("drop-in %q %v", b, err)
		}
	})

	t.Run("with failure-policy fail a missing image fails the unit and never says READY", func(t *testing.T) {
		n := listenNotify(t)
		r := newRig(t, nil)
		r.publish(t, "535.161.07", kernel) // another driver: the wanted tag is missing
		stop, _ := r.run(t)
		n.until(t, "STATUS=failed")
		err := stop()
		if err == nil || !strings.Contains(err.Error(), imgTag) {
			t.Fatalf("Run = %v", err)
		}
		for len(n.msgs) > 0 {
			if m := <-n.msgs; strings.Contains(m, "READY=1") {
				t.Fatalf("READY after failure: %q", m)
			}
		}
	})

	t.Run("with keep-previous and nothing usable it stays up degraded", func(t *testing.T) {
		n := listenNotify(t)
		r := newRig(t, func(c *config.Config) { c.FailurePolicy = "keep-previous" })
		stop, _ := r.run(t)
		seen := n.until(t, "READY=1")
		if !strings.Contains(seen[len(seen)-1], "STATUS=degraded: ") {
			t.Fatalf("%q", seen)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a tree that fails to load is rolled back and its image not retried", func(t *testing.T) {
		listenNotify(t)
		r := newRig(t, nil)
		r.publish(t, driver, kernel)
		// nvidia and nvidia_modeset load, then nvidia_drm fails.
		r.kernel.Errs = map[string]error{"nvidia_drm": syscall.ENODEV}
		before := r.current(t)
		_, err := r.d.Reconcile(context.Background())
		if err == nil || !strings.Contains(err.Error(), "load module nvidia_drm") {
			t.Fatalf("Reconcile = %v", err)
		}
		if r.current(t) != before {
			t.Fatalf("current %s, want it rolled back to %s", r.current(t), before)
		}
		for _, m := range []string{"nvidia", "nvidia_modeset"} {
			if _, err := os.Stat(filepath.Join(r.root, "sys/module", m)); !os.IsNotExist(err) {
				t.Errorf("%s of the failed tree is still loaded", m)
			}
		}
		if _, err := os.Stat(filepath.Join(r.root, "etc/ld.so.conf.d/nvidia-driverd.conf")); !os.IsNotExist(err) {
			t.Errorf("the failed tree's drop-in is still there: %v", err)
		}
		st, err := store.ReadState(hostfixture.FS(t, r.root), "/opt/nvidia")
		if err != nil || len(st.BadDigests) != 1 {
			t.Fatalf("state %+v, %v", st, err)
		}
		r.kernel.Errs = nil
		_, err = r.d.Reconcile(context.Background())
		if err == nil || !strings.Contains(err.Error(), "failed before") {
			t.Fatalf("second Reconcile = %v", err)
		}
	})

	t.Run("keep-previous falls back to the previous tree when it matches", func(t *testing.T) {
		listenNotify(t)
		r := newRig(t, func(c *config.Config) { c.FailurePolicy = "keep-previous" })
		// 535 is installed for this kernel and current; 550 is wanted but
		// its image is missing.
		r.publish(t, "535.161.07", kernel)
		r.d.Config.DriverVersion = "535.161.07"
		r.d.activator.Config.DriverVersion = "535.161.07"
		if _, err := r.d.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
		r.d.Config.DriverVersion = driver
		r.d.activator.Config.DriverVersion = driver
		out, err := r.d.Reconcile(context.Background())
		if err != nil || out.Tree != "/opt/nvidia/535.161.07/"+osVer || out.Degraded != "" {
			t.Fatalf("%+v, %v", out, err)
		}
		// STATUS= says which driver runs and why it is not the wanted one.
		if st := out.Status(); !strings.Contains(st, "driver 535.161.07 active from") || !strings.Contains(st, "(previous driver kept: ") ||
			!strings.Contains(st, "has no image tagged "+imgTag) {
			t.Errorf("STATUS=%s", st)
		}
	})

	t.Run("a re-check waiting for the store lock keeps feeding the watchdog", func(t *testing.T) {
		n := listenNotify(t)
		t.Setenv("WATCHDOG_USEC", "200000") // WATCHDOG=1 every 100 ms
		t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
		r := newRig(t, nil)
		r.d.Notify = systemd.NewNotifier(false)
		r.publish(t, driver, kernel)
		stop, reload := r.run(t)
		n.until(t, "READY=1")
		// Another holder (a prefetch, a one-shot install) has the store.
		s, err := store.Open(hostfixture.FS(t, r.root), "/opt/nvidia")
		if err != nil {
			t.Fatal(err)
		}
		lock, err := s.Lock(context.Background(), false)
		if err != nil {
			t.Fatal(err)
		}
		reload <- syscall.SIGHUP
		n.until(t, "RELOADING=1")
		for i := 0; i < 3; i++ {
			if m := n.until(t, "WATCHDOG=1"); strings.Contains(strings.Join(m, "|"), "READY=1") {
				t.Fatalf("READY while the lock is held: %q", m)
			}
		}
		if err := lock.Unlock(); err != nil {
			t.Fatal(err)
		}
		n.until(t, "READY=1")
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a re-check whose activation fails leaves the running driver loaded", func(t *testing.T) {
		listenNotify(t)
		r := newRig(t, nil)
		r.d.Metrics = metrics.New()
		r.publish(t, driver, kernel)
		stop, reload := r.run(t)
		eventually(t, "the driver is ready", r.d.Metrics.IsReady)
		r.units.mu.Lock()
		r.units.fail = errors.New("nvidia-persistenced.service: job failed")
		r.units.mu.Unlock()
		reload <- syscall.SIGHUP
		eventually(t, "the re-check is done", func() bool {
			v := scrape(t, r.d.Metrics)["nvidia_driverd_reconciles_total"]
			return v != nil && v.Metric[0].Counter.GetValue() >= 2
		})
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(r.root, "sys/module/nvidia")); err != nil {
			t.Errorf("the running driver was unloaded by a failed re-check: %v", err)
		}
		if !r.d.Metrics.IsReady() {
			t.Error("metrics say not ready, but the driver is loaded")
		}
	})

	t.Run("SIGHUP re-checks with RELOADING and READY; stopping says STOPPING", func(t *testing.T) {
		n := listenNotify(t)
		r := newRig(t, nil)
		r.publish(t, driver, kernel)
		stop, reload := r.run(t)
		n.until(t, "READY=1")
		reload <- syscall.SIGHUP
		n.until(t, "RELOADING=1")
		if m := n.until(t, "READY=1"); !strings.Contains(m[len(m)-1], "active from "+newTree) {
			t.Fatalf("%q", m)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		n.until(t, "STOPPING=1")
	})
}

// loadOld marks driver version v as loaded with the given refcnt on
// nvidia, as after an install without a reboot.
func (r *rig) loadOld(t *testing.T, v string, refcnt int) {
	t.Helper()
	for _, m := range []string{"nvidia", "nvidia_modeset", "nvidia_uvm", "nvidia_drm"} {
		dir := filepath.Join(r.root, "sys/module", m)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		n := 0
		if m == "nvidia" {
			n = refcnt
		}
		write(t, r.root, "sys/module/"+m+"/initstate", "live\n")
		write(t, r.root, "sys/module/"+m+"/version", v+"\n")
		write(t, r.root, "sys/module/"+m+"/refcnt", fmt.Sprintf("%d\n", n))
	}
}

func TestReplaceLoadedDriver(t *testing.T) {
	t.Run("another version loaded and idle is unloaded, then the new one loads", func(t *testing.T) {
		listenNotify(t)
		r := newRig(t, nil)
		r.publish(t, driver, kernel)
		r.loadOld(t, "535.161.07", 0)
		out, err := r.d.Reconcile(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if out.Tree != newTree {
			t.Fatalf("%+v", out)
		}
		if got := r.kernel.Loaded(); len(got) != 4 || got[0] != "nvidia" {
			t.Fatalf("loaded %q", got)
		}
		if b, _ := os.ReadFile(filepath.Join(r.root, "sys/module/nvidia/version")); strings.TrimSpace(string(b)) != driver {
			t.Fatalf("nvidia version now %q", b)
		}
	})

	t.Run("another version loaded and in use: reboot needed, nothing changed", func(t *testing.T) {
		listenNotify(t)
		r := newRig(t, nil)
		r.publish(t, driver, kernel)
		r.loadOld(t, "535.161.07", 3) // a CUDA process holds the GPU
		before := r.current(t)
		_, err := r.d.Reconcile(context.Background())
		if !errors.Is(err, engine.ErrRebootNeeded) {
			t.Fatalf("Reconcile = %v", err)
		}
		if len(r.kernel.Loaded()) != 0 {
			t.Fatalf("loaded %q", r.kernel.Loaded())
		}
		if b, _ := os.ReadFile(filepath.Join(r.root, "sys/module/nvidia/version")); strings.TrimSpace(string(b)) != "535.161.07" {
			t.Fatalf("nvidia version now %q", b)
		}
		// The new tree is installed and current for the next boot; the
		// image is not marked bad, since nothing was wrong with it.
		if r.current(t) == before {
			t.Fatal("current not switched for the next boot")
		}
		if st, _ := store.ReadState(hostfixture.FS(t, r.root), "/opt/nvidia"); len(st.BadDigests) != 0 {
			t.Fatalf("state %+v", st)
		}
	})

	t.Run("the process holding the GPU is named, and persistenced runs again", func(t *testing.T) {
		listenNotify(t)
		r := newRig(t, nil)
		r.publish(t, driver, kernel)
		r.loadOld(t, "535.161.07", 1)
		write(t, r.root, "proc/4242/comm", "python3\n")
		if err := os.MkdirAll(filepath.Join(r.root, "proc/4242/fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		for fd, dev := range map[string]string{"3": "/dev/nvidia0", "4": "/dev/nvidiactl", "5": "/dev/null"} {
			if err := os.Symlink(dev, filepath.Join(r.root, "proc/4242/fd", fd)); err != nil {
				t.Fatal(err)
			}
		}
		_, err := r.d.Reconcile(context.Background())
		if !errors.Is(err, engine.ErrRebootNeeded) || !strings.Contains(err.Error(), "pid 4242 (python3) has /dev/nvidia0 open, pid 4242 (python3) has /dev/nvidiactl open") ||
			strings.Contains(err.Error(), "/dev/null") {
			t.Fatalf("Reconcile = %v", err)
		}
		if len(r.units.started) != 1 || r.units.started[0] != "nvidia-persistenced.service" {
			t.Errorf("persistenced not started again after the refused unload: %q", r.units.started)
		}
	})
}

func TestFailedReplacementRestoresTheDriverBefore(t *testing.T) {
	listenNotify(t)
	r := newRig(t, func(c *config.Config) { c.DriverVersion = "535.161.07" })
	r.publish(t, "535.161.07", kernel)
	r.publish(t, driver, kernel)
	if _, err := r.d.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	old := r.current(t)
	// 550's nvidia.ko is refused, after 535 was unloaded to make room.
	r.kernel.Once = map[string]error{"nvidia": syscall.EKEYREJECTED}
	r.d.Config.DriverVersion, r.d.activator.Config.DriverVersion = driver, driver
	_, err := r.d.Reconcile(context.Background())
	if err == nil || !strings.Contains(err.Error(), "the driver that ran before ("+old+") is active again") {
		t.Fatalf("Reconcile = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(r.root, "sys/module/nvidia/version")); strings.TrimSpace(string(b)) != "535.161.07" {
		t.Errorf("nvidia version now %q, want the old driver back", b)
	}
	if r.current(t) != old {
		t.Errorf("current %s, want %s", r.current(t), old)
	}
}

func TestReloadChangesTheDriver(t *testing.T) {
	n := listenNotify(t)
	r := newRig(t, func(c *config.Config) { c.DriverVersion = "535.161.07" })
	r.publish(t, "535.161.07", kernel)
	r.publish(t, driver, kernel)
	var mu sync.Mutex
	next := r.d.Config
	r.d.LoadConfig = func() (config.Config, error) {
		mu.Lock()
		defer mu.Unlock()
		return next, nil
	}
	stop, reload := r.run(t)
	if m := n.until(t, "READY=1"); !strings.Contains(m[len(m)-1], "driver 535.161.07 active") {
		t.Fatalf("%q", m)
	}
	mu.Lock()
	next.DriverVersion = driver
	mu.Unlock()
	reload <- syscall.SIGHUP
	seen := n.until(t, "READY=1")
	if m := seen[len(seen)-1]; !strings.Contains(m, "driver "+driver+" active from "+newTree) {
		t.Fatalf("after the reload: %q", seen)
	}
	if all := strings.Join(seen, "|"); !strings.Contains(all, "RELOADING=1") || !strings.Contains(all, "activating "+newTree+": unload") {
		t.Errorf("STATUS= does not tell the steps: %q", seen)
	}
	if b, _ := os.ReadFile(filepath.Join(r.root, "sys/module/nvidia/version")); strings.TrimSpace(string(b)) != driver {
		t.Errorf("nvidia version now %q", b)
	}
	if names, _ := r.kernel.Deleted(); strings.Join(names, " ") == "" || names[len(names)-1] != "nvidia" {
		t.Errorf("unloaded %q: nvidia must go last", names)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestDeactivate(t *testing.T) {
	t.Run("deactivate unloads the modules and removes the drop-in, keeping the store", func(t *testing.T) {
		listenNotify(t)
		r := newRig(t, nil)
		r.publish(t, driver, kernel)
		if _, err := r.d.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
		act, err := r.d.Deactivate(context.Background(), hostfixture.Open(t, r.root))
		if err != nil {
			t.Fatal(err)
		}
		if len(act.Unloaded) != 4 || act.Unloaded[len(act.Unloaded)-1] != "nvidia" {
			t.Fatalf("unloaded %q", act.Unloaded)
		}
		if _, err := os.Stat(filepath.Join(r.root, "sys/module/nvidia")); !os.IsNotExist(err) {
			t.Fatalf("nvidia still loaded: %v", err)
		}
		if _, err := os.Stat(filepath.Join(r.root, "etc/ld.so.conf.d/nvidia-driverd.conf")); !os.IsNotExist(err) {
			t.Fatalf("drop-in still there: %v", err)
		}
		if r.current(t) != newTree {
			t.Fatalf("current %s", r.current(t))
		}
		// The nodes it made are gone; a file of such a name is not ours.
		if len(act.Devices) != 5 {
			t.Errorf("removed %q", act.Devices)
		}
		for _, dev := range []string{"nvidiactl", "nvidia0", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"} {
			if _, err := os.Lstat(filepath.Join(r.root, "dev", dev)); !os.IsNotExist(err) {
				t.Errorf("/dev/%s is left: %v", dev, err)
			}
		}
		// activate brings it all back.
		if _, err := r.d.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(r.root, "dev/nvidiactl")); err != nil {
			t.Errorf("after activate: %v", err)
		}
	})

	t.Run("a file named like a node is left alone", func(t *testing.T) {
		r := newRig(t, nil)
		write(t, r.root, "dev/nvidia0", "not a device\n")
		act, err := r.d.Deactivate(context.Background(), hostfixture.Open(t, r.root))
		if err != nil || len(act.Devices) != 0 {
			t.Fatalf("%+v, %v", act, err)
		}
		if _, err := os.Stat(filepath.Join(r.root, "dev/nvidia0")); err != nil {
			t.Error(err)
		}
	})
}

// eventually polls cond until it holds, failing the test after 20 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(20 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("%s: not within 20 s", what)
		}
	}
}

func TestFailedActivationIsUndone(t *testing.T) {
	t.Run("a failed activate leaves no module loaded and no drop-in, as run would", func(t *testing.T) {
		r := newRig(t, nil)
		r.publish(t, driver, kernel)
		// Install without activating, as install --no-activate does.
		err := r.d.Locked(context.Background(), true, func(ctx context.Context, s *store.Store, h Host) error {
			a, err := engine.Assess(h, r.d.Config)
			if err != nil {
				return err
			}
			got, err := r.d.Fetch(ctx, s, a, *a.Decision.Target, false)
			if err != nil {
				return err
			}
			_, err = s.Switch(got.Tree)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		r.kernel.Errs = map[string]error{"nvidia_drm": syscall.ENODEV}
		err = r.d.Locked(context.Background(), true, func(ctx context.Context, s *store.Store, h Host) error {
			a, err := engine.Assess(h, r.d.Config)
			if err != nil {
				return err
			}
			_, err = r.d.Activate(ctx, a, a.Facts.Store.Current)
			return err
		})
		if err == nil || !strings.Contains(err.Error(), "nvidia_drm") {
			t.Fatalf("activate = %v, want nvidia_drm's failure", err)
		}
		if _, err := os.Stat(filepath.Join(r.root, "etc/ld.so.conf.d/nvidia-driverd.conf")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the drop-in is left: %v", err)
		}
		for _, m := range []string{"nvidia", "nvidia_modeset", "nvidia_uvm"} {
			if _, err := os.Stat(filepath.Join(r.root, "sys/module", m)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s is still loaded: %v", m, err)
			}
		}
	})
}
