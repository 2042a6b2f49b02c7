// Package daemon is the long-running nvidia-driverd: it reconciles the
// host with the configuration at start, on SIGHUP, and when asked to, and
// tells systemd the truth about the driver with sd_notify.
//
// A reconcile takes the store lock, removes leftovers of interrupted
// installs, gathers facts, plans, fetches and switches when needed, and
// activates. READY=1 is sent only once the driver is usable: modules
// loaded, device nodes created, persistenced active.
//
// With prefetch set, the daemon then follows what the next boot runs (a
// staged Flatcar update, a newly installed kernel) and fetches the driver
// for it ahead of the reboot, without switching to it.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/libs"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/metrics"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/nextboot"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
)

// Notifier is the sd_notify side; *systemd.Notifier is the real one.
type Notifier interface {
	Ready(status string) error
	Status(status string) error
	Reloading(status string) error
	Stopping(status string) error
	ExtendTimeout(d time.Duration) error
	Watchdog() error
	WatchdogInterval() time.Duration
}

// Host is the host a reconcile reads and changes, opened once per
// assessment; *hostinfo.Host is the real one.
type Host interface {
	engine.Host
	Close() error
}

// Deps are what a Daemon is made of. Config, Log, Notify, Syscalls,
// Mounter and Units are required, and Root unless OpenHost is set; the
// rest may be left out.
type Deps struct {
	Root   string // where the host is mounted ("/", or /rootfs in a container)
	Config config.Config
	Log    *zap.Logger
	Notify Notifier

	// The host's seams: module syscalls, mount(2), systemd units.
	Syscalls kmod.Syscalls
	Mounter  libs.Mounter
	Units    engine.UnitControl
	// Ldconfig and Mountinfo override the ldconfig command line and the
	// mount table read (tests); empty means the libs defaults.
	Ldconfig  []string
	Mountinfo string

	// OpenHost opens the host for one assessment; nil means
	// hostinfo.Open(Root).
	OpenHost func() (Host, error)
	// Source is where images come from; nil means what Config says
	// (engine.NewSource), built when a fetch needs it.
	Source source.Source
	// Progress, when set, also receives download progress (a terminal's
	// progress line for one-shot commands).
	Progress func(done, total int64)

	// With Config.Prefetch, Run follows one of these after READY=1:
	// UpdateEngine on Flatcar and CoreOS, Kernels on other hosts when the
	// tag template names the kernel release.
	UpdateEngine func(ctx context.Context) <-chan nextboot.Status
	Kernels      func(ctx context.Context) <-chan string
	// PrefetchRetry is the wait before retry n (1, 2, ...) of a failed
	// prefetch; nil means RetryDelay.
	PrefetchRetry func(n int) time.Duration
	// OnPrefetch, when set, is called with each prefetch state recorded
	// (fetching, ready, failed), from the prefetcher's goroutine.
	OnPrefetch func(store.Prefetch)
	// Metrics receives readiness, durations and failures; nil is fine.
	Metrics *metrics.Metrics
	// LoadConfig, when set, reads the configuration again; Run calls it
	// on each reload (SIGHUP) before re-checking, so that a changed
	// driver-version is acted on without a restart. An error keeps the
	// configuration in use.
	LoadConfig func() (config.Config, error)
}

// Daemon reconciles one host. Its Deps are not to be changed once New
// has checked them.
type Daemon struct {
	Deps
	activator *engine.Activator

	mu           sync.Mutex // guards the two below
	outcome      string     // STATUS= of the last reconcile
	prefetchNote string     // STATUS= of the prefetch, appended
}

// New checks deps and builds the daemon, with its activator. It returns
// an error naming the first missing dependency.
func New(deps Deps) (*Daemon, error) {
	missing := ""
	switch {
	case deps.Log == nil:
		missing = "Log"
	case deps.Notify == nil:
		missing = "Notify"
	case deps.Syscalls == nil:
		missing = "Syscalls"
	case deps.Mounter == nil:
		missing = "Mounter"
	case deps.Units == nil:
		missing = "Units"
	case deps.OpenHost == nil && !filepath.IsAbs(deps.Root):
		return nil, fmt.Errorf("new daemon: Root %q is not an absolute path", deps.Root)
	}
	if missing != "" {
		return nil, fmt.Errorf("new daemon: no %s", missing)
	}
	if deps.OpenHost == nil {
		root := deps.Root
		deps.OpenHost = func() (Host, error) { return hostinfo.Open(root) }
	}
	d := &Daemon{Deps: deps}
	d.activator = &engine.Activator{Config: deps.Config, Syscalls: deps.Syscalls, Mounter: deps.Mounter,
		Units: deps.Units, Ldconfig: deps.Ldconfig, Mountinfo: deps.Mountinfo}
	return d, nil
}

