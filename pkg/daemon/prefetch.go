package daemon

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/metrics"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/nextboot"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
)

// Retry bounds of RetryDelay.
const (
	retryFirst = 30 * time.Second
	retryMax   = time.Hour
)

// RetryDelay is the default wait before retry n (1, 2, ...) of a failed
// prefetch: 30 s doubling up to 1 h, each within ±20%, so that hosts
// updated together do not retry together.
func RetryDelay(n int) time.Duration {
	d := retryFirst
	for i := 1; i < n && d < retryMax; i++ {
		d *= 2
	}
	d = min(d, retryMax)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func (d *Daemon) retryDelay(n int) time.Duration {
	if d.PrefetchRetry != nil {
		return d.PrefetchRetry(n)
	}
	return RetryDelay(n)
}

// setOutcome remembers the STATUS= text of out and returns the full line,
// with the prefetch's state when there is one.
func (d *Daemon) setOutcome(out Outcome) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.outcome = out.Status()
	return d.statusLocked()
}

// setPrefetchNote sets the prefetch's part of STATUS= and sends the line.
func (d *Daemon) setPrefetchNote(note string) {
	d.mu.Lock()
	d.prefetchNote = note
	line := d.statusLocked()
	d.mu.Unlock()
	d.notify(d.Notify.Status(line))
}

func (d *Daemon) statusLocked() string {
	switch {
	case d.prefetchNote == "":
		return d.outcome
	case d.outcome == "":
		return d.prefetchNote
	}
	return d.outcome + "; " + d.prefetchNote
}

// prefetcher follows what the next boot runs and fetches the driver for
// it, until ctx ends: update_engine's staged update on Flatcar and CoreOS,
// newly installed kernels elsewhere when the tag template names the
// kernel release. A failed prefetch is retried after retryDelay; a newer
// staged update replaces a pending retry.
func (d *Daemon) prefetcher(ctx context.Context) {
	var running engine.Facts
	err := d.Look(func(a engine.Assessment) error {
		running = a.Facts
		return nil
	})
	if err != nil {
		d.Log.Error("prefetch: cannot read the host; not following updates", zap.Error(err))
		return
	}
	var (
		statuses <-chan nextboot.Status
		kernels  <-chan string
	)
	switch running.OS.Family() {
	case hostinfo.FamilyFlatcar, hostinfo.FamilyCoreOS:
		if d.UpdateEngine == nil {
			d.Log.Warn("prefetch: no update_engine watcher; not following updates")
			return
		}
		statuses = d.UpdateEngine(ctx)
		d.Log.Info("prefetch: following update_engine for staged OS updates")
	default:
		if w := engine.KernelPinWarning(running, d.Config); w != "" {
			d.Log.Warn("prefetch: not following new kernels: " + w)
			return
		}
		if d.Kernels == nil {
			d.Log.Warn("prefetch: no kernel watcher; not following new kernels")
			return
		}
		kernels = d.Kernels(ctx)
		d.Log.Info("prefetch: following newly installed kernels")
	}

	var (
		pending  *engine.Boot // to fetch, until it succeeds
		done     *engine.Boot // fetched
		attempts int
	)
	retry := time.NewTimer(time.Hour) // armed only while a retry waits
	retry.Stop()
	defer retry.Stop()
	for {
		var u engine.Boot
		select {
		case <-ctx.Done():
			return
		case s, ok := <-statuses:
			if !ok {
				return
			}
			v := s.Staged()
			if v == "" || v == running.OS.OSVersion() {
				continue
			}
			u = engine.Boot{OSVersion: v}
		case rel, ok := <-kernels:
			if !ok {
				return
			}
			if rel == running.Kernel.Release {
				continue
			}
			u = engine.Boot{KernelRelease: rel}
		case <-retry.C:
		}
		if u != (engine.Boot{}) {
			repeated := (pending != nil && *pending == u) || (done != nil && *done == u)
			d.Log.Debug("staged update", zap.String("os_version", u.OSVersion), zap.String("kernel", u.KernelRelease),
				zap.Bool("repeated", repeated))
			if repeated {
				continue // update_engine says so on every status
			}
			pending, attempts = &u, 0
			retry.Stop()
		}
		if pending == nil {
			continue
		}
		attempts++
		delay := d.retryDelay(attempts)
		if err := d.prefetch(ctx, running, *pending, attempts, delay); err != nil {
			if ctx.Err() != nil {
				return
			}
			retry.Reset(delay)
			continue
		}
		done, pending = pending, nil
	}
}

// prefetch fetches the tree for u with the store locked, never switching
// `current`, and records how it went in the state file. On failure the
// record names the next try, retryIn from now.
func (d *Daemon) prefetch(ctx context.Context, running engine.Facts, u engine.Boot, attempt int, retryIn time.Duration) error {
	rec := store.Prefetch{OSVersion: u.OSVersion, KernelRelease: u.KernelRelease, Attempts: attempt}
	d.Log.Debug("prefetch: waiting for the store lock")
	locked := false
	err := d.Locked(ctx, true, func(ctx context.Context, s *store.Store, h Host) error {
		locked = true
		err := d.prefetchLocked(ctx, s, h, running, u, &rec)
		if err != nil {
			return d.prefetchFailed(ctx, running, s, rec, err, retryIn)
		}
		return nil
	})
	if err != nil && !locked {
		return d.prefetchFailed(ctx, running, nil, rec, err, retryIn) // no lock: no state write
	}
	return err
}

