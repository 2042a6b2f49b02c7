package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/daemon"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/libs"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/metrics"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/nextboot"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"
)

// daemon builds the daemon over the real seams: finit_module, mount(2),
// systemd over D-Bus (connected on first use); it reports to notify.
func (g *globals) daemon(notify daemon.Notifier) (*daemon.Daemon, error) {
	return daemon.New(daemon.Deps{
		Root: g.root, Config: g.cfg.Config, Log: g.log, Notify: notify,
		Syscalls: kmod.LinuxSyscalls{}, Mounter: libs.Syscalls{}, Units: systemd.NewUnits(nil),
	})
}

// followUpdates gives the daemon what it follows to prefetch the driver
// for the next boot: update_engine on the system bus (Flatcar, CoreOS;
// $DBUS_SYSTEM_BUS_ADDRESS names the bus, as in the DaemonSet), or the
// host's kernel directories (other hosts, when the tag template names
// the kernel release). The daemon picks one by the host's OS.
func (g *globals) followUpdates(d *daemon.Daemon) {
	d.UpdateEngine = func(ctx context.Context) <-chan nextboot.Status {
		w := &nextboot.Watcher{Connect: nextboot.SystemBus, Log: g.log}
		return w.Watch(ctx)
	}
	d.Kernels = func(ctx context.Context) <-chan string {
		// Kernels installed since boot, before the daemon (re)started,
		// count as new too.
		since, err := nextboot.BootTime()
		if err != nil {
			g.log.Warn("kernel watch: boot time unknown; only kernels installed from now on count", zap.Error(err))
		}
		w := &nextboot.KernelWatcher{Root: g.root, Since: since, Log: g.log}
		return w.Watch(ctx)
	}
}

// nopNotifier is the Notifier of one-shot commands: nobody listens.
type nopNotifier struct{}

func (nopNotifier) Ready(string) error                { return nil }
func (nopNotifier) Status(string) error               { return nil }
func (nopNotifier) Reloading(string) error            { return nil }
func (nopNotifier) Stopping(string) error             { return nil }
func (nopNotifier) ExtendTimeout(time.Duration) error { return nil }
func (nopNotifier) Watchdog() error                   { return nil }
func (nopNotifier) WatchdogInterval() time.Duration   { return 0 }

func newActivateCommand(g *globals) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "activate",
		Short: "Make the current tree the running driver, once",
		Long: `Activate /opt/nvidia/current: point the firmware path at it, make its
libraries and binaries visible (read-only overlays on /usr/lib64 and
/opt/bin, or an ld.so.conf.d drop-in; see library-mode), run ldconfig and
check that libcuda.so.1 and libnvidia-ml.so.1 resolve, load its modules in
dependency order (after the kernel's own prerequisites, such as
ipmi_msghandler), create /dev/nvidia* and start nvidia-persistenced.

Every module's vermagic is checked against the running kernel first. When
another driver version is loaded and in use, nothing changes and the
command says a reboot is needed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := g.daemon(nopNotifier{})
			if err != nil {
				return err
			}
			return g.lockedExisting(d, wait, func(ctx context.Context, _ *store.Store, h daemon.Host) error {
				a, err := engine.Assess(h, g.cfg.Config)
				if err != nil {
					return err
				}
				f := a.Facts
				t := f.Store.Tree(f.Store.Current)
				if t == nil {
					return errors.New("nothing is current; run install first")
				}
				if fit := engine.Judge(*t, f.Kernel, g.cfg.Config.Modules); !fit.Matches {
					return fmt.Errorf("%s does not match kernel %s: %s", t.Path, f.Kernel.Release, fit.Problem)
				}
				if _, err := d.Activate(ctx, a, t.Path); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "activated %s\n", t.Path)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for another nvidia-driverd holding the store")
	return cmd
}

// metrics gives the daemon its metrics when metrics-addr or
// metrics-textfile asks for them, and serves them until ctx ends. Metrics
// that cannot be served (the port is taken, the textfile directory is
// missing) are logged as errors but never keep the driver from being
// activated and kubelet from starting.
func (g *globals) metrics(ctx context.Context, d *daemon.Daemon) *metrics.Server {
	c := g.cfg.Config
	if c.MetricsAddr == "" && c.MetricsTextfile == "" {
		return nil
	}
	d.Metrics = metrics.New()
	if c.MetricsTextfile != "" {
		p, err := hostPath(g.root, c.MetricsTextfile)
		if err == nil {
			err = d.Metrics.SetTextfile(p, g.log)
		}
		if err != nil {
			g.log.Error("metrics textfile", zap.Error(err))
		}
	}
	srv, err := d.Metrics.Serve(ctx, c.MetricsAddr, g.log) // logs the address
	if err != nil {
		g.log.Error("metrics not served", zap.Error(err))
		return nil
	}
	return srv
}

func newRunCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "Run the daemon (systemd Type=notify)",
		Long: `Reconcile the host, then stay up: plan, fetch and install when needed,