// reported marks an error the daemon has logged already, with its
// MESSAGE_ID: whoever gets it need not print it again.
type reported struct{ error }

func (e reported) Unwrap() error { return e.error }

// Reported reports whether err was logged by the daemon already.
func Reported(err error) bool {
	var r reported
	return errors.As(err, &r)
}

// Outcome is the result of one reconcile.
type Outcome struct {
	Tree     string // the active tree
	Driver   string
	Degraded string // why the driver is not usable but the daemon stays up
	Idle     string // why there is nothing to do (no GPU): ready, no driver
	// Kept says why the wanted driver is not the one active: keep-previous
	// fell back to Tree.
	Kept string
	// What the metrics' info labels show.
	Kernel, OSVersion, Digest string
}

// Status is the one-line STATUS= text for an outcome.
func (o Outcome) Status() string {
	if o.Degraded != "" {
		return "degraded: " + o.Degraded
	}
	if o.Idle != "" {
		return "nothing to do: " + o.Idle
	}
	s := fmt.Sprintf("driver %s active from %s", o.Driver, o.Tree)
	if o.Kept != "" {
		s += " (previous driver kept: " + o.Kept + ")"
	}
	return s
}

// activeOutcome is the Outcome of tree, activated; digest is its image's
// digest when a fetch just made it, "" to take it from the facts.
func activeOutcome(f engine.Facts, tree, driver, digest string) Outcome {
	if t := f.Store.Tree(tree); digest == "" && t != nil && t.Meta != nil {
		digest = t.Meta.Digest
	}
	return Outcome{Tree: tree, Driver: driver, Kernel: f.Kernel.Release, OSVersion: f.OS.OSVersion(), Digest: digest}
}

// report hands a reconcile's result to the metrics.
func (d *Daemon) report(out Outcome, err error) {
	if err != nil || out.Degraded != "" || out.Idle != "" {
		d.Metrics.NotReady() // no GPU: no usable driver, though nothing failed
	} else {
		d.Metrics.Ready(metrics.Info{Driver: out.Driver, Kernel: out.Kernel, OSVersion: out.OSVersion, Digest: out.Digest, Tree: out.Tree})
	}
	d.Metrics.Reconciled()
}

// Run reconciles, reports READY=1, and then waits: a value on reload
// re-checks (RELOADING=1 ... READY=1), ctx's end stops (STOPPING=1). It
// returns the reconcile error when the failure policy is fail, so the
// unit fails and Requires= dependants such as kubelet do not start.
// With Config.Prefetch, the prefetcher runs from READY=1 until Run
// returns.
func (d *Daemon) Run(ctx context.Context, reload <-chan os.Signal) error {
	out, err := d.Reconcile(ctx)
	d.report(out, err)
	if err != nil {
		d.notify(d.Notify.Status("failed: " + err.Error()))
		return err
	}
	d.notify(d.Notify.Ready(d.setOutcome(out)))
	var prefetchMu sync.Mutex // guards stopPrefetch: a re-check restarts the prefetcher
	stopPrefetch := func() {}
	startPrefetch := func(idle bool) {
		if !d.Config.Prefetch || idle { // no GPU: nothing to prefetch for
			stopPrefetch = func() {}
			return
		}
		pctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			d.prefetcher(pctx)
		}()
		stopPrefetch = func() {
			stop()
			<-done
		}
	}
	idle := out.Idle != ""
	startPrefetch(idle)
	defer func() {
		prefetchMu.Lock()
		defer prefetchMu.Unlock()
		stopPrefetch()
	}()

	var tick <-chan time.Time
	if iv := d.Notify.WatchdogInterval(); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		tick = t.C
	}
	// A re-check runs beside this loop, so that the watchdog keeps being
	// fed while it waits for the store lock (a prefetch may hold it for a
	// whole download). SIGHUPs during a re-check ask for one more.
	type result struct {
		out Outcome
		err error
	}
	var (
		running <-chan result
		again   bool
	)
	recheck := func() {
		d.notify(d.Notify.Reloading("re-checking the driver"))
		ch := make(chan result, 1)
		go func() {
			// A changed configuration is swapped in here, beside the loop
			// (which goes on feeding the watchdog while the prefetcher
			// winds down). Nothing else reads it meanwhile: the loop only
			// does once this re-check has answered, and the prefetcher is
			// stopped for the swap.
			if c, changed := d.reloadConfig(); changed {
				prefetchMu.Lock()
				stopPrefetch()
				d.Config, d.activator.Config = c, c
				startPrefetch(idle)
				prefetchMu.Unlock()
			}
			out, err := d.Reconcile(ctx)
			ch <- result{out, err}
		}()
		running = ch
	}
	for {
		select {
		case <-ctx.Done():
			if running != nil {
				<-running // Reconcile returns once ctx has ended
			}
			d.notify(d.Notify.Stopping("stopping; the driver stays loaded"))
			return nil
		case <-tick:
			d.notify(d.Notify.Watchdog())
		case <-reload:
			if running != nil {
				again = true
				continue
			}
			recheck()
		case r := <-running:
			running = nil
			if r.err != nil {
				d.recheckFailed(r.err)
			} else {
				d.report(r.out, nil)
				d.notify(d.Notify.Ready(d.setOutcome(r.out)))
			}
			if again {
				again = false
				recheck()
			}
		}
	}
}

