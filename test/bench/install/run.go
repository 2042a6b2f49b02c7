package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// spawnEnv marks the harness re-executed as a spawner; see spawn.
const spawnEnv = "NVIDIA_DRIVERD_BENCH_SPAWN"

// variant is one way of installing the image, run as a child process.
type variant struct {
	name string
	// command returns the command line for run i; it writes the tree
	// into out.
	command func(i int) (args []string, out string)
	// installed returns the installed tree's directory after a run.
	installed func(out string) (string, error)
	// isBaseline marks the variant speed-ups are relative to.
	isBaseline bool
	// checkRSS marks the variants whose peak RSS has a target.
	checkRSS bool

	samples []sample
}

// sample is what one run measured.
type sample struct {
	wall time.Duration
	rss  int64 // peak resident set size in bytes, of the process or (for a shell) the largest of its children
}

// measure runs the command line args and returns its wall time and peak
// RSS. Output goes to a buffer shown when the command fails or verbose is
// set.
//
// The command runs under a spawner, this program re-executed (see spawn),
// because Linux charges a child started with vfork, as Go starts them,
// the RSS its parent had at exec: run directly from the harness, which
// holds both images in memory, every child would report the harness's
// size. The spawner is small (about 8 MiB, a floor under every reported
// peak), and it times the child alone.
func measure(ctx context.Context, args []string, verbose bool) (sample, error) {
	self, err := os.Executable()
	if err != nil {
		return sample{}, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return sample{}, err
	}
	defer pr.Close()
	sp := exec.CommandContext(ctx, self, args...)
	sp.Env = append(os.Environ(), spawnEnv+"=1")
	var out bytes.Buffer
	sp.Stdout, sp.Stderr = &out, &out
	sp.ExtraFiles = []*os.File{pw}
	err = sp.Start()
	pw.Close()
	var report []byte
	if err == nil {
		report, err = io.ReadAll(io.LimitReader(pr, 4096))
		if werr := sp.Wait(); err == nil {
			err = werr
		}
	}
	if verbose || err != nil {
		os.Stderr.Write(out.Bytes())
	}
	if err != nil {
		return sample{}, fmt.Errorf("%s: %w", strings.Join(args, " "), err)
	}
	var wallNS, rssKiB int64
	if _, err := fmt.Sscanf(string(report), "%d %d", &wallNS, &rssKiB); err != nil {
		return sample{}, fmt.Errorf("%s: spawner report %q: %w", strings.Join(args, " "), report, err)
	}
	return sample{wall: time.Duration(wallNS), rss: rssKiB << 10}, nil
}

// spawn is the spawner: it runs args, passing its output through, and
// writes "<wall ns> <peak RSS KiB>" to file descriptor 3. ru_maxrss of a
// child reaped by wait4 is the larger of the child's own and that of its
// own reaped children, so for a shell it is the largest process of its
// pipeline. It exits 1, reporting nothing, when the child fails.
func spawn(args []string) int {
	// The report descriptor is the spawner's, not the child's.
	syscall.CloseOnExec(3)
	report := os.NewFile(3, "report")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	// The child goes when the spawner does (the harness interrupted).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		fmt.Fprintf(os.Stderr, "spawn: %v\n", err)
		return 1
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		fmt.Fprintln(os.Stderr, "spawn: no rusage")
		return 1
	}
	// ru_maxrss is in KiB on Linux.
	if _, err := fmt.Fprintf(report, "%d %d\n", wall.Nanoseconds(), ru.Maxrss); err != nil {
		fmt.Fprintf(os.Stderr, "spawn: %v\n", err)
		return 1
	}
	return 0
}

// runAll runs every variant runs times, rotating the order each round so
// that none always runs first or after the same other, on a fresh output
// directory each time, with everything earlier flushed to disk before each
// run so that no run pays for another's writes. want is the generated
// tree every run must reproduce.
func runAll(ctx context.Context, variants []*variant, runs int, want []treeEntry, verbose bool) error {
	for round := range runs {
		for k := range variants {
			v := variants[(round+k)%len(variants)]
			args, out := v.command(round)
			if err := os.RemoveAll(out); err != nil {
				return err
			}
			unix.Sync()
			s, err := measure(ctx, args, verbose)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", v.name, round+1, err)
			}
			dir, err := v.installed(out)
			if err == nil {
				err = sameTree(want, dir)
			}
			if err != nil {
				return fmt.Errorf("%s, run %d: installed tree: %w", v.name, round+1, err)
			}
			if err := os.RemoveAll(out); err != nil {
				return err
			}
			v.samples = append(v.samples, s)
			fmt.Fprintf(os.Stderr, "  run %d/%d  %-44s %6.2f s  %6.1f MiB\n", round+1, runs, v.name, s.wall.Seconds(), float64(s.rss)/mib)
		}
	}
	unix.Sync()
	return nil
}

// stats are the summary of a variant's samples.
type stats struct {
	median, min, max time.Duration
	medianRSS        int64
	maxRSS           int64
}

func summarize(samples []sample) stats {
	walls := make([]time.Duration, len(samples))
	rss := make([]int64, len(samples))
	for i, s := range samples {
		walls[i], rss[i] = s.wall, s.rss
	}
	slices.Sort(walls)
	slices.Sort(rss)
	return stats{
		median: median(walls), min: walls[0], max: walls[len(walls)-1],
		medianRSS: median(rss), maxRSS: rss[len(rss)-1],
	}
}

// median of a sorted, non-empty slice; the mean of the middle two for an
// even length.
func median[T time.Duration | int64](sorted []T) T {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// driverdVariant installs ref with nvidia-driverd into the sample host's
// store.
func driverdVariant(name, bin, host, storeDir, repo string) *variant {
	return &variant{
		name: name, checkRSS: true,
		command: func(int) ([]string, string) {
			return []string{bin, "--root", host, "--repository", repo, "install", "--no-activate"}, filepath.Join(host, storeDir)
		},
		installed: func(out string) (string, error) {
			// current names the tree install switched to.
			tree, err := filepath.EvalSymlinks(filepath.Join(out, "current"))
			if err != nil {
				return "", fmt.Errorf("no current tree: %w", err)
			}
			return tree, nil
		},
	}
}

// craneVariant exports ref with crane into a fresh directory under work,
// extracts it with tar and syncs: the tree durable on disk, as install
// leaves it.
func craneVariant(name, crane, work, ref string) *variant {
	return &variant{
		name: name, isBaseline: true,
		command: func(i int) ([]string, string) {
			out := filepath.Join(work, fmt.Sprintf("export-%d", i))
			script := `set -o pipefail; mkdir -p "$3" && "$1" export --insecure "$2" - | tar -x -C "$3" && sync`
			return []string{"bash", "-c", script, "bash", crane, ref, out}, out
		},
		installed: func(out string) (string, error) { return out, nil },
	}
}
