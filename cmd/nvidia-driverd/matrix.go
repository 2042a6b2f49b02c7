package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/feed"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
)

type matrixFlags struct {
	feeds, drivers           []string
	last, jobs               int
	arch, osID, kernelSuffix string
	asJSON                   bool
	timeout                  time.Duration
}

func newMatrixCommand(g *globals) *cobra.Command {
	var f matrixFlags
	cmd := &cobra.Command{
		Use:   "matrix --feed FILE|URL ... [--driver V ...] [--last N] [--arch A] [--json]",
		Short: "List the driver images Flatcar releases need that the registry lacks",
		Long: `Read Flatcar release feeds (https://www.flatcar.org/releases-json/releases-
<stable|beta|alpha|lts>.json, or local copies), keep the --last newest
releases of each channel built for --arch, pair each with every --driver,
render the tag with tag-template and ask the repository whether the image
exists. The combinations whose image is missing are printed: a table, or
with --json an array of objects (os_version, channel, kernel_release,
driver, tag, image) in feed, release (newest first) and driver order, for
a CI build matrix.

Releases without --arch or without a kernel in the feed are reported as
skipped on stderr. The kernel release is the feed's kernel version plus
--kernel-suffix ("6.6.54" -> "6.6.54-flatcar", as uname -r shows on
Flatcar).

The check reads the manifest from the repository itself, never a mirror,
honouring insecure-registries, credentials from the Docker config and
retries. Only "no such manifest" (404, MANIFEST_UNKNOWN, NAME_UNKNOWN)
counts as missing; any other failure is an error naming the registry.

Exit status: 0 when every combination was checked, whether or not some
are missing (an empty --json array means nothing to build); 1 when a feed
or the registry could not be read; 2 for bad flags.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.matrix(f)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&f.feeds, "feed", nil, "release feed: a file or an http(s) URL (repeatable, required)")
	fl.StringArrayVar(&f.drivers, "driver", nil, "driver version (repeatable; default: driver-version)")
	fl.IntVar(&f.last, "last", 3, "newest releases kept per channel")
	fl.StringVar(&f.arch, "arch", "amd64", "architecture: releases must be built for it, images must be for linux/<arch>")
	fl.StringVar(&f.osID, "os", "flatcar", "os-release ID, the tag template's .OSID")
	fl.StringVar(&f.kernelSuffix, "kernel-suffix", "-flatcar", "appended to the feed's kernel version to give the kernel release")
	fl.BoolVar(&f.asJSON, "json", false, "print a JSON array")
	fl.IntVar(&f.jobs, "jobs", 4, "registry checks run at once")
	fl.DurationVar(&f.timeout, "feed-timeout", time.Minute, "time limit for fetching one feed")
	return cmd
}

func (g *globals) matrix(f matrixFlags) error {
	cfg := g.cfg.Config
	if len(f.feeds) == 0 {
		return usageError{errors.New("--feed is required (a file or URL, e.g. " + feed.URL("stable") + ")")}
	}
	drivers := f.drivers
	if len(drivers) == 0 && cfg.DriverVersion != "" {
		drivers = []string{cfg.DriverVersion}
	}
	if len(drivers) == 0 {
		return usageError{errors.New("--driver is required (or set driver-version)")}
	}
	for _, d := range drivers {
		if !config.IsDriverVersion(d) {
			return usageError{fmt.Errorf("--driver %q: want a version such as 550.54.14", d)}
		}
	}
	if f.last < 1 {
		return usageError{fmt.Errorf("--last %d: want at least 1", f.last)}
	}
	if f.arch != "amd64" && f.arch != "arm64" {
		return usageError{fmt.Errorf("--arch %q: want amd64 or arm64", f.arch)}
	}
	if cfg.Repository == "" {
		return usageError{errors.New("no repository configured (--repository registry/repository)")}
	}
	tmpl, err := cfg.Template()
	if err != nil {
		return usageError{err}
	}
	opts, err := engine.SourceOptions(cfg)
	if err != nil {
		return usageError{err}
	}
	opts.Mirrors = nil // a mirror having the image does not put it in the repository
	opts.Platform = v1.Platform{OS: "linux", Architecture: f.arch}
	reg, err := source.NewRegistry(cfg.Repository, opts)
	if err != nil {
		return usageError{err}
	}

	ctx, cancel := signalContext()
	defer cancel()
	var releases []feed.Release
	for _, src := range f.feeds {
		fd, err := feed.Load(ctx, src, feed.LoadOptions{Timeout: f.timeout})
		if err != nil {
			return err
		}
		releases = append(releases, fd.Releases...)
	}
	kept, skipped := feed.Select(releases, f.arch, f.last)
	for _, s := range skipped {
		g.log.Warn("release skipped", zap.String("channel", s.Channel), zap.String("version", s.Version), zap.String("reason", s.Reason))
	}
	m := feed.Matrix{Template: tmpl, Repository: cfg.Repository, OSID: f.osID, KernelSuffix: f.kernelSuffix}
	combos, err := m.Combinations(kept, drivers)
	if err != nil {
		return err
	}
	missing, err := feed.Missing(ctx, reg, combos, f.jobs)
	if err != nil {
		return err
	}
	g.log.Info("matrix checked", zap.String("repository", cfg.Repository), zap.Int("releases", len(kept)),
		zap.Int("combinations", len(combos)), zap.Int("missing", len(missing)))

	if f.asJSON {
		if missing == nil {
			missing = []feed.Combination{}
		}
		out, err := json.MarshalIndent(missing, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(g.stdout, "%s\n", out)
		return err
	}
	if len(missing) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "OS-VERSION\tCHANNEL\tKERNEL\tDRIVER\tTAG")
	for _, c := range missing {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.OSVersion, c.Channel, c.KernelRelease, c.Driver, c.Tag)
	}
	return tw.Flush()
}
