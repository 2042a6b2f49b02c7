package systemd

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listenNotify listens on a unixgram socket named name (a path, or
// "@name" for an abstract one) and points NOTIFY_SOCKET at it.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return conn
}

// receive reads one datagram.
func receive(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("read notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotifier(t *testing.T) {
	t.Run("each call sends its exact datagram", func(t *testing.T) {
		sock := listenNotify(t, filepath.Join(t.TempDir(), "notify"))
		n := NewNotifier(false)
		for _, c := range []struct {
			send func() error
			want string
		}{
			{func() error { return n.Ready("driver 550.54.14 loaded") }, "READY=1\nSTATUS=driver 550.54.14 loaded"},
			{func() error { return n.Ready("") }, "READY=1"},
			{func() error { return n.Status(Progress("pulling", 340<<20, 812<<20)) }, "STATUS=pulling 340/812 MiB"},
			{func() error { return n.Stopping("unloading") }, "STOPPING=1\nSTATUS=unloading"},
			{func() error { return n.ExtendTimeout(90 * time.Second) }, "EXTEND_TIMEOUT_USEC=90000000"},
			{func() error { return n.ExtendTimeout(1500 * time.Nanosecond) }, "EXTEND_TIMEOUT_USEC=1"},
			{func() error { return n.Watchdog() }, "WATCHDOG=1"},
			{func() error { return n.Status("fetch: bad\nREADY=1") }, "STATUS=fetch: bad READY=1"},
		} {
			if err := c.send(); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, sock); got != c.want {
				t.Errorf("sent %q, want %q", got, c.want)
			}
		}
	})

	t.Run("reloading carries the monotonic clock", func(t *testing.T) {
		sock := listenNotify(t, filepath.Join(t.TempDir(), "notify"))
		if err := NewNotifier(false).Reloading("reconciling"); err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(receive(t, sock), "\n")
		if len(lines) != 3 || lines[0] != "RELOADING=1" || lines[2] != "STATUS=reconciling" {
			t.Fatalf("sent %q", lines)
		}
		usec, ok := strings.CutPrefix(lines[1], "MONOTONIC_USEC=")
		if v, err := strconv.ParseUint(usec, 10, 64); !ok || err != nil || v == 0 {
			t.Fatalf("second line %q is not MONOTONIC_USEC=<µs>", lines[1])
		}
	})

	t.Run("an abstract socket works", func(t *testing.T) {
		sock := listenNotify(t, fmt.Sprintf("@nvidia-driverd-test-%d", os.Getpid()))
		if err := NewNotifier(false).Ready("up"); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, sock); got != "READY=1\nSTATUS=up" {
			t.Fatalf("sent %q", got)
		}
	})

	t.Run("unsetEnv hides the socket from children but keeps sending", func(t *testing.T) {
		sock := listenNotify(t, filepath.Join(t.TempDir(), "notify"))
		t.Setenv("WATCHDOG_USEC", "4000000")
		n := NewNotifier(true)
		for _, v := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
			if got, ok := os.LookupEnv(v); ok {
				t.Errorf("%s=%q still set", v, got)
			}
		}
		for _, c := range []struct {
			send func() error
			want string
		}{
			{func() error { return n.Status("loading") }, "STATUS=loading"},
			{func() error { return n.Ready("loaded") }, "READY=1\nSTATUS=loaded"},
		} {
			if err := c.send(); err != nil {
				t.Fatal(err)
			}
			if got := receive(t, sock); got != c.want {
				t.Errorf("sent %q, want %q", got, c.want)
			}
		}
		if got := n.WatchdogInterval(); got != 2*time.Second {
			t.Errorf("WatchdogInterval = %s, want 2s", got)
		}
	})

	t.Run("without NOTIFY_SOCKET every call is a no-op", func(t *testing.T) {
		t.Setenv("NOTIFY_SOCKET", "")
		n := NewNotifier(false)
		for _, err := range []error{n.Ready("x"), n.Status("x"), n.Reloading("x"), n.Stopping("x"), n.ExtendTimeout(time.Second), n.Watchdog()} {
			if err != nil {
				t.Fatal(err)
			}
		}
		if sent, err := n.Notify("READY=1"); sent || err != nil {
			t.Fatalf("Notify = %v, %v; want false, nil", sent, err)
		}
	})

	t.Run("a socket nobody listens on is an error", func(t *testing.T) {
		t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent"))
		n := NewNotifier(false)
		if err := n.Ready("x"); err == nil || !strings.HasPrefix(err.Error(), "notify systemd: ") {
			t.Fatalf("err = %v", err)
		}
		if sent, err := n.Notify("READY=1"); sent || err == nil {
			t.Fatalf("Notify = %v, %v; want false and an error", sent, err)
		}
	})

	t.Run("a timeout extension under a microsecond is refused", func(t *testing.T) {
		sock := listenNotify(t, filepath.Join(t.TempDir(), "notify"))
		n := NewNotifier(false)
		if err := n.ExtendTimeout(999 * time.Nanosecond); err == nil {
			t.Fatal("want an error")
		}
		if err := n.Watchdog(); err != nil {
			t.Fatal(err)
		}
		if got := receive(t, sock); got != "WATCHDOG=1" {
			t.Fatalf("sent %q first, want nothing before WATCHDOG=1", got)
		}
	})
}

func TestNotifierWatchdogInterval(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	for _, c := range []struct {
		name       string
		usec, wpid string
		want       time.Duration
	}{
		{"half of WATCHDOG_USEC when WATCHDOG_PID is unset", "3000000", "", 1500 * time.Millisecond},
		{"half of WATCHDOG_USEC when WATCHDOG_PID is ours", "3000000", pid, 1500 * time.Millisecond},
		{"zero when WATCHDOG_PID is another process", "3000000", "1", 0},
		{"zero when WATCHDOG_USEC is unset", "", "", 0},
		{"zero when WATCHDOG_USEC is malformed", "soon", "", 0},
		{"zero when WATCHDOG_USEC is not positive", "0", "", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("WATCHDOG_USEC", c.usec)
			t.Setenv("WATCHDOG_PID", c.wpid)
			if c.wpid == "" {
				os.Unsetenv("WATCHDOG_PID")
			}
			if got := NewNotifier(false).WatchdogInterval(); got != c.want {
				t.Fatalf("WatchdogInterval = %s, want %s", got, c.want)
			}
		})
	}
}

func TestProgress(t *testing.T) {
	for _, c := range []struct {
		done, total int64
		want        string
	}{
		{340 << 20, 812 << 20, "pulling 340/812 MiB"},
		{340<<20 + 1<<19, 812<<20 + 1<<19, "pulling 340/812 MiB"},
		{0, 812 << 20, "pulling 0/812 MiB"},
		{512 << 10, 2 << 20, "pulling 0/2 MiB"},
		{300 << 10, 600 << 10, "pulling 300/600 KiB"},
		{12, 100, "pulling 12/100 B"},
		{340 << 20, 0, "pulling 340 MiB"},
		{340 << 20, -1, "pulling 340 MiB"},
		{-5, 100, "pulling 0/100 B"},
		{2000 << 20, 1000 << 20, "pulling 2000/1000 MiB"},
	} {
		if got := Progress("pulling", c.done, c.total); got != c.want {
			t.Errorf("Progress(%d, %d) = %q, want %q", c.done, c.total, got, c.want)
		}
	}
}
