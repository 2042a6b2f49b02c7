package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// installedTree is a tree found by listing the store, without reading its
// modules as Scan does.
type installedTree struct {
	path string    // host path
	meta *Meta     // nil when the tree has no readable MetaFile
	at   time.Time // Meta.InstalledAt, or the directory's mtime without one
}

// FindDigest returns the host path of an installed tree whose MetaFile
// records digest, so that an image already installed is not downloaded
// again; with several, the first by path. It returns "" when no tree
// records it, when digest is empty, or when the store does not exist, and
// an error when the store or one of its driver directories cannot be read.
func (s *Store) FindDigest(digest string) (string, error) {
	if digest == "" {
		return "", nil
	}
	trees, err := s.installed()
	if err != nil {
		return "", fmt.Errorf("find digest %s: %w", digest, err)
	}
	for _, t := range trees {
		if t.meta != nil && t.meta.Digest == digest {
			return t.path, nil
		}
	}
	return "", nil
}

// GC removes the installed trees beyond the newest keep, newest by
// Meta.InstalledAt. It removes only trees the store made, those with a
// MetaFile (a directory someone else put in the store is not ours to
// delete), and never the trees `current` and `previous` point at. Each tree is
// first renamed into .staging, so that it leaves its path at once, then
// removed; a driver directory left empty is removed too.
//
// It returns the host paths of the trees removed. It returns an error
// when keep < 1, when the store or its links cannot be read, or when a
// tree cannot be moved or removed, with the paths removed until then;
// a tree moved but not removed is gone from the store and left to Clean.
func (s *Store) GC(keep int) ([]string, error) {
	if keep < 1 {
		return nil, fmt.Errorf("collect trees in %s: keep %d, want at least 1", s.dir, keep)
	}
	trees, err := s.installed()
	if err != nil {
		return nil, fmt.Errorf("collect trees in %s: %w", s.dir, err)
	}
	protected, err := s.linked()
	if err != nil {
		return nil, fmt.Errorf("collect trees in %s: %w", s.dir, err)
	}
	trees = slices.DeleteFunc(trees, func(t installedTree) bool { return t.meta == nil })
	sort.SliceStable(trees, func(i, j int) bool { return trees[i].at.After(trees[j].at) })
	var removed []string
	for i, t := range trees {
		if i < keep || protected[t.path] {
			continue
		}
		if err := s.removeTree(t.path); err != nil {
			return removed, fmt.Errorf("collect trees in %s: %w", s.dir, err)
		}
		removed = append(removed, t.path)
	}
	return removed, nil
}

// linked returns the host paths `current` and `previous` point at. It
// returns an error when either link cannot be read.
func (s *Store) linked() (map[string]bool, error) {
	out := map[string]bool{}
	for _, name := range []string{CurrentLink, PreviousLink} {
		p, err := s.linkTarget(name)
		if err != nil {
			return nil, err
		}
		if p != "" {
			out[p] = true
		}
	}
	return out, nil
}

// removeTree moves the tree at host path tree into .staging, fsyncs its
// driver directory, removes the tree, then removes the driver directory
// when it is empty. It returns an error when the tree cannot be moved or
// removed or a directory cannot be synced or removed.
func (s *Store) removeTree(tree string) error {
	driverDir := filepath.Dir(tree)
	trash := filepath.Join(s.stagingDir(), fmt.Sprintf("%s-%s-gc-%s", filepath.Base(driverDir), filepath.Base(tree), randomSuffix()))
	if err := s.ensureStaging(); err != nil {
		return err
	}
	if err := s.rename(tree, trash, unix.RENAME_NOREPLACE); err != nil {
		return err
	}
	if err := s.syncDir(driverDir); err != nil {
		return err
	}
	s.step(StepGCMoved)
	if err := os.RemoveAll(s.fs(trash)); err != nil {
		return fmt.Errorf("remove %s: %w", tree, err)
	}
	return s.removeIfEmpty(driverDir)
}

// removeIfEmpty removes directory p (a host path) when it is empty and
// fsyncs its parent. It returns nil when p is not empty, and an error
// when it cannot be removed otherwise or the parent cannot be synced.
func (s *Store) removeIfEmpty(p string) error {
	err := os.Remove(s.fs(p))
	if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	return s.syncDir(filepath.Dir(p))
}

// installed lists the installed trees, sorted by path: directories
// <store>/<driver>/<os-version> whose names do not start with '.'. It
// returns none when the store does not exist, and an error when the store
// or a driver directory cannot be read.
func (s *Store) installed() ([]installedTree, error) {
	drivers, err := readDirs(s.fsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", s.dir, err)
	}
	var out []installedTree
	for _, d := range drivers {
		driverDir := filepath.Join(s.dir, d.Name())
		trees, err := readDirs(s.fs(driverDir))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", driverDir, err)
		}
		for _, t := range trees {
			out = append(out, s.installedTree(filepath.Join(driverDir, t.Name()), t))
		}
	}
	return out, nil
}

// installedTree describes the tree at host path p, listed as e.
func (s *Store) installedTree(p string, e fs.DirEntry) installedTree {
	t := installedTree{path: p}
	if m, err := s.readMeta(p); err == nil {
		t.meta = m
		t.at = m.InstalledAt
	}
	if t.at.IsZero() {
		if fi, err := e.Info(); err == nil {
			t.at = fi.ModTime()
		}
	}
	return t
}

// readDirs returns the directories in dir (a real path) whose names do not
// start with '.', sorted by name; symlinks are not followed. It returns
// the error of reading dir.
func readDirs(dir string) ([]fs.DirEntry, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []fs.DirEntry
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e)
		}
	}
	return out, nil
}