activate, and send READY=1 to systemd only once the driver is usable, with
STATUS= progress meanwhile (download progress included). SIGHUP
(systemctl reload) reads the configuration file again and re-checks: a new
driver-version is fetched and replaces the running driver, unless a
process holds the GPU (it is named, and the running driver stays). SIGTERM
stops, leaving the driver loaded.

When the driver cannot be made usable, failure-policy decides: fail exits
non-zero so units that Require= this one (kubelet) do not start;
keep-previous activates the previous tree if it matches the kernel, and
otherwise reports "degraded" in STATUS= and stays up. A freshly installed
tree that fails to activate is rolled back and its image is not retried.

With prefetch (on by default), the daemon then follows what the next boot
runs: update_engine's staged update on Flatcar and CoreOS, newly installed
kernels elsewhere when tag-template names .KernelRelease. It fetches the
driver for it into the store ahead of the reboot, without switching
current or loading anything, and retries failures with a backoff; after
the reboot the tree is found and switched to without a download. 'status'
shows the latest prefetch.

Metrics (off by default): metrics-addr serves Prometheus metrics on
/metrics and readiness on /healthz; metrics-textfile writes them for
node_exporter's textfile collector after every change.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer cancel()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)

			d, err := g.daemon(systemd.NewNotifier(true))
			if err != nil {
				return err
			}
			if u, ok := d.Units.(*systemd.Units); ok {
				defer u.Close()
			}
			// A reload reads the file again (flags and environment stay
			// as they were at start).
			d.LoadConfig = func() (config.Config, error) {
				l, err := config.Load(g.src)
				if err != nil {
					return config.Config{}, err
				}
				for _, w := range l.Warnings {
					g.log.Warn(w)
				}
				return l.Config, nil
			}
			g.followUpdates(d) // used only while prefetch is on, which a reload may turn on
			srv := g.metrics(ctx, d)
			err = d.Run(ctx, hup)
			cancel() // stops the metrics server
			if werr := srv.Wait(); werr != nil {
				g.log.Warn("metrics server", zap.Error(werr))
			}
			return err
		},
	}
}

func newDeactivateCommand(g *globals) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "deactivate",
		Short: "Stop using the driver: stop persistenced, unload modules, remove overlays",
		Long: `Undo 'activate': stop nvidia-persistenced, unload the driver's modules in
reverse dependency order, detach the library and binary overlays (or remove
the ld.so.conf.d drop-in) and rerun ldconfig. The store is left as it is.
When something still uses the GPU, nothing is unloaded and the command says
so. Stop nvidia-driverd.service first, or it will activate again on reload.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := g.daemon(nopNotifier{})
			if err != nil {
				return err
			}
			return g.lockedExisting(d, wait, func(ctx context.Context, _ *store.Store, h daemon.Host) error {
				act, err := d.Deactivate(ctx, h)
				for _, m := range act.Unloaded {
					fmt.Fprintf(g.stdout, "unloaded %s\n", m)
				}
				for _, p := range act.Libs.Detached {
					fmt.Fprintf(g.stdout, "detached %s\n", p)
				}
				if act.Libs.Removed != "" {
					fmt.Fprintf(g.stdout, "removed %s\n", act.Libs.Removed)
				}
				return err
			})
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for another nvidia-driverd holding the store")
	return cmd
}
