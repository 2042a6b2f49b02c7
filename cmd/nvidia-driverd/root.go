package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
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
	src config.Sources // where cfg came from, to read it again on a reload
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
			if cmd.HasSubCommands() {
				// A command that only groups others prints its help
				// and needs no configuration.
				return nil
			}
			return g.setup(cmd)
		},
	}
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	cmd.SetUsageFunc(usage)

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
		newForgetCommand(g),
		newPublishCommand(g),
		newMatrixCommand(g),
		newInstallUnitsCommand(g),
		newCDICommand(g),
		newCDIHookCommand(),
		newConfigCommand(g),
		newVersionCommand(g),
	)
	// cobra adds its help and completion commands when it runs; add them
	// now so that the walk below covers them too.
	cmd.InitDefaultHelpCmd()
	cmd.InitDefaultCompletionCmd()
	for _, sub := range cmd.Commands() {
		if sub.Name() == "help" {
			sub.Args = helpTopic
		}
	}
	usageErrors(cmd)
	return cmd
}

// usageErrors makes cmd and every command under it report wrong arguments
// (an unknown command, too many or too few arguments) as usage errors,
// which exit 2 like bad flags, and leaves printing errors to main.
func usageErrors(cmd *cobra.Command) {
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	check := cmd.Args
	if cmd.HasSubCommands() && !cmd.Runnable() {
		// cobra prints the help of a command that only groups others
		// whatever its arguments, and exits 0. Running it instead makes
		// cobra check its arguments: one that is not a subcommand is an
		// error, none prints the help as before.
		check = unknownCommand
		cmd.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	}
	if check == nil {
		check = cobra.ArbitraryArgs
	}
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
	for _, sub := range cmd.Commands() {
		usageErrors(sub)
	}
}

// unknownCommand is the argument check of a command that only groups
// others: any argument names a subcommand that does not exist.
func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 && !cmd.DisableSuggestions {
		for i := range s {
			s[i] = strconv.Quote(s[i])
		}
		msg += "; did you mean " + strings.Join(s, " or ") + "?"
	}
	return errors.New(msg)
}

// helpTopic is the argument check of the help command: the arguments must
// name a command.
func helpTopic(cmd *cobra.Command, args []string) error {
	topic, rest, err := cmd.Root().Find(args)
	if err != nil {
		return err
	}
	return unknownCommand(topic, rest)
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
	} else if src.File, err = hostPath(g.root, config.DefaultFile); err != nil {
		return usageError{err}
	}
	g.cfg, err = config.Load(src)
	if err != nil {
		return usageError{err}
	}
	g.src = src
	for _, w := range g.cfg.Warnings {
		g.log.Warn(w)
	}
	return nil
}

// hostPath resolves host path p inside the host tree at root, for the
// few files a command opens itself (the config file, the metrics
// textfile, the units it installs).
func hostPath(root, p string) (string, error) {
	host, err := hostfs.Open(root)
	if err != nil {
		return "", err
	}
	defer host.Close()
	return host.Path(p)
}

// usage writes a command's usage: its own flags, then the global ones in
// two groups (the three of the command line, and one flag per setting,
// listed in full only by the root's help so that no command repeats
// them).
func usage(c *cobra.Command) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage:\n  %s\n", c.UseLine())
	if c.HasAvailableSubCommands() {
		fmt.Fprintf(&b, "  %s [command]\n\nCommands:\n", c.CommandPath())
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() || sub.Name() == "help" {
				fmt.Fprintf(&b, "  %-14s %s\n", sub.Name(), sub.Short)
			}
		}
	}
	var own, global, settings pflag.FlagSet
	c.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) { own.AddFlag(f) })
	c.InheritedFlags().VisitAll(func(f *pflag.Flag) { pick(&global, &settings, f) })
	if c == c.Root() {
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { pick(&global, &settings, f) })
	}
	if own.HasFlags() {
		fmt.Fprintf(&b, "\nFlags:\n%s", own.FlagUsages())
	}
	if global.HasFlags() {
		fmt.Fprintf(&b, "\nGlobal flags:\n%s", global.FlagUsages())
	}
	switch {
	case settings.HasFlags() && c == c.Root():
		fmt.Fprintf(&b, "\nSettings (a flag beats NVIDIA_DRIVERD_<KEY>, which beats the config file):\n%s", settings.FlagUsages())
	case settings.HasFlags():
		fmt.Fprintf(&b, "\nEvery setting is a flag too, --<key> VALUE: 'nvidia-driverd --help' lists them.\n")
	}
	if c.HasAvailableSubCommands() {
		fmt.Fprintf(&b, "\nUse \"%s [command] --help\" for more about a command.\n", c.CommandPath())
	}
	_, err := io.WriteString(c.OutOrStderr(), b.String())
	return err
}

func pick(global, settings *pflag.FlagSet, f *pflag.Flag) {
	if _, ok := f.Annotations[config.SettingAnnotation]; ok {
		settings.AddFlag(f)
	} else if global.Lookup(f.Name) == nil {
		global.AddFlag(f)
	}
}
