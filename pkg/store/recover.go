package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
	"golang.org/x/sys/unix"
)

// Recover sets aside what would otherwise stop the store from working,
// keeping it for inspection under a name starting with '.' (which no scan
// reads): a state file that does not parse (the state starts empty), a
// tree's meta file that does not parse (a new one is written from what
// the tree holds, without a digest), and a `current` or `previous` that
// is not a symlink. Call it with the lock held. It returns one line per
// thing set aside, for the journal, and an error naming what it could not
// move.
func (s *Store) Recover() ([]string, error) {
	stamp := time.Now().UTC().Format("20060102T150405Z")
	var done []string
	aside := func(p, why string) error {
		name := filepath.Base(p)
		if !strings.HasPrefix(name, ".") {
			name = "." + name
		}
		to := filepath.Join(filepath.Dir(p), name+"."+why+"-"+stamp)
		if err := s.rename(p, to, unix.RENAME_NOREPLACE); err != nil {
			return err
		}
		done = append(done, fmt.Sprintf("%s set aside as %s (%s)", p, to, why))
		return s.syncDir(filepath.Dir(p))
	}

	if st, err := s.State(); err == nil && st.Corrupt != "" {
		if err := aside(filepath.Join(s.dir, StateFile), "corrupt"); err != nil {
			return done, fmt.Errorf("recover: %w", err)
		}
	}
	for _, name := range []string{CurrentLink, PreviousLink} {
		p := filepath.Join(s.dir, name)
		fi, err := os.Lstat(s.fs(p))
		if err != nil || fi.Mode()&fs.ModeSymlink != 0 {
			continue
		}
		if err := aside(p, "not-a-link"); err != nil {
			return done, fmt.Errorf("recover: %w", err)
		}
	}
	trees, err := s.installed()
	if err != nil {
		return done, fmt.Errorf("recover: %w", err)
	}
	for _, t := range trees {
		if t.meta != nil {
			continue
		}
		p := filepath.Join(t.path, MetaFile)
		if _, err := os.Lstat(s.fs(p)); errors.Is(err, fs.ErrNotExist) {
			continue // not a tree of the store's: gc leaves it alone
		}
		if err := aside(p, "corrupt"); err != nil {
			return done, fmt.Errorf("recover: %w", err)
		}
		if err := s.rebuildMeta(t); err != nil {
			return done, fmt.Errorf("recover: %w", err)
		}
	}
	return done, nil
}

// rebuildMeta writes a meta file for tree t, whose own was corrupt, from
// what the store knows of it: when it appeared. With no digest, the tree
// is never taken for an image, but it is the store's again (gc, status).
func (s *Store) rebuildMeta(t installedTree) error {
	m := Meta{InstalledAt: t.at.UTC(), Source: "rebuilt by nvidia-driverd: the tree's meta file was corrupt"}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	p := filepath.Join(t.path, MetaFile)
	if _, err := atomicfile.Replace(s.fs(p), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}

// SetAsideStaging moves a staging directory that Clean could not empty
// (an immutable file, a mount point in it) out of the way, keeping it as
// .staging.stuck-<time>, and makes a fresh one, so that installs go on.
// It returns the line for the journal.
func (s *Store) SetAsideStaging() (string, error) {
	staging := s.stagingDir()
	to := filepath.Join(s.dir, StagingDir+".stuck-"+time.Now().UTC().Format("20060102T150405.000000000Z"))
	if err := s.rename(staging, to, unix.RENAME_NOREPLACE); err != nil {
		return "", fmt.Errorf("set aside %s: %w", staging, err)
	}
	if err := s.ensureStaging(); err != nil {
		return "", err
	}
	if err := s.syncDir(s.dir); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s could not be emptied; set aside as %s", staging, to), nil
}
