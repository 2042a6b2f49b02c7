package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
	"golang.org/x/sys/unix"
)

// Staging is a directory under <store>/.staging where one tree is written
// before Commit moves it into place. Nothing in .staging is ever taken for
// a tree, so a crash while writing leaves only a leftover for Clean.
type Staging struct {
	s    *Store
	path string // host path
	done bool   // committed or discarded: the directory is no longer ours
}

// Stage creates a new empty staging directory
// <store>/.staging/<name>-<random> (mode 0755, the mode the tree will
// have) and returns it. name says what is staged, such as
// "550.54.14-3815.2.0". It returns an error when name is empty, holds a
// '/' or starts with '.', or when the directory cannot be created.
func (s *Store) Stage(name string) (*Staging, error) {
	if err := checkComponent("staging name", name); err != nil {
		return nil, fmt.Errorf("stage: %w", err)
	}
	if err := s.ensureStaging(); err != nil {
		return nil, fmt.Errorf("stage %s: %w", name, err)
	}
	st := &Staging{s: s, path: filepath.Join(s.stagingDir(), name+"-"+randomSuffix())}
	if err := s.mkdir(st.path, 0o755); err != nil {
		return nil, fmt.Errorf("stage %s: %w", name, err)
	}
	s.step(StepStaged)
	return st, nil
}

// Path returns the host path of the staging directory.
func (st *Staging) Path() string { return st.path }

// FSPath returns the real path of the staging directory on this machine.
func (st *Staging) FSPath() string { return st.s.fs(st.path) }

// Root opens the staging directory as an os.Root, so that an unpacker
// cannot write outside it whatever names an image holds. The caller
// closes the root. It returns an error when the directory cannot be
// opened, or when the staging was committed or discarded.
func (st *Staging) Root() (*os.Root, error) {
	if st.done {
		return nil, fmt.Errorf("open %s: staging already committed or discarded", st.path)
	}
	r, err := os.OpenRoot(st.FSPath())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", st.path, err)
	}
	return r, nil
}

// Tree reads the staged tree as Scan reads an installed one, for checking
// its modules before Commit: Path and module paths are host paths under
// .staging, and driver and osVersion are what the tree will be committed
// as. Unreadable modules and metadata are recorded in the Tree.
func (st *Staging) Tree(driver, osVersion string) Tree {
	return readTree(st.path, st.FSPath(), driver, osVersion)
}

// Commit makes the staged tree the installed tree
// <store>/<driver>/<osVersion> and returns its host path.
//
// It writes meta as the tree's MetaFile, makes everything durable with one
// syncfs(2), and renames the staged directory into place, fsyncing the
// directories whose entries changed. When a tree is already at the path:
//
//   - if its MetaFile records meta.Digest (not empty), that tree is kept,
//     the staged one discarded, and the path returned: a rerun after a
//     crash does not replace a whole tree with an identical one;
//   - otherwise the two are swapped with renameat2(RENAME_EXCHANGE), so
//     that the path never lacks a tree, and the old tree, now in
//     .staging, is removed at once; if that removal fails, Clean removes
//     it later.
//
// Removing a replaced tree while it is the lower directory of a mounted
// overlay (a tree that was current) does not disturb the kernel: files
// open or mapped from it stay valid until closed. But overlayfs leaves
// its view undefined when a lower directory changes underneath it, so
// the caller should mount the new tree again after replacing a mounted
// one.
//
// Commit returns an error, leaving the staging for Discard, when driver
// or osVersion is not a single path component (empty, holding '/',
// starting with '.'), when the staging was already committed or
// discarded, or when a step fails; in the last case the store holds
// either the old tree or the new one at the path, never part of one.
func (st *Staging) Commit(driver, osVersion string, meta Meta) (string, error) {
	s := st.s
	target, err := s.treePath(driver, osVersion)
	if err != nil {
		return "", fmt.Errorf("commit %s: %w", st.path, err)
	}
	if st.done {
		return "", fmt.Errorf("commit %s: staging already committed or discarded", st.path)
	}
	how, err := st.occupied(target, meta.Digest)
	if err != nil {
		return "", fmt.Errorf("commit %s: %w", target, err)
	}
	if how == exchange {
		// A tree in use (current or previous) is never changed under the
		// running driver or taken from a rollback: the new image gets a
		// name of its own, and only a switch moves current to it.
		live, err := s.linked()
		if err != nil {
			return "", fmt.Errorf("commit %s: %w", target, err)
		}
		if live[target] {
			if target, err = s.treePath(driver, osVersion+"-"+shortDigest(meta.Digest)); err != nil {
				return "", fmt.Errorf("commit %s: %w", st.path, err)
			}
			if how, err = st.occupied(target, meta.Digest); err != nil {
				return "", fmt.Errorf("commit %s: %w", target, err)
			}
			if how == exchange && live[target] {
				return "", fmt.Errorf("commit %s: a tree in use is there already", target)
			}
		}
	}
	if how == reuse {
		if err := st.Discard(); err != nil {
			return "", fmt.Errorf("commit %s: reuse the tree there: %w", target, err)
		}
		s.step(StepCommitted)
		return target, nil
	}
	if err := st.prepare(meta); err != nil {
		return "", fmt.Errorf("commit %s: %w", target, err)
	}
	if err := st.place(target, how == exchange); err != nil {
		return "", fmt.Errorf("commit %s: %w", target, err)
	}
	s.step(StepCommitted)
	_ = os.RemoveAll(st.FSPath()) // the old tree after an exchange; Clean retries a failure
	st.done = true
	return target, nil
}

