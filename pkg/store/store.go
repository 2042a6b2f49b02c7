package store

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
	"golang.org/x/sys/unix"
)

// Steps at which a Store calls the hook given with WithHook. A test that
// kills the process at a step checks that the store survives a crash
// there.
const (
	StepStaged         = "staged"          // Stage made the staging directory
	StepMetaWritten    = "meta-written"    // Commit wrote the MetaFile into the staged tree
	StepSynced         = "synced"          // Commit made the file system durable
	StepRenamed        = "renamed"         // Commit renamed the tree into place, parents not yet synced
	StepCommitted      = "committed"       // Commit is done, a replaced tree not yet removed
	StepPreviousTemp   = "previous-temp"   // Switch made the new `previous` link under a temporary name
	StepPreviousLinked = "previous-linked" // Switch replaced `previous`
	StepCurrentTemp    = "current-temp"    // Switch made the new `current` link under a temporary name
	StepCurrentLinked  = "current-linked"  // Switch replaced `current`
	StepGCMoved        = "gc-moved"        // GC moved a tree into staging, not yet removed
	StepLockBusy       = "lock-busy"       // a waiting Lock found the lock held and starts to wait
)

// lockFile is the name of the single-writer lock inside the store.
const lockFile = ".lock"

// Store is a driver store opened for writing. Its methods are not safe for
// concurrent use; between processes, the writer holds the store's Lock.
type Store struct {
	host  *hostfs.Root      // the host tree
	dir   string            // host path of the store
	fsDir string            // real path of the store on this machine, resolved inside the host tree
	hook  func(step string) // called at each Step; nil in production
}

// Option configures a Store in Open.
type Option func(*Store)

// WithHook makes the store call hook with the name of each step (the Step
// constants) as it passes it. It exists for crash tests, which stop the
// process at a step; production code passes no hook.
func WithHook(hook func(step string)) Option {
	return func(s *Store) { s.hook = hook }
}

// Open opens the store at host path dir in host tree host (symlinks along
// dir followed inside it: /opt -> /var/opt puts the store in
// <root>/var/opt/nvidia),
// creating dir (mode 0755) and its staging directory (mode 0700, as
// nothing in it is meant to be used) when missing. It returns an error
// when dir is not absolute, when either directory cannot be created, or
// when the staging path is taken by something other than a directory.
func Open(host *hostfs.Root, dir string, opts ...Option) (*Store, error) {
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("open store %s: path is not absolute", dir)
	}
	s := &Store{host: host, dir: filepath.Clean(dir)}
	var err error
	if s.fsDir, err = host.Path(s.dir); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	for _, opt := range opts {
		opt(s)
	}
	if err := os.MkdirAll(s.fsDir, 0o755); err != nil {
		return nil, fmt.Errorf("create store %s: %w", s.dir, err)
	}
	if err := s.ensureStaging(); err != nil {
		return nil, err
	}
	return s, nil
}

// Dir returns the host path of the store.
func (s *Store) Dir() string { return s.dir }

// fs returns the real path of host path p: below the store, p's place
// under the store's resolved directory (entries of the store are the
// store's own and are not resolved again); elsewhere p resolved inside
// the host tree.
func (s *Store) fs(p string) string {
	if real, ok := fsPath(s.dir, s.fsDir, p); ok {
		return real
	}
	real, err := s.host.Path(p)
	if err != nil {
		return s.host.Join(p) // the error shows when real is used
	}
	return real
}

// fsPath maps host path p below the store at host path dir, found at real
// path fsDir, to its real path; ok is false when p is not below dir.
func fsPath(dir, fsDir, p string) (string, bool) {
	if !hostfs.Within(p, dir) {
		return "", false
	}
	rel, _ := filepath.Rel(dir, p)
	return filepath.Join(fsDir, rel), true
}

// stagingDir returns the host path of the staging directory.
func (s *Store) stagingDir() string { return filepath.Join(s.dir, StagingDir) }

// step calls the hook, if any.
func (s *Store) step(name string) {
	if s.hook != nil {
		s.hook(name)
	}
}

// ensureStaging creates the staging directory when missing. It returns an
// error when it cannot, or when the path holds something else than a
// directory (a symlink there could send trees out of the store).
func (s *Store) ensureStaging() error {
	return s.ensureDir(s.stagingDir(), 0o700)
}

