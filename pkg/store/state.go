package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
)

// StateFile is the daemon's memory between runs, in the store directory.
const StateFile = "state.json"

// State is what the daemon remembers between runs.
type State struct {
	// BadDigests are images whose trees failed to activate, with why and
	// when, so that the same image is not retried in a loop.
	BadDigests map[string]BadDigest `json:"bad_digests,omitempty"`
}

// BadDigest records one failed activation.
type BadDigest struct {
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// Reasons returns the bad digests with their reasons.
func (st State) Reasons() map[string]string {
	out := make(map[string]string, len(st.BadDigests))
	for d, b := range st.BadDigests {
		out[d] = b.Reason
	}
	return out
}

// ReadState reads the state file of the store at host path dir under
// root. A missing file is an empty State; an unreadable or corrupt one is
// an error naming it.
func ReadState(root, dir string) (State, error) {
	p := filepath.Join(root, dir, StateFile)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("read state: %w", err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return State{}, fmt.Errorf("read state %s: %w", p, err)
	}
	return st, nil
}

// MarkBad records digest as an image that failed to activate. The state
// file is replaced atomically. Call with the lock held.
func (s *Store) MarkBad(digest, reason string) error {
	if digest == "" {
		return nil
	}
	st, err := ReadState(s.root, s.dir)
	if err != nil {
		return err
	}
	if st.BadDigests == nil {
		st.BadDigests = map[string]BadDigest{}
	}
	st.BadDigests[digest] = BadDigest{Reason: reason, At: time.Now().UTC()}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if _, err := atomicfile.Replace(filepath.Join(s.fs(s.dir), StateFile), data, 0o644); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}
