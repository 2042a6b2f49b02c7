package store

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// lockHelperEnv names the root of a store that TestLockHelper locks.
const lockHelperEnv = "NVIDIA_DRIVERD_TEST_LOCK_ROOT"

// busySignal returns a hook that reports StepLockBusy on the channel it
// also returns, without blocking the store.
func busySignal() (Option, <-chan struct{}) {
	busy := make(chan struct{}, 1)
	return WithHook(func(step string) {
		if step == StepLockBusy {
			select {
			case busy <- struct{}{}:
			default:
			}
		}
	}), busy
}

// lockResult is what a Lock in a goroutine returned.
type lockResult struct {
	l   *Lock
	err error
}

// lockAsync runs s.Lock(ctx, true) in a goroutine.
func lockAsync(ctx context.Context, s *Store) <-chan lockResult {
	done := make(chan lockResult, 1)
	go func() {
		l, err := s.Lock(ctx, true)
		done <- lockResult{l, err}
	}()
	return done
}

func TestLock(t *testing.T) {
	t.Run("a second lock that does not wait fails with ErrLocked and names the holder's pid", func(t *testing.T) {
		root := t.TempDir()
		l, err := openStore(t, root).Lock(t.Context(), false)
		must(t, err)
		_, err = openStore(t, root).Lock(t.Context(), false)
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) ||
			!strings.Contains(err.Error(), "another nvidia-driverd") {
			t.Fatal(err)
		}
		must(t, l.Unlock())
		must(t, l.Unlock()) // a second Unlock is harmless
		data, err := os.ReadFile(filepath.Join(root, storeDir, lockFile))
		if err != nil || len(data) != 0 {
			t.Fatalf("the lock file still holds %q, %v", data, err)
		}
		l, err = openStore(t, root).Lock(t.Context(), false)
		must(t, err)
		must(t, l.Unlock())
	})

	t.Run("a waiting lock is acquired once the holder unlocks", func(t *testing.T) {
		root := t.TempDir()
		held, err := openStore(t, root).Lock(t.Context(), false)
		must(t, err)
		hook, busy := busySignal()
		done := lockAsync(t.Context(), openStore(t, root, hook))
		<-busy
		must(t, held.Unlock())
		r := <-done
		must(t, r.err)
		must(t, r.l.Unlock())
	})

	t.Run("cancelling the context stops a waiting lock", func(t *testing.T) {
		root := t.TempDir()
		held, err := openStore(t, root).Lock(t.Context(), false)
		must(t, err)
		hook, busy := busySignal()
		ctx, cancel := context.WithCancel(t.Context())
		done := lockAsync(ctx, openStore(t, root, hook))
		<-busy
		cancel()
		if r := <-done; !errors.Is(r.err, context.Canceled) || r.l != nil {
			t.Fatalf("%+v", r)
		}
		must(t, held.Unlock())
	})

	t.Run("the lock excludes another process until it unlocks", func(t *testing.T) {
		root := t.TempDir()
		cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelper$", "-test.count=1")
		// GORACE: a race-enabled helper otherwise sleeps a second on exit.
		cmd.Env = append(os.Environ(), lockHelperEnv+"="+root, "GORACE=atexit_sleep_ms=0")
		stdin, err := cmd.StdinPipe()
		must(t, err)
		stdout, err := cmd.StdoutPipe()
		must(t, err)
		cmd.Stderr = os.Stderr
		must(t, cmd.Start())
		out := bufio.NewReader(stdout)
		if line, err := out.ReadString('\n'); err != nil || line != "locked\n" {
			_ = cmd.Process.Kill()
			t.Fatalf("helper said %q, %v", line, err)
		}

		_, err = openStore(t, root).Lock(t.Context(), false)
		if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(cmd.Process.Pid)) {
			t.Errorf("%v", err)
		}
		hook, busy := busySignal()
		done := lockAsync(t.Context(), openStore(t, root, hook))
		<-busy
		must(t, stdin.Close()) // the helper unlocks and exits
		r := <-done
		must(t, r.err)
		must(t, r.l.Unlock())
		_, _ = io.Copy(io.Discard, out)
		must(t, cmd.Wait())
	})
}

// TestLockHelper is the other process of TestLock: it locks the store
// under $NVIDIA_DRIVERD_TEST_LOCK_ROOT, says "locked" on stdout, and
// unlocks when stdin is closed.
func TestLockHelper(t *testing.T) {
	root := os.Getenv(lockHelperEnv)
	if root == "" {
		t.Skip("run by TestLock")
	}
	l, err := openStore(t, root).Lock(context.Background(), false)
	must(t, err)
	if _, err := os.Stdout.WriteString("locked\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, os.Stdin); err != nil {
		t.Fatal(err)
	}
	must(t, l.Unlock())
}
