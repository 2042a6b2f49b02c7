package main

import (
	"context"
	"errors"
	"fmt"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// sourceOptions turns the configuration into fetch options.
func sourceOptions(cfg config.Config) (source.Options, error) {
	p, err := v1.ParsePlatform(cfg.Platform)
	if err != nil {
		return source.Options{}, usageError{fmt.Errorf("platform %q: %w", cfg.Platform, err)}
	}
	return source.Options{Insecure: cfg.InsecureRegistries, Mirrors: cfg.Mirrors, Platform: *p, Digests: cfg.Digests}, nil
}

// imageSource is where images come from: an OCI layout directory (a host
// path, taken under --root) or the repository.
func (g *globals) imageSource() (source.Source, error) {
	cfg := g.cfg.Config
	opts, err := sourceOptions(cfg)
	if err != nil {
		return nil, err
	}
	if p, ok := strings.CutPrefix(cfg.Source, source.LayoutPrefix); ok {
		return source.NewLayout(filepath.Join(g.root, p), opts), nil
	}
	if cfg.Repository == "" {
		return nil, usageError{errors.New("no repository configured (repository, or source: oci-layout:/path)")}
	}
	return source.NewRegistry(cfg.Repository, opts)
}

// lockedStore opens the store and takes its lock. With wait unset, a store
// held by another nvidia-driverd is an error naming its pid.
func (g *globals) lockedStore(ctx context.Context, wait bool) (*store.Store, func(), error) {
	s, err := store.Open(g.root, g.cfg.Config.Store)
	if err != nil {
		return nil, nil, err
	}
	if wait {
		g.log.Debug("waiting for the store lock", zap.String("store", s.Dir()))
	}
	l, err := s.Lock(ctx, wait)
	if err != nil {
		if errors.Is(err, store.ErrLocked) {
			return nil, nil, fmt.Errorf("%w (use --wait to wait for it)", err)
		}
		return nil, nil, err
	}
	removed, err := s.Clean()
	for _, p := range removed {
		g.log.Info("removed leftover of an interrupted install", zap.String("path", p))
	}
	if err != nil {
		l.Unlock()
		return nil, nil, err
	}
	return s, func() {
		if err := l.Unlock(); err != nil {
			g.log.Warn("unlock store", zap.Error(err))
		}
	}, nil
}

// locked runs fn with the store locked and a context cancelled by SIGINT
// or SIGTERM.
func (g *globals) locked(wait bool, fn func(ctx context.Context, s *store.Store) error) error {
	ctx, cancel := signalContext()
	defer cancel()
	s, unlock, err := g.lockedStore(ctx, wait)
	if err != nil {
		return err
	}
	defer unlock()
	return fn(ctx, s)
}

// fetcher builds a Fetcher over the configured source and s, remembering
// images that failed before.
func (g *globals) fetcher(s *store.Store) (*engine.Fetcher, error) {
	src, err := g.imageSource()
	if err != nil {
		return nil, err
	}
	cfg := g.cfg.Config
	st, err := store.ReadState(g.root, cfg.Store)
	if err != nil {
		return nil, err
	}
	return &engine.Fetcher{
		Source: src, Store: s, Modules: cfg.Modules, BadDigests: st.Reasons(),
		Limits: unpack.Limits{MaxBytes: cfg.MaxImageBytes, MaxEntries: cfg.MaxImageEntries},
	}, nil
}

// target is what the running host needs, or, with osVersion or kernel
// set, what a host booting that OS version or kernel needs (a prefetch).
func (g *globals) target(f engine.Facts, driver, osVersion, kernel string) (engine.Target, error) {
	cfg := g.cfg.Config
	t := engine.Target{Driver: driver, OSID: f.OS.ID, OSVersion: f.OS.OSVersion(), Kernel: f.Kernel}
	if osVersion != "" {
		t.OSVersion = osVersion
		if kernel == "" {
			t.Kernel = engine.Kernel{} // named by the image's label
		}
	}
	if kernel != "" {
		t.Kernel = g.kernelFacts(kernel)
	}
	facts := f
	facts.OS.VersionID, facts.Kernel.Release = t.OSVersion, t.Kernel.Release
	t.TreeName = engine.TreeName(facts)
	vars := engine.TagVars(facts, driver)
	tmpl, err := cfg.Template()
	if err != nil {
		return t, usageError{err}
	}
	if t.Tag, err = tmpl.Render(vars); err != nil {
		return t, err
	}
	if cfg.ImageSubdir != "" {
		sub, err := source.ParseSubdir(cfg.ImageSubdir)
		if err != nil {
			return t, usageError{err}
		}
		if t.Subdir, err = sub.Render(vars); err != nil {
			return t, err
		}
	}
	return t, nil
}

// kernelFacts describes a kernel that may not be running: its flags are
// known when the host already has its modules (a newly installed kernel on
// a generic host).
func (g *globals) kernelFacts(release string) engine.Kernel {
	k := engine.Kernel{Release: release}
	if host, fsPath, ok := hostinfo.InTreeModule(g.root, release); ok {
		if info, err := modinfo.Read(fsPath); err == nil {
			if vm, err := modinfo.ParseVermagic(info.Vermagic); err == nil && vm.Release == release {
				k.Flags, k.FlagsFrom = vm.Flags, host
			}
		}
	}
	return k
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
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
			return g.locked(wait, func(ctx context.Context, s *store.Store) error {
				facts, err := engine.Gather(g.root, g.cfg.Config)
				if err != nil {
					return err
				}
				t, err := g.target(facts, driver, osVersion, kernel)
				if err != nil {
					return err
				}
				got, err := g.fetch(ctx, s, t)
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

// fetch runs a Fetcher for t with progress and logs the outcome.
func (g *globals) fetch(ctx context.Context, s *store.Store, t engine.Target) (engine.Fetched, error) {
	prog := newProgress(g.stderr, g.log)
	f, err := g.fetcher(s)
	if err != nil {
		return engine.Fetched{}, err
	}
	f.Progress = prog.update
	log := g.log.With(zap.String("driver", t.Driver), zap.String("tag", t.Tag), zap.String("kernel", t.Kernel.Release))
	log.Info("fetch started")
	start := time.Now()
	got, err := f.Fetch(ctx, t)
	prog.finish()
	if err != nil {
		log.Error("fetch failed", zap.Error(err))
		return got, err
	}
	log.Info("fetch finished", zap.String("image", got.Image), zap.String("tree", got.Tree),
		zap.Bool("reused", got.Reused), zap.Int64("bytes", got.Bytes), zap.Duration("took", time.Since(start)))
	return got, nil
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
			return g.locked(wait, func(ctx context.Context, s *store.Store) error {
				return g.install(ctx, s, !noActivate)
			})
		},
	}
	cmd.Flags().BoolVar(&noActivate, "no-activate", false, "only fetch and switch current; do not touch the running system")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for another nvidia-driverd holding the store")
	return cmd
}

// install carries out the plan in the store. With activate it is the
// daemon's reconcile, run once: fetch, switch, activate, and roll back a
// fresh tree that fails to activate. Without, it only fetches and
// switches current.
func (g *globals) install(ctx context.Context, s *store.Store, activate bool) error {
	if activate {
		d := g.daemon(nopNotifier{})
		prog := newProgress(g.stderr, g.log)
		d.Progress = prog.update
		out, err := d.Converge(ctx, s)
		prog.finish()
		if err != nil {
			return err
		}
		fmt.Fprintln(g.stdout, out.Status())
		return nil
	}
	cfg := g.cfg.Config
	facts, err := engine.Gather(g.root, cfg)
	if err != nil {
		return err
	}
	st, err := store.ReadState(g.root, cfg.Store)
	if err != nil {
		return err
	}
	d := engine.Plan(facts, cfg, engine.State{BadDigests: st.Reasons()})
	g.log.Info("planned", zap.String("action", string(d.Action)), zap.String("reason", d.Reason))
	tree := d.Tree
	switch d.Action {
	case engine.ActionRefuse:
		return errors.New(d.Reason)
	case engine.ActionNone, engine.ActionLoad:
		fmt.Fprintf(g.stdout, "%s is current and matches kernel %s\n", d.Tree, facts.Kernel.Release)
		return nil
	case engine.ActionInstall:
		t, err := g.target(facts, d.Driver, "", "")
		if err != nil {
			return err
		}
		got, err := g.fetch(ctx, s, t)
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
			return g.locked(wait, func(_ context.Context, s *store.Store) error {
				removed, err := s.GC(g.cfg.Config.Keep)
				for _, p := range removed {
					fmt.Fprintf(g.stdout, "removed %s\n", p)
				}
				return err
			})
		},
	}
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
			return g.locked(wait, func(_ context.Context, s *store.Store) error {
				from, to, err := s.Rollback()
				if err != nil {
					return err
				}
				g.log.Info("current rolled back", zap.String("from", from), zap.String("to", to))
				fmt.Fprintf(g.stdout, "current -> %s (was %s)\n", to, from)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for another nvidia-driverd holding the store")
	return cmd
}
