package libs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
)

// dropInContent returns the drop-in naming the tree's lib64 directory as
// a host path, which ldconfig -r <root> and the host's ldconfig read
// alike. It returns an error when that path cannot go into ld.so.conf.
func (s setup) dropInContent() ([]byte, error) {
	dir := filepath.Join(s.treeHost, "lib64")
	if err := checkPath(dir); err != nil {
		return nil, fmt.Errorf("write %s: %w", DropIn, err)
	}
	return []byte("# Written by nvidia-driverd for the active driver tree; rewritten on every switch.\n" + dir + "\n"), nil
}

// writeDropIn makes the drop-in name the tree, recording its path in
// r.DropIn when it changed it. It returns an error when the content
// cannot be built or the file cannot be written.
func (s setup) writeDropIn(r *Result) error {
	content, err := s.dropInContent()
	if err != nil {
		return err
	}
	p, err := s.fs.Path(DropIn)
	if err != nil {
		return err
	}
	changed, err := atomicfile.Replace(p, content, 0o644)
	if err != nil {
		return err
	}
	if changed {
		r.DropIn = p
	}
	return nil
}

// removeDropIn removes the drop-in, recording its path in r.Removed when
// there was one. It returns an error when it cannot be removed or the
// removal cannot be made durable.
func (s setup) removeDropIn(r *Result) error {
	p, err := s.fs.Path(DropIn)
	if err != nil {
		return err
	}
	err = os.Remove(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove drop-in: %w", err)
	}
	r.Removed = p
	return atomicfile.SyncDir(filepath.Dir(p))
}