// reloadConfig reads the configuration again through LoadConfig and
// returns it with changed set when it differs from the one in use. A
// configuration that cannot be read is logged and the one in use kept.
func (d *Daemon) reloadConfig() (config.Config, bool) {
	if d.LoadConfig == nil {
		return d.Config, false
	}
	c, err := d.LoadConfig()
	if err != nil {
		d.Log.Error("configuration not reloaded, the one in use is kept", zap.Error(err))
		return d.Config, false
	}
	if reflect.DeepEqual(c, d.Config) {
		return c, false
	}
	msg := "configuration reloaded"
	if c.DriverVersion != d.Config.DriverVersion {
		msg += fmt.Sprintf(": driver-version %s -> %s", orUnset(d.Config.DriverVersion), orUnset(c.DriverVersion))
	}
	d.Log.Info(msg, zap.String("driver", c.DriverVersion))
	return c, true
}

func orUnset(v string) string {
	if v == "" {
		return "(unset)"
	}
	return v
}

// recheckFailed reports a failed re-check. The driver that was ready
// stays loaded (a re-check never unloads a driver that was in use), so the
// unit stays up rather than take kubelet down on a reload; the metrics say
// not ready only when the wanted driver is in fact no longer loaded.
func (d *Daemon) recheckFailed(err error) {
	d.Log.Error("re-check failed", zap.Error(err))
	if errors.Is(err, engine.ErrRebootNeeded) {
		// Nothing was changed on the running system: the driver that
		// was ready is loaded and in use, so it stays ready.
		d.Metrics.Reconciled()
		d.notify(d.Notify.Ready("re-check failed, previous state kept: " + err.Error()))
		return
	}
	perr := d.Look(func(a engine.Assessment) error {
		if a.Decision.Action != engine.ActionNone {
			d.Metrics.NotReady() // what `status --ready` would say too
		}
		return nil
	})
	if perr != nil {
		d.Metrics.NotReady()
	}
	d.Metrics.Reconciled()
	d.notify(d.Notify.Ready("re-check failed, previous state kept: " + err.Error()))
}

func (d *Daemon) notify(err error) {
	if err != nil {
		d.Log.Warn("sd_notify", zap.Error(err))
	}
}

// Reconcile brings the host to the configured driver once. It returns an
// error when the driver could not be made usable and the failure policy is
// fail; with keep-previous it falls back to the previous tree when that
// matches the kernel, and otherwise returns a degraded Outcome.
func (d *Daemon) Reconcile(ctx context.Context) (Outcome, error) {
	d.notify(d.Notify.Status("waiting for the store lock"))
	var out Outcome
	err := d.Locked(ctx, true, func(ctx context.Context, s *store.Store, h Host) error {
		var err error
		out, err = d.Converge(ctx, s, h)
		return err
	})
	return out, err
}

