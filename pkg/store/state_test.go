package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
)

func TestPrefetchState(t *testing.T) {
	t.Parallel()
	t.Run("a state file written before prefetch existed is read, and keeps its bad digests", func(t *testing.T) {
		root := t.TempDir()
		old := `{
  "bad_digests": {
    "sha256:abc": {"reason": "nvidia: probe failed", "at": "2024-03-01T10:00:00Z"}
  }
}`
		must(t, os.MkdirAll(filepath.Join(root, "opt/nvidia"), 0o755))
		must(t, os.WriteFile(filepath.Join(root, "opt/nvidia", StateFile), []byte(old), 0o644))
		st, err := ReadState(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil || st.Prefetch != nil || st.Reasons()["sha256:abc"] != "nvidia: probe failed" {
			t.Fatalf("%+v, %v", st, err)
		}
		s, err := Open(hostfixture.FS(t, root), "/opt/nvidia")
		must(t, err)
		p := Prefetch{Driver: "550.54.14", OSVersion: "4081.2.0", Tag: "4081.2.0-550.54.14",
			State: PrefetchFailed, Error: "no such tag", At: time.Date(2024, 3, 2, 0, 0, 0, 0, time.UTC), Attempts: 2,
			NextRetry: time.Date(2024, 3, 2, 0, 1, 0, 0, time.UTC)}
		must(t, s.SetPrefetch(p))
		st, err = ReadState(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil || st.Prefetch == nil || *st.Prefetch != p || len(st.BadDigests) != 1 {
			t.Fatalf("%+v, %v", st, err)
		}
		// A later MarkBad keeps the prefetch record.
		must(t, s.MarkBad("sha256:def", "ENOEXEC"))
		st, err = ReadState(hostfixture.FS(t, root), "/opt/nvidia")
		if err != nil || st.Prefetch == nil || st.Prefetch.State != PrefetchFailed || len(st.BadDigests) != 2 {
			t.Fatalf("%+v, %v", st, err)
		}
	})

	t.Run("the file names the prefetch fields as documented, and omits an unscheduled retry", func(t *testing.T) {
		root := t.TempDir()
		s, err := Open(hostfixture.FS(t, root), "/opt/nvidia")
		must(t, err)
		must(t, s.SetPrefetch(Prefetch{Driver: "550.54.14", OSVersion: "4081.2.0", KernelRelease: "6.6.30-flatcar",
			Tag: "4081.2.0-550.54.14", Tree: "/opt/nvidia/550.54.14/4081.2.0", Digest: "sha256:0123",
			State: PrefetchReady, At: time.Now().UTC(), Attempts: 1}))
		b, err := os.ReadFile(filepath.Join(root, "opt/nvidia", StateFile))
		must(t, err)
		for _, key := range []string{`"prefetch"`, `"os_version": "4081.2.0"`, `"kernel_release": "6.6.30-flatcar"`,
			`"tag"`, `"tree"`, `"digest"`, `"state": "ready"`, `"at"`, `"attempts": 1`} {
			if !strings.Contains(string(b), key) {
				t.Errorf("no %s in %s", key, b)
			}
		}
		if strings.Contains(string(b), "next_retry") || strings.Contains(string(b), `"error"`) {
			t.Errorf("unset fields written: %s", b)
		}
	})
}

func TestForget(t *testing.T) {
	t.Parallel()
	open := func(t *testing.T) *Store {
		s, err := Open(hostfixture.FS(t, t.TempDir()), "/opt/nvidia")
		must(t, err)
		return s
	}
	t.Run("named digests are forgotten, the others and the prefetch kept", func(t *testing.T) {
		s := open(t)
		must(t, s.MarkBad("sha256:a", "ENODEV"))
		must(t, s.MarkBad("sha256:b", "ENOEXEC"))
		must(t, s.SetPrefetch(Prefetch{Driver: "550.54.14", State: PrefetchReady}))
		gone, err := s.Forget([]string{"sha256:a", "sha256:a"})
		if err != nil || strings.Join(gone, " ") != "sha256:a" {
			t.Fatalf("%q, %v", gone, err)
		}
		st, err := s.State()
		if err != nil || len(st.BadDigests) != 1 || st.Reasons()["sha256:b"] != "ENOEXEC" || st.Prefetch == nil {
			t.Fatalf("%+v, %v", st, err)
		}
	})
	t.Run("no digest forgets them all; nothing recorded is not an error", func(t *testing.T) {
		s := open(t)
		if gone, err := s.Forget(nil); gone != nil || err != nil {
			t.Fatalf("%q, %v", gone, err)
		}
		must(t, s.MarkBad("sha256:b", "x"))
		must(t, s.MarkBad("sha256:a", "y"))
		gone, err := s.Forget(nil)
		if err != nil || strings.Join(gone, " ") != "sha256:a sha256:b" {
			t.Fatalf("%q, %v", gone, err)
		}
		if st, _ := s.State(); len(st.BadDigests) != 0 {
			t.Fatalf("%+v", st)
		}
	})
	t.Run("a digest that is not recorded is an error naming what is, and nothing goes", func(t *testing.T) {
		s := open(t)
		must(t, s.MarkBad("sha256:a", "x"))
		_, err := s.Forget([]string{"sha256:a", "sha256:zz"})
		if err == nil || !strings.Contains(err.Error(), "sha256:zz: not recorded as failed in /opt/nvidia/state.json (recorded: sha256:a)") {
			t.Fatalf("%v", err)
		}
		if st, _ := s.State(); len(st.BadDigests) != 1 {
			t.Fatalf("%+v", st)
		}
	})
}
