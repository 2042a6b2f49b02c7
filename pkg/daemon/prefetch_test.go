package daemon

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/nextboot"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
	"github.com/nvidia-driverd/nvidia-driverd/test/dbustest"
	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

// The Flatcar update staged while 3815.2.0 runs.
const (
	stagedOS     = "4081.2.0"
	stagedKernel = "6.6.30-flatcar"
	stagedTag    = stagedOS + "-" + driver
	stagedTree   = "/opt/nvidia/" + driver + "/" + stagedOS
)

// testRegistry is an in-process registry that counts requests and can be
// made to fail them.
type testRegistry struct {
	srv      *httptest.Server
	host     string
	requests atomic.Int64
	mu       sync.Mutex
	fault    func(w http.ResponseWriter, r *http.Request) bool // answers instead of the registry when it returns true
}

func newRegistry(t *testing.T) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		r.mu.Lock()
		fault := r.fault
		r.mu.Unlock()
		if fault != nil && fault(w, req) {
			return
		}
		reg.ServeHTTP(w, req)
	}))
	t.Cleanup(r.srv.Close)
	r.host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

func (r *testRegistry) setFault(f func(w http.ResponseWriter, r *http.Request) bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fault = f
}

func (r *testRegistry) source(t *testing.T) *source.Registry {
	t.Helper()
	s, err := source.NewRegistry(r.host+"/nvidia-driver", source.Options{Insecure: []string{r.host}, Platform: amd64,
		Retry: source.Retry{Attempts: 2, Base: 1, Max: 1}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// publish pushes tag, an image of a driver tree for kernel k labelled
// for OS version osv.
func (r *testRegistry) publish(t *testing.T, tag, osv, k string) {
	t.Helper()
	dir := t.TempDir()
	if err := hostfixture.DriverTree(dir, driver, k, k+" "+flags); err != nil {
		t.Fatal(err)
	}
	b, err := publish.Build(dir, publish.Options{Platform: amd64, Labels: map[string]string{
		publish.LabelDriver: driver, publish.LabelKernel: k, publish.LabelOSVer: osv}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := r.source(t).Push(context.Background(), tag, b.Image); err != nil {
		t.Fatal(err)
	}
}

type prefetchRig struct {
	*rig
	reg    *testRegistry
	logs   *observer.ObservedLogs
	states chan store.Prefetch
}

// newPrefetchRig is a rig on host whose images come from an in-process
// registry, with logs observed and every prefetch state sent to states.
func newPrefetchRig(t *testing.T, host string, cfg func(*config.Config)) *prefetchRig {
	t.Helper()
	reg := newRegistry(t)
	r := newRigOn(t, host, func(c *config.Config) {
		c.Source = ""
		c.Repository = reg.host + "/nvidia-driver"
		c.Prefetch = true
		if cfg != nil {
			cfg(c)
		}
	})
	core, logs := observer.New(zap.DebugLevel)
	p := &prefetchRig{rig: r, reg: reg, logs: logs, states: make(chan store.Prefetch, 64)}
	r.d.Log = zap.New(core)
	r.d.Source = reg.source(t)
	r.d.OnPrefetch = func(st store.Prefetch) { p.states <- st }
	return p
}

// followBus makes the daemon follow update_engine on b.
func (p *prefetchRig) followBus(b *dbustest.Bus) {
	p.d.UpdateEngine = func(ctx context.Context) <-chan nextboot.Status {
		w := &nextboot.Watcher{Connect: b.Connect, Log: p.d.Log, MinDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond}
		return w.Watch(ctx)
	}
}

// waitState returns the first prefetch state that ok accepts, failing
// after 30 s.
func (p *prefetchRig) waitState(t *testing.T, what string, ok func(store.Prefetch) bool) store.Prefetch {
	t.Helper()
	var seen []store.Prefetch
	timeout := time.After(30 * time.Second)
	for {
		select {
		case st := <-p.states:
			if ok(st) {
				return st
			}
			seen = append(seen, st)
		case <-timeout:
			t.Fatalf("no prefetch state %s; saw %+v", what, seen)
		}
	}
}

func (p *prefetchRig) state(t *testing.T) store.State {
	t.Helper()
	st, err := store.ReadState(hostfixture.FS(t, p.root), "/opt/nvidia")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// assertNoTree checks that nothing of tree is in the store, staging
// included.
func (p *prefetchRig) assertNoTree(t *testing.T, tree string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(p.root, tree)); !os.IsNotExist(err) {
		t.Errorf("%s exists: %v", tree, err)
	}
	if left, _ := os.ReadDir(filepath.Join(p.root, "opt/nvidia", store.StagingDir)); len(left) != 0 {
		t.Errorf("staging leftovers: %v", left)
	}
}

// reboot makes the host look booted into OS version osv with kernel k:
// os-release, kernel release, an in-tree module of k, and no driver
// loaded.
func (r *rig) reboot(t *testing.T, osv, k string) {
	t.Helper()
	write(t, r.root, "usr/lib/os-release", "NAME=\"Flatcar Container Linux by Kinvolk\"\nID=flatcar\nID_LIKE=coreos\n"+
		"VERSION="+osv+"\nVERSION_ID="+osv+"\nPRETTY_NAME=\"Flatcar Container Linux by Kinvolk "+osv+"\"\n")
	write(t, r.root, "proc/sys/kernel/osrelease", k+"\n")
	inTree := filepath.Join(r.root, "usr/lib/modules", k, "kernel/fs/fat")
	if err := os.MkdirAll(inTree, 0o755); err != nil {
		t.Fatal(err)
	}
	kofixture.Build(t, inTree, kofixture.Module{Name: "fat", Fields: kofixture.Standard("fat", "", k+" "+flags+" ")})
	for _, m := range []string{"nvidia", "nvidia_modeset", "nvidia_uvm", "nvidia_drm"} {
		if err := os.RemoveAll(filepath.Join(r.root, "sys/module", m)); err != nil {
			t.Fatal(err)
		}
		holders, _ := filepath.Glob(filepath.Join(r.root, "sys/module/*/holders", m))
		for _, h := range holders {
			if err := os.Remove(h); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// waitLogs waits until an entry with msg and field is logged.
func waitLogs(t *testing.T, logs *observer.ObservedLogs, msg string, field zap.Field) {
	t.Helper()
	eventually(t, fmt.Sprintf("a %q log with %v", msg, field), func() bool {
		return logged(logs, msg).FilterField(field).Len() > 0
	})
}

func TestPrefetchSwitch(t *testing.T) {
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprintf("prefetch %v", on), func(t *testing.T) {
			n := listenNotify(t)
			p := newPrefetchRig(t, "flatcar-updated", func(c *config.Config) { c.Prefetch = on })
			p.reg.publish(t, imgTag, osVer, kernel)
			var followed atomic.Bool
			p.d.UpdateEngine = func(context.Context) <-chan nextboot.Status {
				followed.Store(true)
				return nil
			}
			stop, _ := p.run(t)
			n.until(t, "READY=1")
			// Run waits for the prefetcher, which asks for the watcher
			// before anything else can end it.
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if followed.Load() != on {
				t.Fatalf("update_engine followed: %v", followed.Load())
			}
		})
	}
}

func TestPrefetch(t *testing.T) {
	needReboot := func(v string) nextboot.Status {
		return nextboot.Status{LastCheckedTime: time.Now().Unix(), Progress: 1, Operation: nextboot.StatusUpdatedNeedReboot, NewVersion: v, NewSize: 300 << 20}
	}

	t.Run("a staged update is prefetched without touching current, and after the reboot run switches to it offline", func(t *testing.T) {
		n := listenNotify(t)
		p := newPrefetchRig(t, "flatcar-updated", nil)
		p.reg.publish(t, imgTag, osVer, kernel)
		p.reg.publish(t, stagedTag, stagedOS, stagedKernel)
		b := dbustest.New(t)
		f := dbustest.NewUpdateEngine(t, b, nextboot.Status{Operation: nextboot.StatusIdle})
		p.followBus(b)
		stop, _ := p.run(t)
		n.until(t, "READY=1")
		if p.current(t) != newTree {
			t.Fatalf("current %s", p.current(t))
		}
		loadedBefore := len(p.kernel.Loaded())

		f.Emit(t, nextboot.Status{Operation: nextboot.StatusDownloading, Progress: 0.5, NewVersion: stagedOS})
		f.Emit(t, needReboot(stagedOS))
		st := p.waitState(t, "ready", func(s store.Prefetch) bool { return s.State == store.PrefetchReady })
		if st.Tree != stagedTree || st.OSVersion != stagedOS || st.KernelRelease != stagedKernel || st.Tag != stagedTag ||
			st.Driver != driver || !strings.HasPrefix(st.Digest, "sha256:") || st.Attempts != 1 || !st.NextRetry.IsZero() {
			t.Fatalf("prefetch state %+v", st)
		}
		if saved := p.state(t).Prefetch; saved == nil || *saved != st {
			t.Fatalf("state.json has %+v, want %+v", saved, st)
		}
		msgs := n.until(t, "prefetched "+stagedTag+" for the staged update")
		if last := msgs[len(msgs)-1]; !strings.Contains(last, "STATUS=driver "+driver+" active from "+newTree+"; prefetched "+stagedTag) {
			t.Errorf("STATUS %q", last)
		}
		if p.current(t) != newTree {
			t.Fatalf("prefetch moved current to %s", p.current(t))
		}
		if got := len(p.kernel.Loaded()); got != loadedBefore {
			t.Fatalf("prefetch loaded modules: %q", p.kernel.Loaded())
		}
		inv, err := store.Scan(hostfixture.FS(t, p.root), "/opt/nvidia")
		if err != nil {
			t.Fatal(err)
		}
		tr := inv.Tree(stagedTree)
		if tr == nil || tr.Meta == nil || tr.Meta.KernelRelease != stagedKernel || tr.ModuleVersion("nvidia", stagedKernel) != driver {
			t.Fatalf("prefetched tree %+v", tr)
		}
		entries := logged(p.logs, "prefetched").AllUntimed()
		if len(entries) != 1 || entries[0].ContextMap()["tree"] != stagedTree || entries[0].ContextMap()["os_version"] != stagedOS {
			t.Fatalf("prefetched logs %+v", entries)
		}
		// update_engine repeats itself; nothing is fetched again.
		before := p.reg.requests.Load()
		f.Emit(t, needReboot(stagedOS))
		waitLogs(t, p.logs, "staged update", zap.Bool("repeated", true))
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if got := p.reg.requests.Load(); got != before {
			t.Errorf("%d registry requests after a repeated status", got-before)
		}
		if started := logged(p.logs, "prefetch started").Len(); started != 1 {
			t.Errorf("prefetch started %d times", started)
		}

		// The reboot into 4081.2.0, with the registry out of reach.
		p.reboot(t, stagedOS, stagedKernel)
		p.reg.setFault(func(w http.ResponseWriter, _ *http.Request) bool {
			http.Error(w, "registry unreachable", http.StatusServiceUnavailable)
			return true
		})
		before = p.reg.requests.Load()
		out, err := p.d.Reconcile(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if out.Tree != stagedTree || p.current(t) != stagedTree {
			t.Fatalf("outcome %+v, current %s", out, p.current(t))
		}
		if got := p.reg.requests.Load(); got != before {
			t.Errorf("%d registry requests after the reboot", got-before)
		}
		planned := logged(p.logs, "planned").FilterField(zap.String("action", string(engine.ActionSwitch))).Len()
		if planned != 1 {
			t.Errorf("planned switch logged %d times", planned)
		}
		if got := p.kernel.Loaded(); len(got) != loadedBefore+4 {
			t.Errorf("loaded after the reboot: %q", got)
		}
		if b, err := os.ReadFile(filepath.Join(p.root, "sys/module/nvidia/version")); err != nil || strings.TrimSpace(string(b)) != driver {
			t.Errorf("nvidia version %q, %v", b, err)
		}
	})

	t.Run("a failed prefetch is logged with its MESSAGE_ID, leaves current alone, and is retried after the backoff", func(t *testing.T) {
		n := listenNotify(t)
		p := newPrefetchRig(t, "flatcar-updated", nil)
		p.reg.publish(t, imgTag, osVer, kernel)
		p.reg.publish(t, stagedTag, stagedOS, stagedKernel)
		var failing atomic.Bool
		failing.Store(true)
		p.reg.setFault(func(w http.ResponseWriter, r *http.Request) bool {
			if failing.Load() && strings.Contains(r.URL.Path, "/manifests/"+stagedTag) {
				http.Error(w, "backend down", http.StatusInternalServerError)
				return true
			}
			return false
		})
		retries := make(chan int, 64)
		p.d.PrefetchRetry = func(n int) time.Duration {
			retries <- n
			return 50 * time.Millisecond
		}
		b := dbustest.New(t)
		dbustest.NewUpdateEngine(t, b, needReboot(stagedOS)) // staged before the daemon started
		p.followBus(b)
		stop, _ := p.run(t)
		defer func() {
			if err := stop(); err != nil {
				t.Error(err)
			}
		}()
		n.until(t, "READY=1")

		st := p.waitState(t, "failed", func(s store.Prefetch) bool { return s.State == store.PrefetchFailed })
		if st.Attempts != 1 || st.Tag != stagedTag || !strings.Contains(st.Error, "500") || st.NextRetry.Before(st.At) || st.Tree != "" {
			t.Fatalf("failed state %+v", st)
		}
		if saved := p.state(t).Prefetch; saved == nil || saved.State == store.PrefetchReady {
			t.Fatalf("state.json has %+v", saved)
		}
		failures := logged(p.logs, "prefetch failed").FilterField(systemd.MessageID(systemd.MessagePrefetchFailed)).AllUntimed()
		if len(failures) == 0 || failures[0].Level != zap.ErrorLevel || failures[0].ContextMap()["tag"] != stagedTag {
			t.Fatalf("prefetch failed logs %+v", failures)
		}
		if msgs := n.until(t, "prefetch of "+stagedTag+" for the staged update failed (attempt 1)"); !strings.Contains(msgs[len(msgs)-1], "active from "+newTree) {
			t.Errorf("STATUS %q", msgs[len(msgs)-1])
		}
		if p.current(t) != newTree {
			t.Fatalf("current %s", p.current(t))
		}
		p.assertNoTree(t, stagedTree)

		failing.Store(false)
		st = p.waitState(t, "ready", func(s store.Prefetch) bool { return s.State == store.PrefetchReady })
		if st.Attempts < 2 || st.Tree != stagedTree || st.Error != "" {
			t.Fatalf("ready state %+v", st)
		}
		if first := <-retries; first != 1 {
			t.Errorf("first backoff asked for retry %d", first)
		}
		if p.current(t) != newTree {
			t.Fatalf("current %s", p.current(t))
		}
	})

	t.Run("a missing image waits for its retry, and a new staged version from a restarted update_engine replaces it", func(t *testing.T) {
		listenNotify(t)
		p := newPrefetchRig(t, "flatcar-updated", nil)
		p.reg.publish(t, imgTag, osVer, kernel)
		p.d.PrefetchRetry = func(int) time.Duration { return time.Hour } // no retry within the test
		b := dbustest.New(t)
		f := dbustest.NewUpdateEngine(t, b, nextboot.Status{Operation: nextboot.StatusIdle})
		p.followBus(b)
		stop, _ := p.run(t)
		defer func() {
			if err := stop(); err != nil {
				t.Error(err)
			}
		}()

		f.Emit(t, needReboot("4081.1.0")) // nobody published 4081.1.0-550.54.14
		st := p.waitState(t, "failed", func(s store.Prefetch) bool { return s.State == store.PrefetchFailed })
		if st.OSVersion != "4081.1.0" || !strings.Contains(st.Error, "4081.1.0-"+driver) {
			t.Fatalf("failed state %+v", st)
		}
		p.assertNoTree(t, "/opt/nvidia/"+driver+"/4081.1.0")

		// update_engine restarts having staged a newer version, and says
		// so only when asked.
		p.reg.publish(t, stagedTag, stagedOS, stagedKernel)
		f.Stop()
		dbustest.NewUpdateEngine(t, b, needReboot(stagedOS))
		st = p.waitState(t, "ready", func(s store.Prefetch) bool { return s.State == store.PrefetchReady })
		if st.OSVersion != stagedOS || st.Attempts != 1 || st.Tree != stagedTree {
			t.Fatalf("ready state %+v", st)
		}
		if p.current(t) != newTree {
			t.Fatalf("current %s", p.current(t))
		}
	})

	t.Run("on a generic host a newly installed kernel gets its driver fetched", func(t *testing.T) {
		const (
			running   = "6.1.0-56-amd64"
			installed = "6.1.0-60-amd64"
			kflags    = "SMP preempt mod_unload modversions"
		)
		n := listenNotify(t)
		p := newPrefetchRig(t, "debian-generic", func(c *config.Config) {
			c.RequireGPU = false
			c.TagTemplate = "{{.OSID}}{{.OSVersion}}-{{.KernelRelease}}-{{.DriverVersion}}"
		})
		// What activation needs that the Debian fixture lacks: the modules
		// nvidia_drm depends on, and the character device majors.
		for _, m := range []string{"drm", "drm_kms_helper"} {
			write(t, p.root, "sys/module/"+m+"/initstate", "live\n")
			write(t, p.root, "sys/module/"+m+"/refcnt", "1\n")
		}
		devices, err := os.ReadFile("../../test/fixtures/hosts/flatcar/proc/devices")
		if err != nil {
			t.Fatal(err)
		}
		write(t, p.root, "proc/devices", string(devices))
		publishFor := func(k string) {
			dir := t.TempDir()
			if err := hostfixture.DriverTree(dir, driver, k, k+" "+kflags); err != nil {
				t.Fatal(err)
			}
			img, err := publish.Build(dir, publish.Options{Platform: amd64, Labels: map[string]string{
				publish.LabelDriver: driver, publish.LabelKernel: k, publish.LabelOSVer: "12"}})
			if err != nil {
				t.Fatal(err)
			}
			defer img.Close()
			if _, err := p.reg.source(t).Push(context.Background(), "debian12-"+k+"-"+driver, img.Image); err != nil {
				t.Fatal(err)
			}
		}
		publishFor(running)
		publishFor(installed)
		since := time.Now().Add(-time.Second)
		p.d.Kernels = func(ctx context.Context) <-chan string {
			return (&nextboot.KernelWatcher{Root: p.root, Since: since, Rescan: time.Hour}).Watch(ctx)
		}
		stop, _ := p.run(t)
		defer func() {
			if err := stop(); err != nil {
				t.Error(err)
			}
		}()
		runningTree := "/opt/nvidia/" + driver + "/" + running
		n.until(t, "READY=1")
		if p.current(t) != runningTree {
			t.Fatalf("current %s", p.current(t))
		}

		// The kernel package unpacks its modules, then depmod runs.
		inTree := filepath.Join(p.root, "lib/modules", installed, "kernel/fs/fat")
		if err := os.MkdirAll(inTree, 0o755); err != nil {
			t.Fatal(err)
		}
		kofixture.Build(t, inTree, kofixture.Module{Name: "fat", Fields: kofixture.Standard("fat", "", installed+" "+kflags+" ")})
		write(t, p.root, "lib/modules/"+installed+"/modules.dep", "kernel/fs/fat/fat.ko:\n")
		st := p.waitState(t, "ready", func(s store.Prefetch) bool { return s.State == store.PrefetchReady })
		wantTree := "/opt/nvidia/" + driver + "/" + installed
		if st.Tree != wantTree || st.KernelRelease != installed || st.OSVersion != "12" || st.Tag != "debian12-"+installed+"-"+driver {
			t.Fatalf("prefetch state %+v", st)
		}
		n.until(t, "prefetched debian12-"+installed+"-"+driver+" for kernel "+installed)
		if p.current(t) != runningTree {
			t.Fatalf("current %s", p.current(t))
		}
		inv, err := store.Scan(hostfixture.FS(t, p.root), "/opt/nvidia")
		if err != nil {
			t.Fatal(err)
		}
		if tr := inv.Tree(wantTree); tr == nil || tr.ModuleVersion("nvidia", installed) != driver {
			t.Fatalf("prefetched tree %+v", tr)
		}
	})
}

func TestRetryDelay(t *testing.T) {
	for _, tc := range []struct {
		n      int
		center time.Duration
	}{{1, 30 * time.Second}, {2, time.Minute}, {3, 2 * time.Minute}, {7, 32 * time.Minute}, {8, time.Hour}, {50, time.Hour}} {
		lo, hi := time.Duration(float64(tc.center)*0.8), time.Duration(float64(tc.center)*1.2)
		seen := map[time.Duration]bool{}
		for range 20 {
			d := RetryDelay(tc.n)
			if d < lo || d > hi {
				t.Fatalf("RetryDelay(%d) = %s, want within [%s, %s]", tc.n, d, lo, hi)
			}
			seen[d] = true
		}
		if len(seen) < 2 {
			t.Errorf("RetryDelay(%d) has no jitter: %v", tc.n, seen)
		}
	}
}

// logged is the entries whose message is msg, or msg followed by what it
// says in words ("prefetched 4081.2.0-550.54.14 into ...").
func logged(logs *observer.ObservedLogs, msg string) *observer.ObservedLogs {
	return logs.Filter(func(e observer.LoggedEntry) bool {
		return e.Message == msg || strings.HasPrefix(e.Message, msg+" ") || strings.HasPrefix(e.Message, msg+":")
	})
}
