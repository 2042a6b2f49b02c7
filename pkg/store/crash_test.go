package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Environment of TestCrashHelper: the step to die at, the root of the
// store and the name of the crash case to install.
const (
	crashStepEnv = "NVIDIA_DRIVERD_TEST_CRASH_STEP"
	crashRootEnv = "NVIDIA_DRIVERD_TEST_CRASH_ROOT"
	crashCaseEnv = "NVIDIA_DRIVERD_TEST_CRASH_CASE"
)

// stepUnpacking is the tests' own step: the new tree is half written.
const stepUnpacking = "unpacking"

// release is one image installed into the store.
type release struct {
	driver, osVersion, digest string
	at                        time.Time
}

func (r release) path() string { return filepath.Join(storeDir, r.driver, r.osVersion) }

// The trees every crash case starts from: current is old, previous older.
func setupReleases() (older, old release) {
	return release{"550.54.14", "3602.2.0", "sha256:older", t0},
		release{"550.54.14", "3760.2.0", "sha256:old", t0.Add(time.Hour)}
}

// crashCase is an install over the setup, interrupted at each of steps.
type crashCase struct {
	name      string
	next      release
	steps     []string
	switched  []string          // steps after which the current tree holds next
	leftovers []string          // steps after which Clean finds something to remove
	converged map[string]string // tree path -> digest, once a rerun is done
	previous  string            // what `previous` names once a rerun is done
	lands     string            // where next's tree lands, when not next.path()
}

// landsAt is where the case's new tree lands.
func (c crashCase) landsAt() string {
	if c.lands != "" {
		return c.lands
	}
	return c.next.path()
}

func crashCases() []crashCase {
	_, old := setupReleases()
	next := release{"550.54.14", "3815.2.0", "sha256:new", t0.Add(2 * time.Hour)}
	rebuilt := release{old.driver, old.osVersion, "sha256:rebuilt", t0.Add(2 * time.Hour)}
	return []crashCase{
		{
			name: "installing a new tree",
			next: next,
			steps: []string{StepStaged, stepUnpacking, StepMetaWritten, StepSynced, StepRenamed, StepCommitted,
				StepPreviousTemp, StepPreviousLinked, StepCurrentTemp, StepCurrentLinked, StepGCMoved},
			switched: []string{StepCurrentLinked, StepGCMoved},
			leftovers: []string{StepStaged, stepUnpacking, StepMetaWritten, StepSynced,
				StepPreviousTemp, StepCurrentTemp, StepGCMoved},
			converged: map[string]string{old.path(): old.digest, next.path(): next.digest}, // older is collected
			previous:  old.path(),
		},
		{
			// The running driver's tree is never changed in place: the
			// new image lands beside it and a switch moves current.
			name:  "a new image for the current tree's name",
			next:  rebuilt,
			lands: rebuilt.path() + "-new",
			steps: []string{StepStaged, stepUnpacking, StepMetaWritten, StepSynced, StepRenamed, StepCommitted,
				StepPreviousTemp, StepPreviousLinked, StepCurrentTemp, StepCurrentLinked, StepGCMoved},
			switched: []string{StepCurrentLinked, StepGCMoved},
			leftovers: []string{StepStaged, stepUnpacking, StepMetaWritten, StepSynced,
				StepPreviousTemp, StepCurrentTemp, StepGCMoved},
			converged: map[string]string{old.path(): old.digest, rebuilt.path() + "-new": rebuilt.digest},
			previous:  old.path(),
		},
	}
}

// fullInstall does what the daemon does to install r: lock, clean, stage,
// unpack (calling midway halfway), commit, switch and collect, keeping one
// tree besides current and previous.
func fullInstall(ctx context.Context, s *Store, r release, midway func()) (err error) {
	l, err := s.Lock(ctx, false)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, l.Unlock()) }()
	if _, err := s.Clean(); err != nil {
		return err
	}
	st, err := s.Stage(r.driver + "-" + r.osVersion)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, st.Discard()) }()
	if err := writeTree(st, r.digest, midway); err != nil {
		return err
	}
	tree, err := st.Commit(r.driver, r.osVersion, Meta{Digest: r.digest, InstalledAt: r.at})
	if err != nil {
		return err
	}
	if _, err := s.Switch(tree); err != nil {
		return err
	}
	_, err = s.GC(1)
	return err
}

func TestCrash(t *testing.T) {
	for _, c := range crashCases() {
		t.Run(c.name, func(t *testing.T) {
			for _, step := range c.steps {
				// Not parallel: a flock is shared with any child forked
				// while it is held, so another subtest's fork+exec of the
				// helper could briefly hold this one's lock.
				t.Run(fmt.Sprintf("a crash at %s leaves a whole tree current and a rerun converges", step), func(t *testing.T) {
					root := t.TempDir()
					older, old := setupReleases()
					s := openStore(t, root)
					must(t, fullInstall(t.Context(), s, older, nil))
					must(t, fullInstall(t.Context(), s, old, nil))

					crash(t, root, c.name, step)
					checkCrashed(t, root, c, step)

					must(t, fullInstall(t.Context(), openStore(t, root), c.next, nil))
					checkConverged(t, root, c)
				})
			}
		})
	}
}