// Look opens the host, assesses it once and hands the assessment to fn,
// as `status` and `plan` do; the host is closed after.
func (d *Daemon) Look(fn func(engine.Assessment) error) error {
	h, err := d.OpenHost()
	if err != nil {
		return err
	}
	defer h.Close()
	a, err := engine.Assess(h, d.Config)
	if err != nil {
		return err
	}
	return fn(a)
}

// Locked opens the host and the store, takes the store's lock (waiting
// for it with wait, else failing with an error wrapping store.ErrLocked
// that names the holder), removes what interrupted installs left, and
// runs fn. The lock is released and the host closed after fn.
func (d *Daemon) Locked(ctx context.Context, wait bool, fn func(ctx context.Context, s *store.Store, h Host) error) error {
	return d.locked(ctx, wait, true, fn)
}

// ErrNoStore is wrapped when a command that works on installed trees
// finds no store at all.
var ErrNoStore = errors.New("no driver store")

// LockedExisting is Locked for the commands that work on what is
// installed (activate, deactivate, gc, rollback): on a host without a
// store it returns an error wrapping ErrNoStore and creates nothing, not
// even the store's lock.
func (d *Daemon) LockedExisting(ctx context.Context, wait bool, fn func(ctx context.Context, s *store.Store, h Host) error) error {
	return d.locked(ctx, wait, false, fn)
}

func (d *Daemon) locked(ctx context.Context, wait, create bool, fn func(ctx context.Context, s *store.Store, h Host) error) error {
	h, err := d.OpenHost()
	if err != nil {
		return err
	}
	defer h.Close()
	if !create {
		if _, err := h.FS().Stat(d.Config.Store); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w at %s: nothing is installed yet (run install)", ErrNoStore, d.Config.Store)
		}
	}
	s, err := store.Open(h.FS(), d.Config.Store)
	if err != nil {
		return err
	}
	if wait {
		d.Log.Debug("waiting for the store lock", zap.String("store", s.Dir()))
	}
	lock, err := s.Lock(ctx, wait)
	if err != nil {
		return err
	}
	defer func() {
		if err := lock.Unlock(); err != nil {
			d.Log.Warn("unlock store", zap.Error(err))
		}
	}()
	removed, err := s.Clean()
	for _, p := range removed {
		d.Log.Info("removed leftover of an interrupted install: "+p, zap.String("path", p))
	}
	if errors.Is(err, store.ErrStagingStuck) {
		// A leftover that cannot be removed (an immutable file, a mount
		// point) must not block every install: set the staging aside.
		line, aerr := s.SetAsideStaging()
		if aerr != nil {
			return errors.Join(err, aerr)
		}
		d.Log.Warn("set aside: "+line, zap.String("what", line), zap.NamedError("cause", err))
	} else if err != nil {
		return err
	}
	recovered, err := s.Recover()
	for _, line := range recovered {
		d.Log.Warn("set aside: "+line, zap.String("what", line))
	}
	if err != nil {
		return err
	}
	return fn(ctx, s, h)
}

// Converge is Reconcile inside Locked: it assesses the host once, carries
// the decision out and applies the failure policy.
func (d *Daemon) Converge(ctx context.Context, s *store.Store, h Host) (Outcome, error) {
	a, err := engine.Assess(h, d.Config)
	if err != nil {
		d.Metrics.Failure(metrics.StepGather)
		return Outcome{}, err
	}
	out, err := d.reconcile(ctx, s, a)
	if err == nil {
		return out, nil
	}
	if !Reported(err) {
		d.Log.Error("activation failed", systemd.MessageID(systemd.MessageActivationFailed), zap.Error(err))
		err = reported{err}
	}
	if d.Config.FailurePolicy != "keep-previous" || errors.Is(err, context.Canceled) {
		return Outcome{}, err
	}
	return d.keepPrevious(ctx, s, a, err)
}