// shortDigest is the first 12 hex digits of digest, "new" without one.
func shortDigest(digest string) string {
	_, hex, _ := strings.Cut(digest, ":")
	if len(hex) < 12 {
		return "new"
	}
	return hex[:12]
}

// prepare writes meta into the staged tree and makes the tree durable. It
// returns an error when either fails.
func (st *Staging) prepare(meta Meta) error {
	s := st.s
	if err := st.writeMeta(meta); err != nil {
		return err
	}
	s.step(StepMetaWritten)
	if err := s.syncFS(st.path); err != nil {
		return err
	}
	s.step(StepSynced)
	return nil
}

// writeMeta writes meta as the staged tree's MetaFile: into a temporary
// file, fsynced, then renamed over whatever the image put there (a rename
// replaces a symlink by that name rather than following it). It returns
// an error naming the file when any step fails.
func (st *Staging) writeMeta(meta Meta) error {
	p := filepath.Join(st.path, MetaFile)
	data, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if _, err := atomicfile.Replace(filepath.Join(st.FSPath(), MetaFile), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// How Commit places a tree at a path.
type placement int

const (
	move     placement = iota // nothing is there: rename the tree into place
	reuse                     // the same image is there: keep it
	exchange                  // another tree is there: swap them
)

// occupied says how to place a tree with digest at host path target,
// creating target's driver directory when missing. It returns an error
// when the driver directory cannot be made or synced, or when target
// exists and is not a directory.
func (st *Staging) occupied(target, digest string) (placement, error) {
	s := st.s
	if err := s.ensureDir(filepath.Dir(target), 0o755); err != nil {
		return move, err
	}
	// A driver directory created by an earlier, crashed run may not be
	// durable yet; syncing the store each time is cheap.
	if err := s.syncDir(s.dir); err != nil {
		return move, err
	}
	fi, err := os.Lstat(s.fs(target))
	if errors.Is(err, fs.ErrNotExist) {
		return move, nil
	}
	if err != nil {
		return move, fmt.Errorf("inspect %s: %w", target, err)
	}
	if !fi.IsDir() {
		return move, fmt.Errorf("inspect %s: exists and is not a directory", target)
	}
	if m, err := s.readMeta(target); err == nil && digest != "" && m.Digest == digest {
		return reuse, nil
	}
	return exchange, nil
}

// place renames the staged tree to host path target, or swaps it with the
// tree there when swap is set, then fsyncs both parent directories. After
// a swap the old tree is at the staging path. It returns an error when the
// rename or a sync fails.
func (st *Staging) place(target string, swap bool) error {
	s := st.s
	flags := uint(unix.RENAME_NOREPLACE)
	if swap {
		flags = unix.RENAME_EXCHANGE
	}
	if err := s.rename(st.path, target, flags); err != nil {
		return err
	}
	s.step(StepRenamed)
	if err := s.syncDir(filepath.Dir(target)); err != nil {
		return err
	}
	return s.syncDir(s.stagingDir())
}

// Discard removes the staging directory and what it holds. It returns nil
// when the staging was already committed or discarded, so that a deferred
// Discard is harmless, and an error naming the directory when it cannot
// be removed; Clean removes it later then.
func (st *Staging) Discard() error {
	if st.done {
		return nil
	}
	if err := os.RemoveAll(st.FSPath()); err != nil {
		return fmt.Errorf("discard %s: %w", st.path, err)
	}
	st.done = true
	return nil
}

// Clean removes what interrupted work left behind: every entry under
// <store>/.staging (trees being unpacked, trees swapped out or collected)
// and temporary `current`/`previous` links in the store. Call it with the
// lock held and before staging anything, as it removes staging
// directories in use. It returns the host paths removed, and an
// error naming the first path it could not read or remove, with the paths
// removed until then.
func (s *Store) Clean() ([]string, error) {
	var removed []string
	leftovers, err := s.leftovers()
	if err != nil {
		return nil, err
	}
	for _, p := range leftovers {
		if err := os.RemoveAll(s.fs(p)); err != nil {
			if filepath.Dir(p) == s.stagingDir() {
				err = fmt.Errorf("%w: %w", ErrStagingStuck, err)
			}
			return removed, fmt.Errorf("clean %s: %w", p, err)
		}
		removed = append(removed, p)
	}
	return removed, nil
}

// ErrStagingStuck is wrapped when Clean cannot remove an entry of the
// staging directory (an immutable file, a mount point in it); then
// SetAsideStaging lets installs go on.
var ErrStagingStuck = errors.New("a staging leftover cannot be removed")

// leftovers returns the host paths Clean removes. It returns an
// error when the store or its staging directory cannot be read.
func (s *Store) leftovers() ([]string, error) {
	var out []string
	entries, err := os.ReadDir(s.fs(s.stagingDir()))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("clean %s: %w", s.stagingDir(), err)
	}
	for _, e := range entries {
		out = append(out, filepath.Join(s.stagingDir(), e.Name()))
	}
	entries, err = os.ReadDir(s.fsDir)
	if err != nil {
		return nil, fmt.Errorf("clean %s: %w", s.dir, err)
	}
	for _, e := range entries {
		if isLinkTemp(e) {
			out = append(out, filepath.Join(s.dir, e.Name()))
		}
	}
	return out, nil
}

// isLinkTemp reports whether store entry e is a temporary link left by an
// interrupted Switch.
func isLinkTemp(e fs.DirEntry) bool {
	if e.Type()&fs.ModeSymlink == 0 {
		return false
	}
	return strings.HasPrefix(e.Name(), CurrentLink+linkTempInfix) ||
		strings.HasPrefix(e.Name(), PreviousLink+linkTempInfix)
}