// crash runs TestCrashHelper to install case name over the store under
// root, and fails t unless the helper died by SIGKILL at step.
func crash(t *testing.T, root, name, step string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashStepEnv+"="+step, crashRootEnv+"="+root, crashCaseEnv+"="+name)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("the helper was not killed: %v\n%s", err, out)
	}
	ws, ok := exit.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the helper ended with %v, not SIGKILL:\n%s", err, out)
	}
}

// checkCrashed takes the lock (the dead helper's lock is gone with it),
// cleans the store and checks that it holds whole trees only, with the old
// tree or the new one current as step implies, and no leftovers.
func checkCrashed(t *testing.T, root string, c crashCase, step string) {
	t.Helper()
	s := openStore(t, root)
	l, err := s.Lock(t.Context(), false)
	must(t, err)
	removed, err := s.Clean()
	must(t, err)
	must(t, l.Unlock())
	if slices.Contains(c.leftovers, step) != (len(removed) > 0) {
		t.Errorf("Clean removed %q", removed)
	}

	older, old := setupReleases()
	allowed := map[string][]string{older.path(): {older.digest}, old.path(): {old.digest}}
	allowed[c.landsAt()] = append(allowed[c.landsAt()], c.next.digest)

	inv := scan(t, root)
	checkTrees(t, root, inv, allowed)
	checkNoLeftovers(t, root, inv)
	if inv.Tree(old.path()) == nil {
		t.Errorf("the current tree %s is gone", old.path())
	}
	digest, _ := wholeTree(root, inv.Current)
	if (digest == c.next.digest) != slices.Contains(c.switched, step) {
		t.Errorf("current %s holds %s", inv.Current, digest)
	}
	switch {
	case inv.Current == c.landsAt() && c.landsAt() != old.path():
		if inv.Previous != old.path() {
			t.Errorf("current is the new tree but previous is %q", inv.Previous)
		}
	case inv.Current == old.path():
		if inv.Previous != older.path() && inv.Previous != old.path() {
			t.Errorf("current is the old tree but previous is %q", inv.Previous)
		}
	default:
		t.Errorf("current is %q", inv.Current)
	}
}

// checkConverged checks the store after a rerun of the install.
func checkConverged(t *testing.T, root string, c crashCase) {
	t.Helper()
	inv := scan(t, root)
	allowed := map[string][]string{}
	for p, d := range c.converged {
		allowed[p] = []string{d}
	}
	checkTrees(t, root, inv, allowed)
	checkNoLeftovers(t, root, inv)
	if len(inv.Trees) != len(c.converged) {
		t.Errorf("trees %q, want those of %v", treePaths(inv), c.converged)
	}
	if inv.Current != c.landsAt() || inv.Previous != c.previous {
		t.Errorf("current %q previous %q, want %q and %q", inv.Current, inv.Previous, c.landsAt(), c.previous)
	}
}

// checkTrees checks that every tree is whole and holds one of the images
// allowed at its path.
func checkTrees(t *testing.T, root string, inv Inventory, allowed map[string][]string) {
	t.Helper()
	for _, tr := range inv.Trees {
		digest, err := wholeTree(root, tr.Path)
		if err != nil {
			t.Errorf("%s is not a whole tree: %v", tr.Path, err)
			continue
		}
		if !slices.Contains(allowed[tr.Path], digest) {
			t.Errorf("%s holds %s, want one of %q", tr.Path, digest, allowed[tr.Path])
		}
	}
}

// checkNoLeftovers checks that the store holds no staging entries, no
// temporary links and nothing Scan finds odd.
func checkNoLeftovers(t *testing.T, root string, inv Inventory) {
	t.Helper()
	if len(inv.Staging) != 0 || len(inv.Problems) != 0 {
		t.Errorf("staging %q, problems %q", inv.Staging, inv.Problems)
	}
	entries, err := os.ReadDir(filepath.Join(root, storeDir))
	must(t, err)
	for _, e := range entries {
		if strings.Contains(e.Name(), linkTempInfix) {
			t.Errorf("left %s in the store", e.Name())
		}
	}
}

// TestCrashHelper is the process TestCrash kills: it installs the case
// named by $NVIDIA_DRIVERD_TEST_CRASH_CASE into the store under
// $NVIDIA_DRIVERD_TEST_CRASH_ROOT and sends itself SIGKILL at step
// $NVIDIA_DRIVERD_TEST_CRASH_STEP.
func TestCrashHelper(t *testing.T) {
	step := os.Getenv(crashStepEnv)
	if step == "" {
		t.Skip("run by TestCrash")
	}
	var next *release
	for _, c := range crashCases() {
		if c.name == os.Getenv(crashCaseEnv) {
			next = &c.next
		}
	}
	if next == nil {
		t.Fatalf("no crash case %q", os.Getenv(crashCaseEnv))
	}
	die := func(at string) {
		if at == step {
			if err := syscall.Kill(os.Getpid(), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			panic("alive after SIGKILL") // kill(2) delivers a signal to its caller before returning
		}
	}
	s := openStore(t, os.Getenv(crashRootEnv), WithHook(die))
	must(t, fullInstall(context.Background(), s, *next, func() { die(stepUnpacking) }))
	t.Fatalf("the install ended without reaching step %s", step)
}