// reconcile carries out a's decision. A freshly switched tree that fails
// to activate is marked bad and current goes back to where it was.
func (d *Daemon) reconcile(ctx context.Context, s *store.Store, a engine.Assessment) (Outcome, error) {
	plan, facts := a.Decision, a.Facts
	log := d.Log.With(zap.String("kernel", facts.Kernel.Release), zap.String("driver", plan.Driver))
	what := fmt.Sprintf("planned %s of driver %s for kernel %s: %s", plan.Action, plan.Driver, facts.Kernel.Release, plan.Reason)
	if plan.Driver == "" {
		what = fmt.Sprintf("planned %s for kernel %s: %s", plan.Action, facts.Kernel.Release, plan.Reason)
	}
	log.Info(what,
		zap.String("action", string(plan.Action)), zap.String("reason", plan.Reason))
	d.notify(d.Notify.Status(fmt.Sprintf("%s: %s", plan.Action, plan.Reason)))

	tree, digest := plan.Tree, ""
	installStart := time.Now()
	switch plan.Action {
	case engine.ActionRefuse:
		d.Metrics.Failure(metrics.StepPlan)
		return Outcome{}, errors.New(plan.Reason)
	case engine.ActionNoGPU:
		return Outcome{Idle: plan.Reason, Kernel: facts.Kernel.Release, OSVersion: facts.OS.OSVersion()}, nil
	case engine.ActionInstall:
		got, err := d.Fetch(ctx, s, a, *plan.Target, true)
		if err != nil {
			d.Metrics.Failure(metrics.StepFetch)
			return Outcome{}, err
		}
		tree, digest = got.Tree, got.Digest
	}
	before := facts.Store.Current
	if tree != "" && tree != before {
		if _, err := s.Switch(tree); err != nil {
			d.Metrics.Failure(metrics.StepSwitch)
			return Outcome{}, err
		}
		if plan.Action == engine.ActionInstall {
			d.Metrics.ObserveInstall(time.Since(installStart))
		}
		if before == "" {
			log.Info("driver installed: current -> "+tree, zap.String("to", tree))
		} else {
			log.Info("driver switched: current -> "+tree+", was "+before, systemd.MessageID(systemd.MessageDriverSwitched), zap.String("from", before), zap.String("to", tree))
		}
	}
	if tree == "" {
		// The wanted driver is loaded but not from the store: nothing of
		// ours to activate.
		return Outcome{Driver: plan.Driver, Tree: "(loaded outside the store)"}, nil
	}
	out := activeOutcome(facts, tree, plan.Driver, digest)

	act, err := d.Activate(ctx, a, tree)
	if err != nil {
		if errors.Is(err, engine.ErrRebootNeeded) {
			return Outcome{}, err // the old driver is untouched and in use
		}
		if tree != before {
			d.rollback(s, tree, out.Digest, before, err)
		}
		if len(act.Unloaded) > 0 {
			// The running driver was unloaded to make room: bring back the
			// tree it came from rather than leave the host without one.
			return Outcome{}, d.restore(ctx, a, before, err)
		}
		return Outcome{}, err
	}
	return out, nil
}

// restore activates tree prev again after the driver replacing it failed
// (cause), its modules having been unloaded first. It returns cause,
// saying whether the previous driver runs again.
func (d *Daemon) restore(ctx context.Context, a engine.Assessment, prev string, cause error) error {
	if prev == "" {
		return fmt.Errorf("%w; the driver it replaced was not from the store, and no driver is loaded now", cause)
	}
	d.Log.Warn("re-activating the driver that ran before: "+prev, zap.String("tree", prev))
	if _, err := d.Activate(ctx, a, prev); err != nil {
		return fmt.Errorf("%w; re-activating %s failed too, and no driver is loaded now: %w", cause, prev, err)
	}
	return fmt.Errorf("%w; the driver that ran before (%s) is active again", cause, prev)
}

