package main

import (
	"context"
	"errors"
	"fmt"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/daemon"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
)

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// locked runs fn as the daemon's Locked does, with a context cancelled by
// SIGINT or SIGTERM; a store held by another nvidia-driverd is an error
// naming its pid unless wait is set.
func (g *globals) locked(d *daemon.Daemon, wait bool, fn func(ctx context.Context, s *store.Store, h daemon.Host) error) error {
	return g.lockedBy(d.Locked, wait, fn)
}

// lockedExisting is locked for the commands that work on what is
// installed: a host without a store is an error, and nothing is created.
func (g *globals) lockedExisting(d *daemon.Daemon, wait bool, fn func(ctx context.Context, s *store.Store, h daemon.Host) error) error {
	return g.lockedBy(d.LockedExisting, wait, fn)
}

type lockFunc func(ctx context.Context, wait bool, fn func(ctx context.Context, s *store.Store, h daemon.Host) error) error

func (g *globals) lockedBy(lock lockFunc, wait bool, fn func(ctx context.Context, s *store.Store, h daemon.Host) error) error {
	ctx, cancel := signalContext()
	defer cancel()
	err := lock(ctx, wait, fn)
	if !wait && errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%w (use --wait to wait for it)", err)
	}
	return err
}

// oneShot is the daemon of a one-shot command: nobody listens to its
// notifications, and download progress goes to the terminal.
func (g *globals) oneShot() (*daemon.Daemon, *progress, error) {
	d, err := g.daemon(nopNotifier{})
	if err != nil {
		return nil, nil, err
	}
	prog := newProgress(g.stderr, g.log)
	d.Progress = prog.update
	return d, prog, nil
}

