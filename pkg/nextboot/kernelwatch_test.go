package nextboot

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// install lays out lib/modules/<rel> under root, with modules.dep when
// complete.
func install(t *testing.T, root, rel string, complete bool) {
	t.Helper()
	dir := filepath.Join(root, "lib/modules", rel)
	if err := os.MkdirAll(filepath.Join(dir, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	if complete {
		if err := os.WriteFile(filepath.Join(dir, depFile), []byte("kernel/fs/fat/fat.ko:\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// nextRelease returns the next release w reports, failing after 10 s.
func nextRelease(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case rel, ok := <-ch:
		if !ok {
			t.Fatal("kernel watch ended")
		}
		return rel
	case <-time.After(10 * time.Second):
		t.Fatal("no kernel reported within 10s")
		return ""
	}
}

func TestKernelWatcher(t *testing.T) {
	t.Run("a release is reported once its modules.dep exists, and only once", func(t *testing.T) {
		root := t.TempDir()
		install(t, root, "6.1.0-18-amd64", true) // installed long ago
		old := time.Now().Add(-time.Hour)
		if err := os.Chtimes(filepath.Join(root, "lib/modules/6.1.0-18-amd64", depFile), old, old); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// Since is just before the watch starts: whatever the tests add is
		// new whether the first scan or inotify sees it first.
		w := &KernelWatcher{Root: root, Since: time.Now().Add(-time.Second), Rescan: time.Hour}
		ch := w.Watch(ctx)

		// Half installed: the directory and modules, no modules.dep yet.
		install(t, root, "6.1.0-21-amd64", false)
		// A complete kernel after it: events arrive in order, so had the
		// half-installed one been reported, it would come first.
		install(t, root, "6.1.0-20-amd64", true)
		if got := nextRelease(t, ch); got != "6.1.0-20-amd64" {
			t.Fatalf("reported %q first, want 6.1.0-20-amd64", got)
		}
		install(t, root, "6.1.0-21-amd64", true) // depmod ran
		if got := nextRelease(t, ch); got != "6.1.0-21-amd64" {
			t.Fatalf("reported %q, want 6.1.0-21-amd64", got)
		}
		// depmod again (a DKMS module added) is not a new kernel.
		install(t, root, "6.1.0-21-amd64", true)
		install(t, root, "6.1.0-22-amd64", true)
		if got := nextRelease(t, ch); got != "6.1.0-22-amd64" {
			t.Fatalf("reported %q, want 6.1.0-22-amd64", got)
		}
		cancel()
		for range ch {
		}
	})

	t.Run("depmod's rename into place is seen", func(t *testing.T) {
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "lib/modules"), 0o755); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := (&KernelWatcher{Root: root, Since: time.Now().Add(-time.Second), Rescan: time.Hour}).Watch(ctx)
		install(t, root, "6.5.0-1-amd64", false)
		dir := filepath.Join(root, "lib/modules/6.5.0-1-amd64")
		if err := os.WriteFile(filepath.Join(dir, depFile+".tmp"), []byte("x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, depFile+".tmp"), filepath.Join(dir, depFile)); err != nil {
			t.Fatal(err)
		}
		if got := nextRelease(t, ch); got != "6.5.0-1-amd64" {
			t.Fatalf("reported %q", got)
		}
	})

	t.Run("releases installed since boot are reported at start, older ones are not", func(t *testing.T) {
		root := t.TempDir()
		since := time.Now().Add(-time.Minute)
		install(t, root, "6.1.0-18-amd64", true)
		before := since.Add(-time.Hour)
		if err := os.Chtimes(filepath.Join(root, "lib/modules/6.1.0-18-amd64", depFile), before, before); err != nil {
			t.Fatal(err)
		}
		install(t, root, "6.1.0-25-amd64", true) // written now, after since
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := (&KernelWatcher{Root: root, Since: since, Rescan: time.Hour}).Watch(ctx)
		if got := nextRelease(t, ch); got != "6.1.0-25-amd64" {
			t.Fatalf("reported %q, want 6.1.0-25-amd64", got)
		}
		install(t, root, "6.1.0-26-amd64", true)
		if got := nextRelease(t, ch); got != "6.1.0-26-amd64" {
			t.Fatalf("reported %q, want 6.1.0-26-amd64 (the old kernel must not be reported)", got)
		}
	})

	t.Run("the periodic scan finds a kernel where nothing could be watched", func(t *testing.T) {
		root := t.TempDir() // no lib/modules yet: no inotify watch there
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch := (&KernelWatcher{Root: root, Since: time.Now().Add(-time.Second), Rescan: 20 * time.Millisecond}).Watch(ctx)
		install(t, root, "6.6.15-amd64", true)
		if got := nextRelease(t, ch); got != "6.6.15-amd64" {
			t.Fatalf("reported %q", got)
		}
	})

	t.Run("the channel is closed when the context ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		ch := (&KernelWatcher{Root: t.TempDir()}).Watch(ctx)
		cancel()
		select {
		case _, ok := <-ch:
			if ok {
				t.Fatal("a release reported from an empty root")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("channel not closed")
		}
	})
}

func TestBootTime(t *testing.T) {
	bt, err := BootTime()
	if err != nil {
		t.Fatal(err)
	}
	if !bt.Before(time.Now()) {
		t.Fatalf("boot time %v is not in the past", bt)
	}
}
