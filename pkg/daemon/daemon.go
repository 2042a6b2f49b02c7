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
	"os"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/metrics"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/updateengine"
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

// Daemon reconciles one host.
type Daemon struct {
	Root      string
	Config    config.Config
	Log       *zap.Logger
	Notify    Notifier
	Activator *engine.Activator
	// Fetcher builds the fetcher for a locked store; it is called only
	// when a download is needed.
	Fetcher func(s *store.Store) (*engine.Fetcher, error)
	// Target returns the target for the running host and a driver version.
	Target func(f engine.Facts, driver string) (engine.Target, error)
	// Progress, when set, also receives download progress (a terminal's
	// progress line for one-shot commands).
	Progress func(done, total int64)

	// With Config.Prefetch, Run follows one of these after READY=1:
	// UpdateEngine on Flatcar and CoreOS, Kernels on other hosts when the
	// tag template names the kernel release.
	UpdateEngine func(ctx context.Context) <-chan updateengine.Status
	Kernels      func(ctx context.Context) <-chan string
	// PrefetchTarget returns the target for a staged update; prefetching
	// is off without it.
	PrefetchTarget func(f engine.Facts, driver string, u StagedUpdate) (engine.Target, error)
	// PrefetchRetry is the wait before retry n (1, 2, ...) of a failed
	// prefetch; nil means RetryDelay.
	PrefetchRetry func(n int) time.Duration
	// OnPrefetch, when set, is called with each prefetch state recorded
	// (fetching, ready, failed), from the prefetcher's goroutine.
	OnPrefetch func(store.Prefetch)
	// Metrics receives readiness, durations and failures; nil is fine.
	Metrics *metrics.Metrics

	mu           sync.Mutex // guards the two below
	outcome      string     // STATUS= of the last reconcile
	prefetchNote string     // STATUS= of the prefetch, appended
}

// Outcome is the result of one reconcile.
type Outcome struct {
	Tree     string // the active tree
	Driver   string
	Degraded string // why the driver is not usable but the daemon stays up
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
	s := fmt.Sprintf("driver %s active from %s", o.Driver, o.Tree)
	if o.Kept != "" {
		s += " (previous driver kept: " + o.Kept + ")"
	}
	return s
}

// activeOutcome is the Outcome of an activated tree; facts may predate its
// install.
func (d *Daemon) activeOutcome(f engine.Facts, tree, driver string) Outcome {
	o := Outcome{Tree: tree, Driver: driver, Kernel: f.Kernel.Release, OSVersion: f.OS.OSVersion()}
	t := f.Store.Tree(tree)
	if t == nil {
		read := store.ReadTree(d.Root, tree, driver, "")
		t = &read
	}
	if t.Meta != nil {
		o.Digest = t.Meta.Digest
	}
	return o
}

