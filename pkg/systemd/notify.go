package systemd

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify messages to the service manager's socket, the
// one $NOTIFY_SOCKET names (a path, or "@name" for an abstract socket). Not
// under systemd, every message is a no-op that succeeds.
//
// NewNotifier reads the environment once, unlike daemon.SdNotify, which
// reads it on every call: with unsetEnv, SdNotify would send the first
// message and drop every later one (READY=1 after STATUS=, WATCHDOG=1).
type Notifier struct {
	socket   string        // $NOTIFY_SOCKET as NewNotifier read it; "" when not under systemd
	watchdog time.Duration // how often to send WATCHDOG=1; 0 when the watchdog is off
}

// NewNotifier returns a Notifier for $NOTIFY_SOCKET and the watchdog that
// $WATCHDOG_USEC and $WATCHDOG_PID describe. With unsetEnv it removes
// those variables from the environment once read, so that processes the
// daemon runs (ldconfig, modprobe) do not inherit them.
func NewNotifier(unsetEnv bool) *Notifier {
	n := &Notifier{socket: os.Getenv("NOTIFY_SOCKET")}
	if d, err := daemon.SdWatchdogEnabled(unsetEnv); err == nil {
		n.watchdog = d / 2
	}
	if unsetEnv {
		_ = os.Unsetenv("NOTIFY_SOCKET") // only fails for an invalid name
	}
	return n
}

// Notify sends state, one or more newline-separated VAR=value lines, in
// one datagram, with the contract of daemon.SdNotify.
//
// It returns (false, nil) when not under systemd, (false, err) when the
// socket cannot be reached or written, and (true, nil) when sent.
func (n *Notifier) Notify(state string) (bool, error) {
	if n.socket == "" {
		return false, nil
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: n.socket, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("notify systemd: %w", err)
	}
	_, err = conn.Write([]byte(state))
	closeErr := conn.Close()
	if err != nil {
		return false, fmt.Errorf("notify systemd: %w", err)
	}
	if closeErr != nil {
		return false, fmt.Errorf("notify systemd: %w", closeErr)
	}
	return true, nil
}

// Ready tells systemd that the service is up ("READY=1"), with status as
// STATUS= when it is not empty. Only send it when the GPU is usable: units
// ordered After= the daemon start then.
//
// It returns nil when sent or not under systemd, and the error otherwise.
func (n *Notifier) Ready(status string) error {
	return n.send(daemon.SdNotifyReady, status)
}

// Status sets the status line `systemctl status` shows ("STATUS=...").
//
// It returns nil when sent or not under systemd, and the error otherwise.
func (n *Notifier) Status(status string) error {
	return n.send("", status)
}

// Reloading tells systemd that the service is reloading ("RELOADING=1"),
// with MONOTONIC_USEC= (CLOCK_MONOTONIC in microseconds, which systemd 253
// and later require for Type=notify-reload) and status as STATUS= when it
// is not empty. Send Ready when the reload is done.
//
// It returns nil when sent or not under systemd, and the error otherwise.
func (n *Notifier) Reloading(status string) error {
	state := daemon.SdNotifyReloading
	if mono := strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"); mono != "" {
		state += "\n" + mono
	}
	return n.send(state, status)
}

// Stopping tells systemd that the service is shutting down ("STOPPING=1"),
// with status as STATUS= when it is not empty.
//
// It returns nil when sent or not under systemd, and the error otherwise.
func (n *Notifier) Stopping(status string) error {
	return n.send(daemon.SdNotifyStopping, status)
}

// ExtendTimeout asks systemd to wait d longer, from now, for the current
// start, reload or stop to finish ("EXTEND_TIMEOUT_USEC=..."); a long
// download sends it as it goes.
//
// It returns an error for a d under one microsecond (which systemd would
// read as no time at all), nil when sent or not under systemd, and the
// error otherwise.
func (n *Notifier) ExtendTimeout(d time.Duration) error {
	if d < time.Microsecond {
		return fmt.Errorf("extend start timeout by %s: want at least 1µs", d)
	}
	return n.send("EXTEND_TIMEOUT_USEC="+strconv.FormatInt(d.Microseconds(), 10), "")
}

// Watchdog tells systemd that the service is alive ("WATCHDOG=1"). Send
// it every WatchdogInterval.
//
// It returns nil when sent or not under systemd, and the error otherwise.
func (n *Notifier) Watchdog() error {
	return n.send(daemon.SdNotifyWatchdog, "")
}

// WatchdogInterval returns how often to call Watchdog: half of
// $WATCHDOG_USEC when it is set and $WATCHDOG_PID is unset or names this
// process (daemon.SdWatchdogEnabled), as NewNotifier read them. It returns
// 0 when the watchdog is off, meant for another process, or malformed.
func (n *Notifier) WatchdogInterval() time.Duration {
	return n.watchdog
}

// send sends state followed by a STATUS= line when status is not empty.
// Newlines in status become spaces, so that a status built from an error
// message cannot add variables such as READY=1.
//
// It returns nil when sent or not under systemd, and the error otherwise.
func (n *Notifier) send(state, status string) error {
	if status != "" {
		line := "STATUS=" + strings.ReplaceAll(status, "\n", " ")
		if state == "" {
			state = line
		} else {
			state += "\n" + line
		}
	}
	_, err := n.Notify(state)
	return err
}

// Progress returns a status line for a transfer, such as "pulling
// 340/812 MiB", or "pulling 340 MiB" when total is not known (0 or less).
// Amounts are rounded down in the largest unit (B, KiB, MiB) that the
// larger of done and total reaches; a negative done counts as 0.
func Progress(verb string, done, total int64) string {
	done = max(done, 0)
	unit, size := progressUnit(max(done, total))
	if total <= 0 {
		return fmt.Sprintf("%s %d %s", verb, done/size, unit)
	}
	return fmt.Sprintf("%s %d/%d %s", verb, done/size, total/size, unit)
}

// progressUnit returns the name and size of the largest unit that n
// reaches, B at least.
func progressUnit(n int64) (string, int64) {
	switch {
	case n >= 1<<20:
		return "MiB", 1 << 20
	case n >= 1<<10:
		return "KiB", 1 << 10
	default:
		return "B", 1
	}
}
