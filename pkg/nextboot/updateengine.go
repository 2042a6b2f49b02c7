// Package nextboot tells what the next boot of a host will run: on
// Flatcar and CoreOS Container Linux it follows update_engine over the
// system D-Bus for a staged OS update; on other hosts KernelWatcher
// reports kernels newly installed under /lib/modules.
package nextboot

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/godbus/dbus/v5"
	"go.uber.org/zap"
)

// update_engine's D-Bus names.
const (
	BusName    = "com.coreos.update1"
	ObjectPath = dbus.ObjectPath("/com/coreos/update1")
	Interface  = "com.coreos.update1.Manager"
)

// Signal and method names, and the bus driver's.
const (
	methodGetStatus    = Interface + ".GetStatus"
	memberStatusUpdate = "StatusUpdate"
	signalStatusUpdate = Interface + "." + memberStatusUpdate
	busDriver          = "org.freedesktop.DBus"
	memberOwnerChanged = "NameOwnerChanged"
	signalOwnerChanged = busDriver + "." + memberOwnerChanged
)

// The operations update_engine reports in Status.Operation.
const (
	StatusIdle                = "UPDATE_STATUS_IDLE"
	StatusCheckingForUpdate   = "UPDATE_STATUS_CHECKING_FOR_UPDATE"
	StatusUpdateAvailable     = "UPDATE_STATUS_UPDATE_AVAILABLE"
	StatusDownloading         = "UPDATE_STATUS_DOWNLOADING"
	StatusVerifying           = "UPDATE_STATUS_VERIFYING"
	StatusFinalizing          = "UPDATE_STATUS_FINALIZING"
	StatusUpdatedNeedReboot   = "UPDATE_STATUS_UPDATED_NEED_REBOOT"
	StatusReportingErrorEvent = "UPDATE_STATUS_REPORTING_ERROR_EVENT"
)

// Status is update_engine's status: GetStatus's reply and the StatusUpdate
// signal's body.
type Status struct {
	LastCheckedTime int64   // when update_engine last checked for an update, Unix seconds
	Progress        float64 // progress of Operation, 0 to 1
	Operation       string  // one of the Status* constants
	NewVersion      string  // the OS version being installed or staged
	NewSize         int64   // size of the update payload in bytes
}

// Staged returns the OS version the next boot runs when an update is
// installed and waits for the reboot, and "" otherwise.
func (s Status) Staged() string {
	if s.Operation != StatusUpdatedNeedReboot {
		return ""
	}
	return s.NewVersion
}

// parseStatus reads the five values (xdssx) of GetStatus and StatusUpdate.
func parseStatus(body []any) (Status, error) {
	var s Status
	if len(body) != 5 {
		return s, fmt.Errorf("update_engine status has %d values, want 5", len(body))
	}
	var ok [5]bool
	s.LastCheckedTime, ok[0] = body[0].(int64)
	s.Progress, ok[1] = body[1].(float64)
	s.Operation, ok[2] = body[2].(string)
	s.NewVersion, ok[3] = body[3].(string)
	s.NewSize, ok[4] = body[4].(int64)
	for i, good := range ok {
		if !good {
			return Status{}, fmt.Errorf("update_engine status value %d is %T, want signature xdssx", i, body[i])
		}
	}
	return s, nil
}

// GetStatus asks update_engine on conn for its status. It does not start
// update_engine when it is not running.
func GetStatus(ctx context.Context, conn *dbus.Conn) (Status, error) {
	call := conn.Object(BusName, ObjectPath).CallWithContext(ctx, methodGetStatus, dbus.FlagNoAutoStart)
	if call.Err != nil {
		return Status{}, fmt.Errorf("%s on %s: %w", methodGetStatus, BusName, call.Err)
	}
	s, err := parseStatus(call.Body)
	if err != nil {
		return Status{}, fmt.Errorf("%s on %s: %w", methodGetStatus, BusName, err)
	}
	return s, nil
}

// SystemBus connects to the system bus: $DBUS_SYSTEM_BUS_ADDRESS, else
// /run/dbus/system_bus_socket.
func SystemBus() (*dbus.Conn, error) {
	conn, err := dbus.ConnectSystemBus()
	if err != nil {
		return nil, fmt.Errorf("connect to the system bus: %w", err)
	}
	return conn, nil
}

// Watcher follows update_engine's status through restarts of
// update_engine and of the bus.
type Watcher struct {
	// Connect opens a new connection to the bus update_engine is on
	// (SystemBus); each is closed when it is done with.
	Connect func() (*dbus.Conn, error)
	// Log receives reconnects and failures; nil logs nothing.
	Log *zap.Logger
	// MinDelay and MaxDelay bound the waits, doubling from one to the
	// other, before reconnecting and before asking an absent or failing
	// update_engine again; zero means 1 s and 1 min.
	MinDelay, MaxDelay time.Duration
	// CallTimeout bounds one GetStatus call; zero means 25 s.
	CallTimeout time.Duration
}

// Watch follows update_engine on the buses connect opens, with the
// Watcher's defaults; see Watcher.Watch.
func Watch(ctx context.Context, connect func() (*dbus.Conn, error)) <-chan Status {
	return (&Watcher{Connect: connect}).Watch(ctx)
}

