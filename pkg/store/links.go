package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrNoPrevious is wrapped by the error Rollback returns when there is no
// tree to go back to.
var ErrNoPrevious = errors.New("no previous tree")

// linkTempInfix joins a link's name and a random suffix in the name of
// the temporary link that is renamed over it.
const linkTempInfix = ".tmp-"

// Switch points `current` at the installed tree at host path tree and
// `previous` at the tree `current` pointed at before.
//
// When `current` already points at tree it changes nothing and returns
// changed false. Otherwise it sets `previous` first, when `current` named
// another installed tree, then `current`, and returns changed true. Each
// link is replaced atomically by renaming a new relative link over it,
// then the store directory is fsynced. A crash between the two leaves
// `current` on the old tree and `previous` pointing at that tree too,
// which is harmless: a rerun of Switch sets `current` and keeps that
// `previous`.
//
// It returns an error when tree is not an installed tree of the store
// (<store>/<driver>/<os-version>, a directory) or a link cannot be read or
// replaced.
func (s *Store) Switch(tree string) (changed bool, err error) {
	tree = filepath.Clean(tree)
	if err := s.checkTree(tree); err != nil {
		return false, fmt.Errorf("switch to %s: %w", tree, err)
	}
	cur, err := s.linkTarget(CurrentLink)
	if err != nil {
		return false, fmt.Errorf("switch to %s: %w", tree, err)
	}
	if cur == tree {
		return false, nil
	}
	if cur != "" && s.checkTree(cur) == nil {
		if err := s.setLink(PreviousLink, cur, StepPreviousTemp); err != nil {
			return false, fmt.Errorf("switch to %s: %w", tree, err)
		}
		s.step(StepPreviousLinked)
	}
	if err := s.setLink(CurrentLink, tree, StepCurrentTemp); err != nil {
		return false, fmt.Errorf("switch to %s: %w", tree, err)
	}
	s.step(StepCurrentLinked)
	return true, nil
}

// Rollback points `current` at the tree `previous` names and `previous`
// at the tree `current` named, and returns both host paths: from is ""
// when `current` named no installed tree, in which case `previous` is
// renamed to `current` and is gone afterwards. Both links change in one
// atomic renameat2(RENAME_EXCHANGE), so a crash leaves them either as
// they were or swapped.
//
// It returns an error wrapping ErrNoPrevious when there is no `previous`
// link or it names no installed tree, and an error when a link cannot be
// read or renamed.
func (s *Store) Rollback() (from, to string, err error) {
	to, err = s.linkTarget(PreviousLink)
	if err != nil {
		return "", "", fmt.Errorf("roll back: %w", err)
	}
	if to == "" {
		return "", "", fmt.Errorf("roll back: %w", ErrNoPrevious)
	}
	if err := s.checkTree(to); err != nil {
		return "", "", fmt.Errorf("roll back to %s: %w: %w", to, ErrNoPrevious, err)
	}
	from, err = s.linkTarget(CurrentLink)
	if err != nil {
		return "", "", fmt.Errorf("roll back to %s: %w", to, err)
	}
	var flags uint = unix.RENAME_EXCHANGE
	if from == "" || s.checkTree(from) != nil {
		from, flags = "", 0
	}
	prev, cur := filepath.Join(s.dir, PreviousLink), filepath.Join(s.dir, CurrentLink)
	if err := s.rename(prev, cur, flags); err != nil {
		return "", "", fmt.Errorf("roll back to %s: %w", to, err)
	}
	if err := s.syncDir(s.dir); err != nil {
		return "", "", fmt.Errorf("roll back to %s: %w", to, err)
	}
	return from, to, nil
}

// linkTarget returns the host path store link name points at, "" when
// there is no such link. A relative target is taken relative to the
// store, an absolute one (as the original CoreOS installer wrote) as a
// host path. It returns an error when the link cannot be read or is not
// a symlink.
func (s *Store) linkTarget(name string) (string, error) {
	p := filepath.Join(s.dir, name)
	target, err := os.Readlink(s.fs(p))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read link %s: %w", p, err)
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(s.dir, target)
	}
	return filepath.Clean(target), nil
}

// setLink points store link name at host path tree with a relative
// target: it makes a link <name>.tmp-<random> in the store, calls the
// hook with step, renames the link over name and fsyncs the store. It
// returns an error when any of these fails, after removing the temporary
// link.
func (s *Store) setLink(name, tree, step string) error {
	target, err := filepath.Rel(s.dir, tree)
	if err != nil {
		return fmt.Errorf("link %s to %s: %w", name, tree, err)
	}
	link := filepath.Join(s.dir, name)
	tmp := link + linkTempInfix + randomSuffix()
	if err := os.Symlink(target, s.fs(tmp)); err != nil {
		return fmt.Errorf("link %s to %s: %w", link, tree, err)
	}
	s.step(step)
	if err := os.Rename(s.fs(tmp), s.fs(link)); err != nil {
		_ = os.Remove(s.fs(tmp)) // best effort; Clean removes it otherwise
		return fmt.Errorf("link %s to %s: %w", link, tree, err)
	}
	return s.syncDir(s.dir)
}
