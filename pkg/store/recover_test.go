package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRecover is the table of store contents that used to stop every
// command until someone edited the store by hand: each is set aside, kept
// for inspection, and the store works again, with the current tree intact.
func TestRecover(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		break_ func(t *testing.T, root string, s *Store, tree string)
		check  func(t *testing.T, root string, s *Store, tree string)
		aside  string // what the set-aside name starts with, in the store
	}{
		{
			name: "a corrupt state file is set aside and the state starts empty",
			break_: func(t *testing.T, root string, s *Store, tree string) {
				must(t, os.WriteFile(filepath.Join(root, storeDir, StateFile), []byte(`{"bad_digests": {`), 0o644))
			},
			check: func(t *testing.T, root string, s *Store, tree string) {
				st, err := s.State()
				if err != nil || st.Corrupt != "" {
					t.Errorf("state %+v, %v", st, err)
				}
				must(t, s.MarkBad("sha256:x", "test"))
			},
			aside: "." + StateFile + ".corrupt-",
		},
		{
			name: "a state update keeps a corrupt file rather than overwrite it",
			break_: func(t *testing.T, root string, s *Store, tree string) {
				must(t, os.WriteFile(filepath.Join(root, storeDir, StateFile), []byte("not json"), 0o644))
				must(t, s.MarkBad("sha256:x", "test")) // before any Recover
			},
			check: func(t *testing.T, root string, s *Store, tree string) {
				st, err := s.State()
				if err != nil || st.BadDigests["sha256:x"].Reason != "test" {
					t.Errorf("state %+v, %v", st, err)
				}
			},
			aside: "." + StateFile + ".corrupt-",
		},
		{
			name: "a state.json that is a directory is set aside too",
			break_: func(t *testing.T, root string, s *Store, tree string) {
				must(t, os.MkdirAll(filepath.Join(root, storeDir, StateFile, "x"), 0o755))
			},
			check: func(t *testing.T, root string, s *Store, tree string) {
				if st, err := s.State(); err != nil || st.Corrupt != "" {
					t.Errorf("state %+v, %v", st, err)
				}
			},
			aside: "." + StateFile + ".corrupt-",
		},
		{
			name: "a current that is a plain directory is set aside and a switch works",
			break_: func(t *testing.T, root string, s *Store, tree string) {
				must(t, os.Remove(filepath.Join(root, storeDir, CurrentLink)))
				must(t, os.MkdirAll(filepath.Join(root, storeDir, CurrentLink, "lib64"), 0o755))
			},
			check: func(t *testing.T, root string, s *Store, tree string) {
				if _, err := s.Switch(tree); err != nil {
					t.Error(err)
				}
			},
			aside: "." + CurrentLink + ".not-a-link-",
		},
		{
			name: "a previous that is a file is set aside",
			break_: func(t *testing.T, root string, s *Store, tree string) {
				must(t, os.WriteFile(filepath.Join(root, storeDir, PreviousLink), []byte("x"), 0o644))
			},
			check: func(t *testing.T, root string, s *Store, tree string) {
				if _, err := s.linkTarget(PreviousLink); err != nil {
					t.Error(err)
				}
			},
			aside: "." + PreviousLink + ".not-a-link-",
		},
		{
			name: "a corrupt meta file is set aside and rebuilt, so the tree is the store's again",
			break_: func(t *testing.T, root string, s *Store, tree string) {
				must(t, os.WriteFile(filepath.Join(root, tree, MetaFile), []byte("{{{"), 0o644))
			},
			check: func(t *testing.T, root string, s *Store, tree string) {
				m, err := s.readMeta(tree)
				if err != nil || m.Digest != "" || !strings.Contains(m.Source, "rebuilt") {
					t.Errorf("meta %+v, %v", m, err)
				}
				if _, err := os.Stat(filepath.Join(root, filepath.Dir(tree))); err != nil {
					t.Error(err)
				}
			},
			aside: "", // beside the tree, checked below
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			s := openStore(t, root)
			tree := installTree(t, s, "550.54.14", "3815.2.0", "sha256:v0", t0)
			_, err := s.Switch(tree)
			must(t, err)
			c.break_(t, root, s, tree)

			done, err := s.Recover()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("recovered: %q", done)
			if _, err := s.Recover(); err != nil {
				t.Fatalf("a second Recover: %v", err)
			}
			dir := filepath.Join(root, storeDir)
			if c.aside == "" {
				dir = filepath.Join(root, tree)
			}
			entries, _ := os.ReadDir(dir)
			found := false
			for _, e := range entries {
				found = found || (c.aside != "" && strings.HasPrefix(e.Name(), c.aside)) ||
					(c.aside == "" && strings.HasPrefix(e.Name(), MetaFile+".corrupt-"))
			}
			if !found {
				t.Errorf("nothing set aside in %s: %v", dir, entries)
			}
			c.check(t, root, s, tree)
			if b, err := os.ReadFile(filepath.Join(root, tree, "lib64/libcuda.so.1")); err != nil || string(b) != "libcuda of sha256:v0" {
				t.Errorf("the tree was damaged: %q, %v", b, err)
			}
		})
	}
}

func TestSetAsideStaging(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	s := openStore(t, root)
	st, err := s.Stage("x")
	must(t, err)
	write := filepath.Join(st.FSPath(), "file")
	must(t, os.WriteFile(write, []byte("x"), 0o644))
	line, err := s.SetAsideStaging()
	if err != nil || !strings.Contains(line, ".staging.stuck-") {
		t.Fatalf("SetAsideStaging = %q, %v", line, err)
	}
	if left, err := s.Clean(); err != nil || len(left) != 0 {
		t.Errorf("Clean after = %q, %v", left, err)
	}
	if _, err := s.Stage("y"); err != nil {
		t.Errorf("Stage after: %v", err)
	}

}