// Activate makes tree, installed in the store a was made of, the running
// driver, with every step logged as started, finished or failed and named
// in STATUS=, and the result logged once. A failed activation is undone
// (modules it loaded, overlays or drop-in it put up), from whichever
// command, unless the driver was already running from the current tree
// (a re-check: it worked before) or another driver is in use
// (ErrRebootNeeded: nothing was changed). It does not log the failure
// itself: the caller decides what it means.
func (d *Daemon) Activate(ctx context.Context, a engine.Assessment, tree string) (engine.Activation, error) {
	log := d.Log.With(zap.String("kernel", a.Facts.Kernel.Release), zap.String("tree", tree))
	d.notify(d.Notify.Status("activating " + tree))
	d.activator.Observe = d.observer(log, tree)
	start := time.Now()
	act, err := d.activator.Activate(ctx, a.Host, a.Facts, tree)
	if err != nil {
		running := a.Decision.Action == engine.ActionNone && tree == a.Facts.Store.Current
		if !running && !errors.Is(err, engine.ErrRebootNeeded) {
			undone, derr := d.activator.Undo(ctx, a.Host, act)
			if derr != nil {
				log.Error("undo failed activation", zap.Error(derr))
			} else {
				msg := "failed activation undone"
				if len(undone.Unloaded) > 0 {
					msg += ": unloaded " + strings.Join(undone.Unloaded, " ")
				}
				var kept []string // the host's modules that were there before
				for _, m := range act.Modules {
					if m.InTree && strings.HasPrefix(m.Skipped, "already loaded") {
						kept = append(kept, m.Name)
					}
				}
				if len(kept) > 0 {
					msg += "; kept " + strings.Join(kept, " ") + ", loaded before"
				}
				log.Info(msg, zap.Strings("unloaded", undone.Unloaded), zap.Strings("kept", kept))
			}
		}
		return act, err
	}
	var loaded []string
	for _, m := range act.Modules {
		if m.Skipped == "" {
			loaded = append(loaded, m.Name)
		}
	}
	d.Metrics.ObserveActivation(time.Since(start))
	msg := fmt.Sprintf("driver activated: %s from %s on kernel %s, loaded %s", driverOf(tree), tree, a.Facts.Kernel.Release, orNone(loaded))
	if act.PersistencedSkipped != "" {
		msg += "; " + d.Config.Persistenced + " not started: " + act.PersistencedSkipped
	}
	if len(act.Unloaded) > 0 {
		msg += "; unloaded " + strings.Join(act.Unloaded, " ") // the version it replaced, in order
	}
	log.Info(msg,
		systemd.MessageID(systemd.MessageDriverActivated),
		zap.Strings("loaded", loaded), zap.Strings("unloaded", act.Unloaded), zap.Strings("devices", act.Devices), zap.Strings("mounted", act.Libs.Mounted),
		zap.String("firmware", act.Firmware.Written), zap.String("firmware_skipped", act.Firmware.Skipped),
		zap.String("cdi", act.CDI), zap.NamedError("cdi_error", act.CDIErr))
	return act, nil
}

// Deactivate undoes Activate on host h (see engine.Activator.Deactivate).
func (d *Daemon) Deactivate(ctx context.Context, h Host) (engine.Activation, error) {
	return d.activator.Deactivate(ctx, h)
}

// driverOf is the driver version of a tree path, <store>/<driver>/<name>.
func driverOf(tree string) string { return filepath.Base(filepath.Dir(tree)) }

func orNone(names []string) string {
	if len(names) == 0 {
		return "nothing new"
	}
	return strings.Join(names, " ")
}

// observer logs each activation step of tree as started, finished or
// failed, and names it in STATUS=.
func (d *Daemon) observer(log *zap.Logger, tree string) func(string, bool, error) {
	return func(step string, done bool, err error) {
		l := log.With(zap.String("step", step))
		switch {
		case !done:
			l.Info("step started: " + step)
			d.notify(d.Notify.Status(fmt.Sprintf("activating %s: %s", tree, step)))
		case err != nil:
			d.Metrics.Failure(step)
			l.Error("step failed: "+step, zap.Error(err))
		default:
			l.Info("step finished: " + step)
		}
	}
}