// report hands a reconcile's result to the metrics.
func (d *Daemon) report(out Outcome, err error) {
	if err != nil || out.Degraded != "" {
		d.Metrics.NotReady()
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
	if d.Config.Prefetch {
		pctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			d.prefetcher(pctx)
		}()
		defer func() {
			stop()
			<-done
		}()
	}

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

// recheckFailed reports a failed re-check. The driver that was ready
// stays loaded (a re-check never unloads a driver that was in use), so the
// unit stays up rather than take kubelet down on a reload; the metrics say
// not ready only when the wanted driver is in fact no longer loaded.
func (d *Daemon) recheckFailed(err error) {
	d.Log.Error("re-check failed", zap.Error(err))
	if _, plan, perr := d.plan(); perr != nil || plan.Action != engine.ActionNone {
		d.Metrics.NotReady() // what `status --ready` would say too
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
	s, err := store.Open(d.Root, d.Config.Store)
	if err != nil {
		return Outcome{}, err
	}
	d.notify(d.Notify.Status("waiting for the store lock"))
	unlock, err := d.lockAndClean(ctx, s)
	if unlock != nil {
		defer unlock()
	}
	if err != nil {
		return Outcome{}, err
	}
	return d.Converge(ctx, s)
}

// lockAndClean waits for the store's lock and removes what interrupted
// installs left. unlock is nil when the lock was not taken; otherwise the
// caller must call it, error or not.
func (d *Daemon) lockAndClean(ctx context.Context, s *store.Store) (unlock func(), err error) {
	lock, err := s.Lock(ctx, true)
	if err != nil {
		return nil, err
	}
	unlock = func() {
		if err := lock.Unlock(); err != nil {
			d.Log.Warn("unlock store", zap.Error(err))
		}
	}
	removed, err := s.Clean()
	for _, p := range removed {
		d.Log.Info("removed leftover of an interrupted install", zap.String("path", p))
	}
	return unlock, err
}

// Converge is Reconcile for a caller that already holds the store's lock
// and has cleaned it (the install command).
func (d *Daemon) Converge(ctx context.Context, s *store.Store) (Outcome, error) {
	out, err := d.reconcile(ctx, s)
	if err == nil {
		return out, nil
	}
	d.Log.Error("activation failed", systemd.MessageID(systemd.MessageActivationFailed), zap.Error(err))
	if d.Config.FailurePolicy != "keep-previous" || errors.Is(err, context.Canceled) {
		return Outcome{}, err
	}
	return d.keepPrevious(ctx, s, err)
}

// plan reads the host and the store's state and decides, as `status` does.
func (d *Daemon) plan() (engine.Facts, engine.Decision, error) {
	facts, err := engine.Gather(d.Root, d.Config)
	if err != nil {
		return facts, engine.Decision{}, err
	}
	st, err := store.ReadState(d.Root, d.Config.Store)
	if err != nil {
		return facts, engine.Decision{}, err
	}
	return facts, engine.Plan(facts, d.Config, engine.State{BadDigests: st.Reasons()}), nil
}

// reconcile plans and carries the plan out. A freshly switched tree that
// fails to activate is marked bad and current goes back to where it was.
func (d *Daemon) reconcile(ctx context.Context, s *store.Store) (Outcome, error) {
	facts, plan, err := d.plan()
	if err != nil {
		d.Metrics.Failure(metrics.StepGather)
		return Outcome{}, err
	}
	log := d.Log.With(zap.String("kernel", facts.Kernel.Release), zap.String("driver", plan.Driver))
	log.Info("planned", zap.String("action", string(plan.Action)), zap.String("reason", plan.Reason))
	d.notify(d.Notify.Status(fmt.Sprintf("%s: %s", plan.Action, plan.Reason)))

	tree := plan.Tree
	installStart := time.Now()
	switch plan.Action {
	case engine.ActionRefuse:
		d.Metrics.Failure(metrics.StepPlan)
		return Outcome{}, errors.New(plan.Reason)
	case engine.ActionInstall:
		if tree, err = d.fetch(ctx, s, facts, plan.Driver); err != nil {
			d.Metrics.Failure(metrics.StepFetch)
			return Outcome{}, err
		}
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
			log.Info("driver installed", zap.String("to", tree))
		} else {
			log.Info("driver switched", systemd.MessageID(systemd.MessageDriverSwitched), zap.String("from", before), zap.String("to", tree))
		}
	}
	if tree == "" {
		// The wanted driver is loaded but not from the store: nothing of
		// ours to activate.
		return Outcome{Driver: plan.Driver, Tree: "(loaded outside the store)"}, nil
	}

	d.notify(d.Notify.Status("activating " + tree))
	d.Activator.Observe = d.observer(log, tree)
	activateStart := time.Now()
	act, err := d.Activator.Activate(ctx, facts, tree)
	if err != nil {
		if errors.Is(err, engine.ErrRebootNeeded) {
			return Outcome{}, err // the old driver is untouched and in use
		}
		// Leave nothing of the failed tree in use: modules it loaded,
		// overlays or drop-in it put up. A driver that was already
		// running from this tree (a re-check) stays: it worked before.
		if plan.Action != engine.ActionNone {
			if _, derr := d.Activator.Deactivate(ctx); derr != nil {
				log.Error("undo failed activation", zap.String("tree", tree), zap.Error(derr))
			}
		}
		if tree != before {
			d.rollback(s, tree, before, err)
		}
		return Outcome{}, err
	}
	var loaded []string
	for _, m := range act.Modules {
		if m.Skipped == "" {
			loaded = append(loaded, m.Name)
		}
	}
	d.Metrics.ObserveActivation(time.Since(activateStart))
	log.Info("driver activated", systemd.MessageID(systemd.MessageDriverActivated), zap.String("tree", tree),
		zap.Strings("loaded", loaded), zap.Strings("devices", act.Devices), zap.Strings("mounted", act.Libs.Mounted),
		zap.String("cdi", act.CDI), zap.NamedError("cdi_error", act.CDIErr))
	return d.activeOutcome(facts, tree, plan.Driver), nil
}

// observer logs each activation step of tree as started, finished or
// failed, and names it in STATUS=.
func (d *Daemon) observer(log *zap.Logger, tree string) func(string, bool, error) {
	return func(step string, done bool, err error) {
		l := log.With(zap.String("tree", tree), zap.String("step", step))
		switch {
		case !done:
			l.Info("step started")
			d.notify(d.Notify.Status(fmt.Sprintf("activating %s: %s", tree, step)))
		case err != nil:
			d.Metrics.Failure(step)
			l.Error("step failed", zap.Error(err))
		default:
			l.Info("step finished")
		}
	}
}

// fetch downloads the image for the running host, with progress in
// STATUS= and the start timeout extended while bytes arrive.
func (d *Daemon) fetch(ctx context.Context, s *store.Store, facts engine.Facts, driver string) (string, error) {
	t, err := d.Target(facts, driver)
	if err != nil {
		return "", err
	}
	f, err := d.Fetcher(s)
	if err != nil {
		return "", err
	}
	var mu sync.Mutex // Progress is called from every layer's goroutine
	var last time.Time
	f.Progress = func(done, total int64) {
		if d.Progress != nil {
			d.Progress(done, total)
		}
		mu.Lock()
		defer mu.Unlock()
		if time.Since(last) < time.Second && done < total {
			return
		}
		last = time.Now()
		d.notify(d.Notify.Status(systemd.Progress("pulling", done, total)))
		d.notify(d.Notify.ExtendTimeout(2 * time.Minute))
	}
	got, err := f.Fetch(ctx, t)
	if err != nil {
		d.Log.Error("fetch failed", systemd.MessageID(systemd.MessageFetchFailed), zap.String("tag", t.Tag), zap.Error(err))
		return "", err
	}
	d.Log.Info("fetched", zap.String("image", got.Image), zap.String("tree", got.Tree), zap.Bool("reused", got.Reused), zap.Int64("bytes", got.Bytes))
	return got.Tree, nil
}

// rollback remembers that tree's image failed and points current back at
// the tree before it, so the next start does not retry it in a loop.
func (d *Daemon) rollback(s *store.Store, tree, before string, cause error) {
	inv, err := store.Scan(d.Root, d.Config.Store)
	if err == nil {
		if t := inv.Tree(tree); t != nil && t.Meta != nil {
			err = s.MarkBad(t.Meta.Digest, cause.Error())
		}
	}
	if err == nil && before != "" {
		_, err = s.Switch(before)
	}
	if err != nil {
		d.Log.Error("roll back after failed activation", zap.Error(err))
		return
	}
	d.Log.Warn("rolled back after failed activation", zap.String("failed", tree), zap.String("current", before))
}

// keepPrevious applies the keep-previous policy: activate the previous
// tree if it matches the kernel, else report degraded and stay up.
func (d *Daemon) keepPrevious(ctx context.Context, s *store.Store, cause error) (Outcome, error) {
	facts, err := engine.Gather(d.Root, d.Config)
	if err != nil {
		return Outcome{Degraded: cause.Error()}, nil
	}
	for _, p := range []string{facts.Store.Current, facts.Store.Previous} {
		t := facts.Store.Tree(p)
		if t == nil || !engine.Judge(*t, facts.Kernel, d.Config.Modules).Matches {
			continue
		}
		if p != facts.Store.Current {
			if _, err := s.Switch(p); err != nil {
				break
			}
		}
		d.Activator.Observe = d.observer(d.Log, p)
		if _, err := d.Activator.Activate(ctx, facts, p); err == nil {
			d.Log.Warn("kept the previous driver", zap.String("tree", p), zap.NamedError("cause", cause))
			out := d.activeOutcome(facts, p, t.Driver)
			out.Kept = cause.Error()
			return out, nil
		}
	}
	return Outcome{Degraded: cause.Error()}, nil
}
