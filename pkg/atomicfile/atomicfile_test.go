package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReplace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "f.conf")
	t.Run("a missing file and its directory are created", func(t *testing.T) {
		changed, err := Replace(p, []byte("a\n"), 0o640)
		if err != nil || !changed {
			t.Fatalf("%v %v", changed, err)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o640 {
			t.Fatalf("%v %v", fi, err)
		}
	})
	t.Run("the same content changes nothing, not even the inode", func(t *testing.T) {
		before, _ := os.Stat(p)
		changed, err := Replace(p, []byte("a\n"), 0o640)
		after, _ := os.Stat(p)
		if err != nil || changed || !os.SameFile(before, after) {
			t.Fatalf("%v %v", changed, err)
		}
	})
	t.Run("new content replaces the file by rename; an open reader keeps the old", func(t *testing.T) {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if changed, err := Replace(p, []byte("b\n"), 0o644); err != nil || !changed {
			t.Fatalf("%v %v", changed, err)
		}
		old := make([]byte, 2)
		if _, err := f.Read(old); err != nil || string(old) != "a\n" {
			t.Fatalf("old reader sees %q", old)
		}
		if b, _ := os.ReadFile(p); string(b) != "b\n" {
			t.Fatalf("file holds %q", b)
		}
		entries, _ := os.ReadDir(filepath.Dir(p))
		if len(entries) != 1 {
			t.Fatalf("leftovers: %v", entries)
		}
	})
	t.Run("a directory in the way is an error naming it", func(t *testing.T) {
		d := filepath.Join(dir, "isdir")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if _, err := Replace(d, []byte("x"), 0o644); err == nil {
			t.Fatal("replaced a directory")
		}
	})
}
