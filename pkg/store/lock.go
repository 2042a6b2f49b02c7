package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrLocked is wrapped by the error Lock returns when another process
// holds the store's lock and the caller does not wait.
var ErrLocked = errors.New("store is locked")

// Polling bounds of a waiting Lock. flock(2) has no timeout, and a
// blocking call in a goroutine could not be abandoned when the context
// ends, so a waiting Lock retries with a backoff instead.
const (
	lockPollFirst = 10 * time.Millisecond
	lockPollMax   = 500 * time.Millisecond
)

// Lock is the store's single-writer lock, held until Unlock or the end of
// the process (the kernel releases a flock when its holder dies).
type Lock struct {
	f    *os.File
	path string // host path of the lock file
}

// Lock takes the store's single-writer lock: flock(LOCK_EX) on
// <store>/.lock, created if missing, then records this process's pid in
// the file for the next contender's error message.
//
// With wait false it returns an error wrapping ErrLocked, naming the
// holder's pid, when another process (or another Lock in this one) holds
// the lock. With wait true it retries until the lock is free and returns
// an error wrapping ctx.Err() when ctx ends first. It returns an error
// when ctx is already done, or when the lock file cannot be opened,
// locked or written.
func (s *Store) Lock(ctx context.Context, wait bool) (*Lock, error) {
	path := filepath.Join(s.dir, lockFile)
	f, err := os.OpenFile(s.fs(path), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := s.acquire(ctx, f, path, wait); err != nil {
		_ = f.Close() // nothing written; the error that matters is err
		return nil, err
	}
	if err := recordPid(f); err != nil {
		_ = f.Close() // releases the lock; the error that matters is err
		return nil, fmt.Errorf("lock %s: record pid: %w", path, err)
	}
	return &Lock{f: f, path: path}, nil
}

// acquire flocks f, polling while another holder has it and wait is set.
// It returns nil once locked, an error wrapping ErrLocked when the lock
// is held and wait is not set, an error wrapping ctx.Err() when ctx ends
// first, and the flock error otherwise.
func (s *Store) acquire(ctx context.Context, f *os.File, path string, wait bool) error {
	fd := int(f.Fd())
	delay := lockPollFirst
	busy := false
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("lock %s: %w", path, err)
		}
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EWOULDBLOCK):
			return fmt.Errorf("lock %s: %w", path, err)
		case !wait:
			return fmt.Errorf("lock %s: another nvidia-driverd (pid %s) holds the store: %w", path, holder(f), ErrLocked)
		}
		if !busy {
			busy = true
			s.step(StepLockBusy)
		}
		if err := sleep(ctx, delay); err != nil {
			return fmt.Errorf("lock %s: %w", path, err)
		}
		delay = min(2*delay, lockPollMax)
	}
}

// sleep waits for d. It returns nil after d, or ctx.Err() when ctx ends
// first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// holder returns the pid the holder recorded in the lock file f, or
// "unknown" when there is none yet (the holder records it just after
// locking) or it cannot be read.
func holder(f *os.File) string {
	data, err := io.ReadAll(io.NewSectionReader(f, 0, 32))
	pid := strings.TrimSpace(string(data))
	if err != nil || pid == "" {
		return "unknown"
	}
	return pid
}

// recordPid replaces the content of the locked file f with this
// process's pid. It returns the error of truncating or writing.
func recordPid(f *os.File) error {
	if err := f.Truncate(0); err != nil {
		return err
	}
	_, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return err
}

// Unlock clears the recorded pid and releases the lock. It returns nil
// when called again after a first call, and an error naming the lock file
// when the pid cannot be cleared or the file cannot be closed; the lock
// is released in every case.
func (l *Lock) Unlock() error {
	if l.f == nil {
		return nil
	}
	f := l.f
	l.f = nil
	err := errors.Join(f.Truncate(0), f.Close()) // closing the file releases the flock
	if err != nil {
		return fmt.Errorf("unlock %s: %w", l.path, err)
	}
	return nil
}