// ensureDir creates directory p (a host path) with mode perm when
// missing. It returns an error when it cannot create
// it, or when p holds something other than a directory.
func (s *Store) ensureDir(p string, perm fs.FileMode) error {
	err := s.mkdir(p, perm)
	if err == nil || !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Lstat(s.fs(p))
	if err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("create %s: exists and is not a directory", p)
	}
	return nil
}

// mkdir creates directory p (a host path) with mode perm, whatever the
// umask. It returns an error wrapping fs.ErrExist when p exists, and an
// error when p cannot be created.
func (s *Store) mkdir(p string, perm fs.FileMode) error {
	if err := os.Mkdir(s.fs(p), perm); err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	if err := os.Chmod(s.fs(p), perm); err != nil {
		return fmt.Errorf("create %s: %w", p, err)
	}
	return nil
}

// syncDir fsyncs directory p (a host path), making the names created,
// renamed or removed in it durable. It returns an error when p cannot be
// opened or synced.
func (s *Store) syncDir(p string) error {
	return atomicfile.SyncDir(s.fs(p))
}

// syncFS flushes the whole file system holding p (a host path) with one
// syncfs(2). It returns an error when p cannot be opened or the file
// system reports a write error.
func (s *Store) syncFS(p string) error {
	fd, err := unix.Open(s.fs(p), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync file system of %s: open: %w", p, err)
	}
	err = unix.Syncfs(fd)
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync file system of %s: %w", p, err)
	}
	return nil
}

// rename renames host path from to host path to with renameat2(2) flags:
// unix.RENAME_NOREPLACE to refuse an existing target, unix.RENAME_EXCHANGE
// to swap two existing paths atomically. It returns the error of the
// system call, naming both paths.
func (s *Store) rename(from, to string, flags uint) error {
	err := unix.Renameat2(unix.AT_FDCWD, s.fs(from), unix.AT_FDCWD, s.fs(to), flags)
	if err != nil {
		return fmt.Errorf("rename %s to %s: %w", from, to, err)
	}
	return nil
}

// treePath returns the host path of the tree for driver and osVersion. It
// returns an error when either is not a single path component.
func (s *Store) treePath(driver, osVersion string) (string, error) {
	if err := checkComponent("driver version", driver); err != nil {
		return "", err
	}
	if err := checkComponent("OS version", osVersion); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, driver, osVersion), nil
}

// checkTree returns nil when host path p is an installed tree, that is a
// directory <store>/<driver>/<os-version> with both names valid, and an
// error saying why not otherwise.
func (s *Store) checkTree(p string) error {
	rel, err := filepath.Rel(s.dir, p)
	parts := strings.Split(rel, string(filepath.Separator))
	if err != nil || len(parts) != 2 {
		return fmt.Errorf("%s is not a tree path of the store %s", p, s.dir)
	}
	if _, err := s.treePath(parts[0], parts[1]); err != nil {
		return fmt.Errorf("%s is not a tree path of the store %s: %w", p, s.dir, err)
	}
	fi, err := os.Lstat(s.fs(p))
	if err != nil {
		return fmt.Errorf("find tree %s: %w", p, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("find tree %s: not a directory", p)
	}
	return nil
}

// checkComponent returns an error unless name is usable as one path
// component of the store: not empty, no '/' or NUL, and not starting with
// '.' (which also rules out "." and ".."), since the store keeps its own
// names, such as .staging, there.
func checkComponent(what, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("check %s: empty", what)
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("check %s %q: not a single path component", what, name)
	case strings.HasPrefix(name, "."):
		return fmt.Errorf("check %s %q: starts with '.'", what, name)
	}
	return nil
}

// readMeta reads the MetaFile of the tree at host path tree. It returns
// an error wrapping fs.ErrNotExist when the tree has none, and an error
// when it cannot be read or decoded.
func (s *Store) readMeta(tree string) (*Meta, error) {
	p := filepath.Join(tree, MetaFile)
	data, err := os.ReadFile(s.fs(p))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	return &m, nil
}

// randomSuffix returns 16 random hex digits for temporary names.
func randomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails: crypto/rand panics rather than return an error
	return hex.EncodeToString(b[:])
}