// Watch returns update_engine's statuses: GetStatus's answer at the start,
// every StatusUpdate signal, and GetStatus's answer again whenever
// update_engine takes its bus name anew (a restart). When update_engine is
// absent or fails, it is asked again with a backoff; when the connection
// drops, a new one is opened with a backoff. Watch never gives up; the
// channel is closed once ctx ends.
//
// The channel holds the latest status only: a status not yet received is
// replaced by a newer one, so a slow reader sees where update_engine is
// now, not every step it took.
func (w *Watcher) Watch(ctx context.Context) <-chan Status {
	out := make(chan Status, 1)
	go func() {
		defer close(out)
		log := w.logger()
		failures := 0
		for {
			conn, err := w.Connect()
			if err == nil {
				failures = 0
				err = w.session(ctx, conn, out)
				_ = conn.Close() // the session is over either way
			}
			if ctx.Err() != nil {
				return
			}
			failures++
			d := w.backoff(failures, log.Warn, "update_engine: not connected to the bus; reconnecting", err)
			if !sleep(ctx, d) {
				return
			}
		}
	}()
	return out
}

// session follows update_engine on one connection until it drops (an
// error) or ctx ends (ctx's error).
func (w *Watcher) session(ctx context.Context, conn *dbus.Conn, out chan Status) error {
	log := w.logger()
	sigs := make(chan *dbus.Signal, 64)
	conn.Signal(sigs)
	defer conn.RemoveSignal(sigs)
	if err := conn.AddMatchSignalContext(ctx, dbus.WithMatchSender(BusName), dbus.WithMatchObjectPath(ObjectPath),
		dbus.WithMatchInterface(Interface), dbus.WithMatchMember(memberStatusUpdate)); err != nil {
		return fmt.Errorf("subscribe to %s: %w", signalStatusUpdate, err)
	}
	if err := conn.AddMatchSignalContext(ctx, dbus.WithMatchSender(busDriver), dbus.WithMatchInterface(busDriver),
		dbus.WithMatchMember(memberOwnerChanged), dbus.WithMatchArg(0, BusName)); err != nil {
		return fmt.Errorf("subscribe to %s for %s: %w", signalOwnerChanged, BusName, err)
	}

	retry := time.NewTimer(time.Hour) // armed only while asking again
	retry.Stop()
	defer retry.Stop()
	failures := 0
	ask := func() {
		cctx, cancel := context.WithTimeout(ctx, w.callTimeout())
		s, err := GetStatus(cctx, conn)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			retry.Reset(w.backoff(failures, log.Info, "update_engine: no status yet; asking again", err))
			return
		}
		failures = 0
		retry.Stop()
		offer(out, s)
	}

	ask()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-retry.C:
			ask()
		case sig, ok := <-sigs:
			if !ok {
				return errors.New("the bus closed the connection")
			}
			switch sig.Name {
			case signalStatusUpdate:
				// Any peer can send a signal to this connection, whatever
				// the match rules, so the signal is only a hint: the status
				// comes from GetStatus to update_engine's well-known name,
				// which only update_engine answers.
				if sig.Path != ObjectPath {
					continue
				}
				if _, err := parseStatus(sig.Body); err != nil {
					log.Warn("update_engine: bad StatusUpdate", zap.String("sender", sig.Sender), zap.Error(err))
					continue
				}
				ask()
			case signalOwnerChanged:
				if sig.Sender != busDriver || len(sig.Body) != 3 {
					continue
				}
				name, _ := sig.Body[0].(string)
				owner, _ := sig.Body[2].(string)
				if name != BusName {
					continue
				}
				if owner == "" {
					log.Info("update_engine left the bus")
					retry.Stop() // its return is announced the same way
					failures = 0
					continue
				}
				log.Info("update_engine (re)appeared on the bus", zap.String("owner", owner))
				failures = 0
				ask()
			}
		}
	}
}

// backoff returns the wait before try failures+1 and logs it: at first
// with first, later at debug level, so that a long outage does not flood
// the journal.
func (w *Watcher) backoff(failures int, first func(string, ...zap.Field), msg string, err error) time.Duration {
	d := w.delay(failures)
	l := w.logger().Debug
	if failures == 1 {
		l = first
	}
	l(msg, zap.Error(err), zap.Duration("in", d))
	return d
}

// offer puts s on out, replacing a status not yet received. Watch is the
// only sender, so the loop ends after at most one replacement.
func offer(out chan Status, s Status) {
	for {
		select {
		case out <- s:
			return
		default:
		}
		select {
		case <-out:
		default:
		}
	}
}

func (w *Watcher) logger() *zap.Logger {
	if w.Log == nil {
		return zap.NewNop()
	}
	return w.Log
}

func (w *Watcher) callTimeout() time.Duration {
	if w.CallTimeout > 0 {
		return w.CallTimeout
	}
	return 25 * time.Second
}

// delay is the wait after n failures in a row: MinDelay doubled n-1
// times, at most MaxDelay.
func (w *Watcher) delay(n int) time.Duration {
	lo, hi := w.MinDelay, w.MaxDelay
	if lo <= 0 {
		lo = time.Second
	}
	if hi <= 0 {
		hi = time.Minute
	}
	return backoff(lo, hi, n)
}

// backoff is lo doubled n-1 times, at most hi.
func backoff(lo, hi time.Duration, n int) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// sleep waits d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
