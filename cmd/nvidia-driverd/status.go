package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
)

func newStatusCommand(g *globals) *cobra.Command {
	var asJSON, ready bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what is installed, loaded and planned",
		Long: `Show the host as nvidia-driverd sees it: OS, running kernel and its vermagic,
NVIDIA GPUs, loaded driver modules, installed driver trees and whether each
matches the running kernel, the latest prefetch for a staged OS update or a
new kernel, and what 'run' would do now.

Exit status: 0 when the host could be read, 1 when it could not, 2 for bad
flags or configuration. With --ready, 3 when the wanted driver is not the
one running (the plan is anything but none): a readiness probe.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.report()
			if err != nil {
				return err
			}
			if asJSON {
				err = writeJSON(g.stdout, r)
			} else {
				err = writeStatus(g.stdout, r)
			}
			if err == nil && ready && r.Plan.Action != engine.ActionNone {
				err = notReady{why: string(r.Plan.Action) + ": " + r.Plan.Reason}
			}
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (field names are stable)")
	cmd.Flags().BoolVar(&ready, "ready", false, "exit 3 unless the wanted driver is the one running (for readiness probes)")
	return cmd
}

func newPlanCommand(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show what 'run' would do now, doing nothing",
		Long: `Decide what 'run' would do on this host now and print it, changing nothing.
The action is one of: none, load, install, switch, refuse, no-gpu.

Exit status: 0 when a decision was made (refuse included), 1 when the host
could not be read, 2 for bad flags or configuration.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.report()
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(g.stdout, r.Plan)
			}
			return writePlan(g.stdout, r.Plan)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// report assesses the host once and describes it.
func (g *globals) report() (engine.Report, error) {
	d, err := g.daemon(nopNotifier{})
	if err != nil {
		return engine.Report{}, err
	}
	var r engine.Report
	err = d.Look(func(a engine.Assessment) error {
		g.log.Debug("planned", zap.String("action", string(a.Decision.Action)), zap.String("reason", a.Decision.Reason),
			zap.String("kernel", a.Facts.Kernel.Release), zap.String("root", g.root))
		r = a.Report(g.cfg.Config)
		return nil
	})
	return r, err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func writeStatus(w io.Writer, r engine.Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	line := func(label, format string, a ...any) {
		fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{label}, a...)...)
	}

	osName := r.OS.Name
	if osName == "" {
		osName = r.OS.ID + " " + r.OS.Version
	}
	line("OS", "%s (%s, version %s)", osName, r.OS.Family, r.OS.Version)
	if r.Kernel.FlagsKnown {
		line("Kernel", "%s (vermagic %q)", r.Kernel.Release, r.Kernel.Vermagic)
	} else {
		line("Kernel", "%s (vermagic flags unknown: no in-tree module found)", r.Kernel.Release)
	}
	if len(r.GPUs) == 0 {
		line("GPUs", "none found")
	}
	for i, gpu := range r.GPUs {
		label := ""
		if i == 0 {
			label = "GPUs"
		}
		bound := "no driver bound"
		if gpu.Driver != "" {
			bound = "driver " + gpu.Driver
		}
		line(label, "%s device %s (%s)", gpu.Address, gpu.Device, bound)
	}
	wanted := r.Driver.Version
	if wanted == "" {
		wanted = "not set"
	}
	if r.Driver.FromCurrent {
		wanted += " (driver-version is unset: the current tree's)"
	}
	line("Wanted", "driver %s", wanted)
	if len(r.Loaded) == 0 {
		line("Loaded", "no driver module")
	}
	names := make([]string, 0, len(r.Loaded))
	for n := range r.Loaded {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, n := range names {
		label := ""
		if i == 0 {
			label = "Loaded"
		}
		m := r.Loaded[n]
		line(label, "%s %s (used by %d)", n, m.Version, m.Refcnt)
	}
	if r.Current == nil {
		line("Current", "none")
	} else {
		line("Current", "%s", treeLine(*r.Current))
	}
	for i, t := range r.Installed {
		label := ""
		if i == 0 {
			label = "Installed"
		}
		line(label, "%s", treeLine(t))
	}
	for i, p := range r.Problems {
		label := ""
		if i == 0 {
			label = "Problems"
		}
		line(label, "%s", p)
	}
	if p := r.Prefetch; p != nil {
		line("Prefetch", "%s", p.Summary)
		if p.Tree != "" {
			line("", "into %s", p.Tree)
		}
	}
	for i, f := range r.Failed {
		label := ""
		if i == 0 {
			label = "Failed"
		}
		line(label, "%s at %s: %s", f.Digest, f.At.Format(time.RFC3339), f.Reason)
		if i == len(r.Failed)-1 {
			line("", "not tried again; 'nvidia-driverd forget DIGEST' once the cause is fixed")
		}
	}
	line("Plan", "%s: %s", r.Plan.Action, r.Plan.Reason)
	if r.Plan.Image != "" {
		line("", "fetch %s into %s", r.Plan.Image, r.Plan.Tree)
	}
	for _, c := range r.Plan.Cleanup {
		line("", "remove %s (left by an interrupted install)", c)
	}
	return tw.Flush()
}

func treeLine(t engine.TreeReport) string {
	size := ""
	if t.Files > 0 {
		size = fmt.Sprintf(" (%d files, %s)", t.Files, sized(float64(t.Bytes), ""))
	}
	if t.MatchesKernel {
		return fmt.Sprintf("%s%s  matches the running kernel", t.Path, size)
	}
	return fmt.Sprintf("%s%s  does not match: %s", t.Path, size, t.Problem)
}

func writePlan(w io.Writer, d engine.Decision) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s\n", d.Action, d.Reason)
	if d.Image != "" {
		fmt.Fprintf(&b, "  fetch   %s\n", d.Image)
	}
	if d.Tree != "" {
		fmt.Fprintf(&b, "  tree    %s\n", d.Tree)
	}
	for _, c := range d.Cleanup {
		fmt.Fprintf(&b, "  remove  %s (left by an interrupted install)\n", c)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