// Fetch downloads and installs the tree for t into s, never touching
// current, refusing images a's state remembers as failed. With progress,
// download progress goes to STATUS= and the start timeout is extended
// while bytes arrive (the daemon's own install; not a prefetch, which runs
// after READY=1).
func (d *Daemon) Fetch(ctx context.Context, s *store.Store, a engine.Assessment, t engine.Target, progress bool) (engine.Fetched, error) {
	src := d.Source
	if src == nil {
		var err error
		if src, err = engine.NewSource(a.Host.FS(), d.Config); err != nil {
			return engine.Fetched{}, err
		}
	}
	f := engine.NewFetcher(src, s, d.Config, a.State)
	if progress {
		f.Progress = d.pullProgress(time.Now())
	}
	log := d.Log.With(zap.String("driver", t.Driver), zap.String("tag", t.Tag), zap.String("kernel", t.Kernel.Release))
	log.Debug("fetch started")
	start := time.Now()
	got, err := f.Fetch(ctx, t)
	if err != nil {
		log.Error("fetch failed: "+t.Tag, systemd.MessageID(systemd.MessageFetchFailed), zap.Error(err))
		return got, reported{err}
	}
	how := fmt.Sprintf("%d bytes", got.Bytes)
	if got.Reused {
		how = "already installed, nothing downloaded"
	}
	log.Info(fmt.Sprintf("fetched %s into %s (%s)", got.Image, got.Tree, how),
		zap.String("image", got.Image), zap.String("tree", got.Tree), zap.Bool("reused", got.Reused),
		zap.Int64("bytes", got.Bytes), zap.Duration("took", time.Since(start).Round(time.Millisecond)))
	return got, nil
}

// extendBy is how much each EXTEND_TIMEOUT_USEC= during a download asks
// for: systemd fails the start unless the next one comes within it.
const extendBy = 2 * time.Minute

// pullProgress returns the progress callback of the daemon's own
// download, started at start: STATUS= says how far it is, at most once a
// second, and systemd's start timeout is extended only while the download
// makes real progress (source.MinProgress bytes since the last extension,
// or the last bytes) and never past fetch-timeout after start, so a registry trickling bytes
// cannot keep kubelet waiting for ever.
func (d *Daemon) pullProgress(start time.Time) func(done, total int64) {
	var (
		mu           sync.Mutex // Progress is called from every layer's goroutine
		last         time.Time
		extendedAt   int64
		extendBefore = start.Add(d.Config.FetchTimeout)
	)
	return func(done, total int64) {
		if d.Progress != nil {
			d.Progress(done, total)
		}
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if now.Sub(last) < time.Second && done < total {
			return
		}
		last = now
		d.notify(d.Notify.Status(systemd.Progress("pulling", done, total)))
		progressed := done-extendedAt >= source.MinProgress || (done == total && done > extendedAt)
		if progressed && (d.Config.FetchTimeout <= 0 || now.Before(extendBefore)) {
			extendedAt = done
			d.notify(d.Notify.ExtendTimeout(extendBy))
		}
	}
}

// rollback remembers that tree's image (digest) failed and points current
// back at the tree before it, so the next start does not retry it in a
// loop.
func (d *Daemon) rollback(s *store.Store, tree, digest, before string, cause error) {
	err := s.MarkBad(digest, cause.Error())
	if err == nil && before != "" {
		_, err = s.Switch(before)
	}
	if err != nil {
		d.Log.Error("roll back after failed activation", zap.Error(err))
		return
	}
	d.Log.Warn("rolled back after failed activation: "+tree+" failed, current is "+before, zap.String("failed", tree), zap.String("current", before))
}

// keepPrevious applies the keep-previous policy: activate the tree that
// was current, or else the previous one, if it matches the kernel; else
// report degraded and stay up. The loaded modules are read again: the
// failed activation may have changed them.
func (d *Daemon) keepPrevious(ctx context.Context, s *store.Store, a engine.Assessment, cause error) (Outcome, error) {
	f := a.Facts
	var err error
	if f.Loaded, err = a.Host.LoadedModules(d.Config.Modules); err != nil {
		return Outcome{Degraded: cause.Error()}, nil
	}
	if f.NvidiaVersion, err = a.Host.NvidiaProcVersion(); err != nil {
		return Outcome{Degraded: cause.Error()}, nil
	}
	a.Facts = f
	for _, p := range []string{f.Store.Current, f.Store.Previous} {
		t := f.Store.Tree(p)
		if t == nil || !engine.Judge(*t, f.Kernel, d.Config.Modules).Matches {
			continue
		}
		if p != f.Store.Current {
			if _, err := s.Switch(p); err != nil {
				break
			}
		}
		if _, err := d.Activate(ctx, a, p); err == nil {
			d.Log.Warn("kept the previous driver "+p+": "+cause.Error(), zap.String("tree", p), zap.NamedError("cause", cause))
			out := activeOutcome(f, p, t.Driver, "")
			out.Kept = cause.Error()
			return out, nil
		}
	}
	return Outcome{Degraded: cause.Error()}, nil
}
