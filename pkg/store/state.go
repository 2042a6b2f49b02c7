package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
)

// StateFile is the daemon's memory between runs, in the store directory.
const StateFile = "state.json"

// State is what the daemon remembers between runs. Fields added later are
// optional, so older state files stay readable.
type State struct {
	// BadDigests are images whose trees failed to activate, with why and
	// when, so that the same image is not retried in a loop.
	BadDigests map[string]BadDigest `json:"bad_digests,omitempty"`
	// Prefetch is the latest fetch of a driver for a staged OS update or
	// a newly installed kernel, nil when there was none.
	Prefetch *Prefetch `json:"prefetch,omitempty"`
	// Corrupt says why the state file could not be parsed, "" when it
	// could; the State is then empty, and Recover sets the file aside.
	Corrupt string `json:"-"`
}

// BadDigest records one failed activation.
type BadDigest struct {
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// The states of a Prefetch.
const (
	PrefetchFetching = "fetching" // a fetch is under way (or was cut off)
	PrefetchReady    = "ready"    // the tree is in the store
	PrefetchFailed   = "failed"   // the last attempt failed; see Error and NextRetry
)

// Prefetch records the fetch of a driver tree for what the next boot
// runs: an OS version (Flatcar, CoreOS) or a kernel release (other hosts).
// `current` is never switched to it; after the reboot the daemon finds the
// tree and switches without a download.
type Prefetch struct {
	Driver string `json:"driver"`
	// OSVersion is the OS version the tree is for.
	OSVersion string `json:"os_version,omitempty"`
	// KernelRelease is the kernel the modules are for: the new kernel on a
	// generic host, or the one the image's label named on Flatcar ("" until
	// the image was read).
	KernelRelease string    `json:"kernel_release,omitempty"`
	Tag           string    `json:"tag"`
	Tree          string    `json:"tree,omitempty"`   // host path of the tree, once installed
	Digest        string    `json:"digest,omitempty"` // image digest, once resolved
	State         string    `json:"state"`
	Error         string    `json:"error,omitempty"` // why the last attempt failed
	At            time.Time `json:"at"`              // when State was reached
	Attempts      int       `json:"attempts"`        // attempts for this target so far
	// NextRetry is when a failed prefetch is tried again; zero when no
	// retry is scheduled.
	NextRetry time.Time `json:"next_retry,omitzero"`
}

// Reasons returns the bad digests with their reasons.
func (st State) Reasons() map[string]string {
	out := make(map[string]string, len(st.BadDigests))
	for d, b := range st.BadDigests {
		out[d] = b.Reason
	}
	return out
}

// maxStateBytes bounds the state file read: it holds a few records.
const maxStateBytes = 4 << 20

// ReadState reads the state file of the store at host path dir in host
// tree host, resolved inside it and read bounded (a state file that is a
// link to /etc/shadow means the host's, never this machine's). A missing
// file is an empty State; so is a corrupt one, with Corrupt saying why, so
// that status and the daemon keep working; an unreadable one is an error
// naming it.
func ReadState(host *hostfs.Root, dir string) (State, error) {
	p := filepath.Join(dir, StateFile)
	data, err := host.ReadFile(p, maxStateBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, nil
	}
	if errors.Is(err, hostfs.ErrTooLarge) || errors.Is(err, hostfs.ErrNotRegular) {
		return State{Corrupt: err.Error()}, nil // set aside by Recover, like bad JSON
	}
	if err != nil {
		return State{}, fmt.Errorf("read state: %w", err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return State{Corrupt: fmt.Sprintf("%s: %v", host.Join(p), err)}, nil
	}
	return st, nil
}

// State reads the store's state file, as ReadState does.
func (s *Store) State() (State, error) { return ReadState(s.host, s.dir) }

// MarkBad records digest as an image that failed to activate. The state
// file is replaced atomically. Call with the lock held.
func (s *Store) MarkBad(digest, reason string) error {
	if digest == "" {
		return nil
	}
	return s.updateState(func(st *State) {
		if st.BadDigests == nil {
			st.BadDigests = map[string]BadDigest{}
		}
		st.BadDigests[digest] = BadDigest{Reason: reason, At: time.Now().UTC()}
	})
}

// Forget removes the failed-image records of digests (every record when
// digests is empty), so that those images may be tried again. It returns
// the digests removed, sorted, and leaves the file untouched when none
// was recorded. A digest given that is not recorded is an error naming
// it and what is recorded; nothing is removed then. Call with the lock
// held.
func (s *Store) Forget(digests []string) ([]string, error) {
	st, err := s.State()
	if err != nil {
		return nil, err
	}
	var gone []string
	if len(digests) == 0 {
		gone = slices.Sorted(maps.Keys(st.BadDigests))
	}
	for _, d := range digests {
		if _, ok := st.BadDigests[d]; !ok {
			known := slices.Sorted(maps.Keys(st.BadDigests))
			if len(known) == 0 {
				return nil, fmt.Errorf("%s: no image is recorded as failed in %s", d, filepath.Join(s.dir, StateFile))
			}
			return nil, fmt.Errorf("%s: not recorded as failed in %s (recorded: %s)", d, filepath.Join(s.dir, StateFile), strings.Join(known, ", "))
		}
		gone = append(gone, d)
	}
	slices.Sort(gone)
	gone = slices.Compact(gone)
	if len(gone) == 0 {
		return nil, nil
	}
	return gone, s.updateState(func(st *State) {
		for _, d := range gone {
			delete(st.BadDigests, d)
		}
	})
}

// SetPrefetch records p as the latest prefetch, replacing the one before.
// The state file is replaced atomically. Call with the lock held.
func (s *Store) SetPrefetch(p Prefetch) error {
	return s.updateState(func(st *State) { st.Prefetch = &p })
}

// updateState reads the state file, applies change and replaces the file.
func (s *Store) updateState(change func(*State)) error {
	st, err := s.State()
	if err != nil {
		return err
	}
	if st.Corrupt != "" { // kept for inspection, not overwritten
		if _, err := s.Recover(); err != nil {
			return err
		}
	}
	change(&st)
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if _, err := atomicfile.Replace(filepath.Join(s.fs(s.dir), StateFile), data, 0o644); err != nil {
		return fmt.Errorf("write state %s: %w", filepath.Join(s.dir, StateFile), err)
	}
	return nil
}
