package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
)

// globals are the settings every command shares, filled from flags before
// a command runs.
type globals struct {
	root       string
	configFile string
	logLevel   string
	environ    []string
	stdout     io.Writer
	stderr     io.Writer

	cfg config.Loaded
	log *zap.Logger
}

func newRootCommand(stdout, stderr io.Writer, environ []string) *cobra.Command {
	g := &globals{stdout: stdout, stderr: stderr, environ: environ}
	cmd := &cobra.Command{
		Use:   "nvidia-driverd",
		Short: "Keep the NVIDIA driver matched to the running kernel",
		Long: `nvidia-driverd keeps the NVIDIA GPU driver working on hosts that update their
kernel unattended (Flatcar Container Linux, CoreOS Container Linux, generic
distributions). It compares the installed driver's kernel modules with the
running kernel, fetches a prebuilt driver image for exactly this OS version
from an OCI registry when they differ, installs it atomically and loads it.

Every setting can come from the config file, an environment variable
(NVIDIA_DRIVERD_<KEY>) or a flag; a flag beats the environment, which beats
the file.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.setup(cmd)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	pf := cmd.PersistentFlags()
	pf.StringVar(&g.root, "root", "/", "host root directory every host path is taken under (/rootfs in a container)")
	pf.StringVar(&g.configFile, "config", "", "config file (default "+config.DefaultFile+", optional)")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	config.BindFlags(pf)

	cmd.AddCommand(
		newRunCommand(g),
		newStatusCommand(g),
		newPlanCommand(g),
		newFetchCommand(g),
		newInstallCommand(g),
		newActivateCommand(g),
		newDeactivateCommand(g),
		newGCCommand(g),
		newRollbackCommand(g),
		newPublishCommand(g),
		newMatrixCommand(g),
		newInstallUnitsCommand(g),
		newCDICommand(g),
		newCDIHookCommand(),
		newConfigCommand(g),
		newVersionCommand(g),
	)
	return cmd
}

// setup validates the global flags, loads the configuration and builds the
// logger.
func (g *globals) setup(cmd *cobra.Command) error {
	if !filepath.IsAbs(g.root) {
		return usageError{fmt.Errorf("--root %q: want an absolute path", g.root)}
	}
	g.root = filepath.Clean(g.root)
	log, err := newLogger(g.logLevel, g.stderr)
	if err != nil {
		return usageError{err}
	}
	g.log = log

	// The default config file is a host file, read under --root, so that a
	// container inspecting /rootfs uses the host's configuration. A file
	// named with --config is taken as given.
	src := config.Sources{Environ: g.environ, Flags: cmd.Flags()}
	if g.configFile != "" {
		src.File, src.FileRequired = g.configFile, true
	} else {
		src.File = filepath.Join(g.root, config.DefaultFile)
	}
	g.cfg, err = config.Load(src)
	if err != nil {
		return usageError{err}
	}
	return nil
}