func newFetchCommand(g *globals) *cobra.Command {
	var osVersion, kernel string
	var wait bool
	cmd := &cobra.Command{
		Use:   "fetch",
		Short: "Download and unpack the driver into the store, without switching to it",
		Long: `Download the driver image for this host (or, with --os-version or
--kernel-release, for the OS version or kernel a pending update will boot)
and install it into the store. 'current' is not touched, so the running
driver is unaffected: after the reboot, 'install' or 'run' finds the tree
and switches to it without a download.

With --os-version and no --kernel-release, the kernel the modules must match
is the one the image's org.nvidia-driverd.kernel-release label names.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			driver := g.cfg.Config.DriverVersion
			if driver == "" {
				return usageError{errors.New("driver-version is not set")}
			}
			d, prog, err := g.oneShot()
			if err != nil {
				return err
			}
			return g.locked(d, wait, func(ctx context.Context, s *store.Store, h daemon.Host) error {
				a, err := engine.Assess(h, g.cfg.Config)
				if err != nil {
					return err
				}
				t, err := a.NextBoot(g.cfg.Config, driver, engine.Boot{OSVersion: osVersion, KernelRelease: kernel})
				if err != nil {
					return err
				}
				got, err := d.Fetch(ctx, s, a, t, true)
				prog.finish()
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "fetched %s into %s\n", got.Image, got.Tree)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&osVersion, "os-version", "", "fetch for this OS version instead of the running one")
	cmd.Flags().StringVar(&kernel, "kernel-release", "", "check the modules against this kernel release instead of the running one")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for another nvidia-driverd holding the store")
	return cmd
}

func newInstallCommand(g *globals) *cobra.Command {
	var noActivate, wait bool
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Fetch the driver if needed and switch current to it",
		Long: `Decide as 'plan' does, then carry it out in the store: fetch and unpack the
image when no installed tree matches the running kernel, and switch
/opt/nvidia/current to the matching tree (the tree it replaces becomes
'previous', for rollback). A tree already installed with the same image
digest is reused.

Then the tree is activated, as 'activate' does: libraries and binaries made
visible, firmware path set, modules loaded, device nodes created,
persistenced started. With --no-activate the store is updated and nothing
on the running system changes (the next boot or 'activate' picks it up).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, prog, err := g.oneShot()
			if err != nil {
				return err
			}
			defer prog.finish()
			return g.locked(d, wait, func(ctx context.Context, s *store.Store, h daemon.Host) error {
				if noActivate {
					return g.switchOnly(ctx, d, s, h)
				}
				// The daemon's reconcile, run once: fetch, switch,
				// activate, and roll back a fresh tree that fails.
				out, err := d.Converge(ctx, s, h)
				prog.finish()
				if err != nil {
					return err
				}
				fmt.Fprintln(g.stdout, out.Status())
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&noActivate, "no-activate", false, "only fetch and switch current; do not touch the running system")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for another nvidia-driverd holding the store")
	return cmd
}

// switchOnly carries the plan out in the store alone: it fetches when
// needed and switches current, touching nothing on the running system.
func (g *globals) switchOnly(ctx context.Context, d *daemon.Daemon, s *store.Store, h daemon.Host) error {
	a, err := engine.Assess(h, g.cfg.Config)
	if err != nil {
		return err
	}
	plan := a.Decision
	g.log.Info("planned", zap.String("action", string(plan.Action)), zap.String("reason", plan.Reason))
	tree := plan.Tree
	switch plan.Action {
	case engine.ActionRefuse:
		return errors.New(plan.Reason)
	case engine.ActionNoGPU:
		fmt.Fprintf(g.stdout, "nothing to do: %s\n", plan.Reason)
		return nil
	case engine.ActionNone, engine.ActionLoad:
		fmt.Fprintf(g.stdout, "%s is current and matches kernel %s\n", plan.Tree, a.Facts.Kernel.Release)
		return nil
	case engine.ActionInstall:
		got, err := d.Fetch(ctx, s, a, *plan.Target, true)
		if err != nil {
			return err
		}
		tree = got.Tree
	}
	changed, err := s.Switch(tree)
	if err != nil {
		return err
	}
	if changed {
		g.log.Info("current switched", systemd.MessageID(systemd.MessageDriverSwitched), zap.String("tree", tree))
	}
	fmt.Fprintf(g.stdout, "current -> %s\n", tree)
	return nil
}

func newGCCommand(g *globals) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove old driver trees, keeping the newest 'keep' and never current or previous",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := g.daemon(nopNotifier{})
			if err != nil {
				return err
			}
			return g.lockedExisting(d, wait, func(_ context.Context, s *store.Store, _ daemon.Host) error {
				removed, err := s.GC(g.cfg.Config.Keep)
				for _, p := range removed {
					fmt.Fprintf(g.stdout, "removed %s\n", p)
				}
				if err == nil && len(removed) == 0 {
					fmt.Fprintf(g.stdout, "nothing to remove: keeping the newest %d trees besides current and previous\n", g.cfg.Config.Keep)
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for another nvidia-driverd holding the store")
	return cmd
}

func newForgetCommand(g *globals) *cobra.Command {
	var wait, all bool
	cmd := &cobra.Command{
		Use:   "forget DIGEST... | --all",
		Short: "Let images recorded as failed be tried again",
		Long: `An image whose tree failed to activate is recorded in the store's state.json
and never tried again. When the cause was on the host (Secure Boot keys, a
GPU missing or reseated) and is fixed, forget it: the next start or
'systemctl reload nvidia-driverd' tries it again. 'status' lists what is
recorded, with why.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return usageError{errors.New("forget: give the image digests to forget, or --all")}
			}
			d, err := g.daemon(nopNotifier{})
			if err != nil {
				return err
			}
			return g.lockedExisting(d, wait, func(_ context.Context, s *store.Store, _ daemon.Host) error {
				gone, err := s.Forget(args)
				if err != nil {
					return err
				}
				for _, dg := range gone {
					g.log.Info("failed image forgotten: "+dg, zap.String("digest", dg))
					fmt.Fprintf(g.stdout, "forgot %s: it will be tried again\n", dg)
				}
				if len(gone) == 0 {
					fmt.Fprintln(g.stdout, "no image is recorded as failed")
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "forget every image recorded as failed")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for another nvidia-driverd holding the store")
	return cmd
}

func newRollbackCommand(g *globals) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "rollback",
		Short: "Switch current back to the previous driver tree",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := g.daemon(nopNotifier{})
			if err != nil {
				return err
			}
			return g.lockedExisting(d, wait, func(_ context.Context, s *store.Store, h daemon.Host) error {
				from, to, err := s.Rollback()
				if err != nil {
					return err
				}
				g.log.Info("current rolled back", zap.String("from", from), zap.String("to", to))
				fmt.Fprintf(g.stdout, "current -> %s (was %s)\n", to, from)
				// A rollback the daemon will not keep is said now, not
				// found out at the next start.
				if a, err := engine.Assess(h, g.cfg.Config); err == nil {
					if t := a.Facts.Store.Tree(to); t != nil {
						moves := a.Decision.Action == engine.ActionSwitch || a.Decision.Action == engine.ActionInstall
						if fit := engine.Judge(*t, a.Facts.Kernel, g.cfg.Config.Modules); !fit.Matches {
							next := "will " + string(a.Decision.Action) + " at its next start"
							if !moves {
								next = "will not use it (" + string(a.Decision.Action) + ": " + a.Decision.Reason + ")"
							}
							fmt.Fprintf(g.stdout, "note: %s does not match the running kernel (%s); the daemon %s\n", to, fit.Problem, next)
						} else if moves {
							fmt.Fprintf(g.stdout, "note: driver-version %s is not %s; the daemon will %s at its next start: %s\n", g.cfg.Config.DriverVersion, t.Driver, a.Decision.Action, a.Decision.Reason)
						}
					}
				}
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for another nvidia-driverd holding the store")
	return cmd
}