// prefetchLocked is prefetch with the store locked: it assesses the host,
// resolves the target for u and fetches it, keeping rec up to date.
func (d *Daemon) prefetchLocked(ctx context.Context, s *store.Store, h Host, running engine.Facts, u engine.Boot, rec *store.Prefetch) error {
	a, err := engine.Assess(h, d.Config)
	if err != nil {
		return err
	}
	if rec.Driver, err = a.Facts.WantedDriver(d.Config); err != nil {
		return err
	}
	t, err := a.NextBoot(d.Config, rec.Driver, u)
	if err != nil {
		return fmt.Errorf("prefetch target: %w", err)
	}
	rec.OSVersion, rec.KernelRelease, rec.Tag = t.OSVersion, t.Kernel.Release, t.Tag
	log := d.Log.With(zap.String("driver", rec.Driver), zap.String("os_version", rec.OSVersion),
		zap.String("kernel", rec.KernelRelease), zap.String("tag", rec.Tag))

	if p := a.State.Prefetch; p != nil && p.State == store.PrefetchReady && p.Driver == rec.Driver && p.Tag == rec.Tag &&
		p.OSVersion == rec.OSVersion && (rec.KernelRelease == "" || p.KernelRelease == rec.KernelRelease) &&
		a.Facts.Store.Tree(p.Tree) != nil {
		log.Info("already prefetched "+rec.Tag+" into "+p.Tree, zap.String("tree", p.Tree))
		d.prefetchState(*p, running)
		return nil
	}

	rec.State, rec.At = store.PrefetchFetching, time.Now().UTC()
	if err := s.SetPrefetch(*rec); err != nil {
		return err
	}
	d.prefetchState(*rec, running)
	log.Info(fmt.Sprintf("prefetch started: %s for %s (attempt %d)", rec.Tag, nextBootOf(*rec), rec.Attempts), zap.Int("attempt", rec.Attempts))
	start := time.Now()
	got, err := d.Fetch(ctx, s, a, t, false)
	rec.Digest = got.Digest
	if err != nil {
		return err
	}
	rec.Tree, rec.KernelRelease = got.Tree, got.KernelRelease // the image's label may have named it
	rec.State, rec.At = store.PrefetchReady, time.Now().UTC()
	if err := s.SetPrefetch(*rec); err != nil {
		return err
	}
	log.Info(fmt.Sprintf("prefetched %s into %s for %s", rec.Tag, got.Tree, nextBootOf(*rec)), zap.String("kernel", rec.KernelRelease), zap.String("tree", got.Tree),
		zap.String("image", got.Image), zap.String("digest", got.Digest), zap.Bool("reused", got.Reused),
		zap.Int64("bytes", got.Bytes), zap.Duration("took", time.Since(start).Round(time.Millisecond)))
	d.prefetchState(*rec, running)
	return nil
}

// nextBootOf names what a prefetch is for, in words.
func nextBootOf(p store.Prefetch) string {
	switch {
	case p.OSVersion != "" && p.KernelRelease != "":
		return "OS " + p.OSVersion + " (kernel " + p.KernelRelease + ")"
	case p.OSVersion != "":
		return "OS " + p.OSVersion
	}
	return "kernel " + p.KernelRelease
}

// prefetchFailed records and reports a failed attempt, and returns err.
// s is nil when the store lock is not held: then nothing is written.
func (d *Daemon) prefetchFailed(ctx context.Context, running engine.Facts, s *store.Store, rec store.Prefetch, err error, retryIn time.Duration) error {
	rec.State, rec.At, rec.Error = store.PrefetchFailed, time.Now().UTC(), err.Error()
	rec.Tree = ""
	fields := []zap.Field{zap.String("driver", rec.Driver), zap.String("os_version", rec.OSVersion),
		zap.String("kernel", rec.KernelRelease), zap.String("tag", rec.Tag), zap.Int("attempt", rec.Attempts)}
	if ctx.Err() != nil {
		rec.Error = "interrupted: the daemon stopped"
		d.Log.Info("prefetch interrupted", fields...)
	} else {
		rec.NextRetry = rec.At.Add(retryIn)
		d.Log.Error(fmt.Sprintf("prefetch failed: %s for %s, next try in %v", rec.Tag, nextBootOf(rec), retryIn.Round(time.Second)), append(fields, systemd.MessageID(systemd.MessagePrefetchFailed),
			zap.Duration("retry_in", retryIn), zap.Error(err))...)
	}
	if s != nil {
		if werr := s.SetPrefetch(rec); werr != nil {
			d.Log.Error("record prefetch state", zap.Error(werr))
		}
	}
	if ctx.Err() == nil {
		d.prefetchState(rec, running)
	}
	return err
}

// prefetchState shows p in STATUS= and hands it to OnPrefetch.
func (d *Daemon) prefetchState(p store.Prefetch, running engine.Facts) {
	if r := engine.NewPrefetchReport(&p, running); r != nil {
		d.setPrefetchNote(r.Summary)
	}
	staged := p.OSVersion
	if staged == "" || staged == running.OS.OSVersion() {
		staged = p.KernelRelease // a new kernel on a generic host
	}
	d.Metrics.Prefetch(staged, p.State == store.PrefetchReady)
	if p.State == store.PrefetchFailed {
		d.Metrics.Failure(metrics.StepPrefetch)
	}
	if d.OnPrefetch != nil {
		d.OnPrefetch(p)
	}
}
