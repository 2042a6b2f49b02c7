package systemd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"sync"
	"syscall"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// Job results and D-Bus names that Units interprets.
const (
	// jobDone is the only job result that means success.
	jobDone = "done"
	// errNoSuchUnit is what systemd answers when asked to stop a unit it
	// has not loaded, or to start one it cannot find.
	errNoSuchUnit = "org.freedesktop.systemd1.NoSuchUnit"
	// jobMode replaces conflicting queued jobs, as systemctl does by default.
	jobMode = "replace"
	// connCheckInterval is how often a wait for a job result checks that
	// the connection is still open: go-systemd delivers the result on a
	// channel and says nothing when the connection closes under it.
	connCheckInterval = 500 * time.Millisecond
)

// errConnLost says that the connection closed before a job result arrived.
var errConnLost = errors.New("connection to systemd closed")

// Connector opens a connection to systemd's manager. SystemBus is the one
// production uses; tests pass one that dials a private bus.
//
// The context bounds nothing after the connection is made: Units passes one
// that is never cancelled, since go-systemd closes a connection when the
// context it was opened with ends.
type Connector func(ctx context.Context) (*sddbus.Conn, error)

// SystemBus connects to systemd over the system bus, or, when that fails
// and we are root, over systemd's private socket /run/systemd/private (so
// units can be started before dbus.service is up).
//
// It returns (conn, nil) when connected and (nil, err) otherwise.
func SystemBus(ctx context.Context) (*sddbus.Conn, error) {
	return sddbus.NewWithContext(ctx)
}

// Units starts and stops systemd units over D-Bus and waits for each job's
// result. It keeps one connection, opened on first use, and opens it again
// once per call when the call finds it closed (dbus-daemon or systemd
// restarted). It is safe for concurrent use.
type Units struct {
	connect Connector

	mu   sync.Mutex
	conn *sddbus.Conn
}

// NewUnits returns Units that connect with connect; a nil connect means
// SystemBus. No connection is made until the first call.
func NewUnits(connect Connector) *Units {
	if connect == nil {
		connect = SystemBus
	}
	return &Units{connect: connect}
}

// JobError reports a job that ended with a result other than "done", with
// the unit's state after it, so that the operator sees why.
type JobError struct {
	Op     string // "start" or "stop"
	Unit   string // the unit name, e.g. nvidia-persistenced.service
	Result string // the job result: failed, timeout, canceled, dependency or skipped

	ActiveState string // the unit's ActiveState after the job, e.g. failed
	SubState    string // the unit's SubState after the job, e.g. failed
	UnitResult  string // the unit's own Result, e.g. exit-code; empty for unit types without one
	StateErr    error  // why the state could not be read; nil when it was
}

// Error returns "start nvidia-persistenced.service: job failed:
// ActiveState=failed SubState=failed Result=exit-code", or, when the state
// could not be read, the job result and the reason.
func (e *JobError) Error() string {
	if e.StateErr != nil {
		return fmt.Sprintf("%s %s: job %s (read unit state: %v)", e.Op, e.Unit, e.Result, e.StateErr)
	}
	return fmt.Sprintf("%s %s: job %s: ActiveState=%s SubState=%s Result=%s",
		e.Op, e.Unit, e.Result, e.ActiveState, e.SubState, e.UnitResult)
}

// Start starts unit in mode "replace" and waits until systemd reports the
// job's result or ctx ends.
//
// It returns nil when the job's result is "done"; a *JobError naming the
// unit and its ActiveState, SubState and Result when the result is anything
// else; and an error wrapping ctx.Err() when ctx ends first (the job keeps
// running in systemd). Other errors (connecting, the StartUnit call itself,
// e.g. org.freedesktop.systemd1.NoSuchUnit for a unit that does not exist)
// are returned wrapped with the unit's name.
func (u *Units) Start(ctx context.Context, unit string) error {
	return u.job(ctx, "start", (*sddbus.Conn).StartUnitContext, unit)
}

// Stop stops unit in mode "replace" and waits until systemd reports the
// job's result or ctx ends.
//
// It returns nil when the job's result is "done" and when systemd has no
// such unit loaded (stopping what is not there is success); otherwise it
// returns errors as Start does.
func (u *Units) Stop(ctx context.Context, unit string) error {
	err := u.job(ctx, "stop", (*sddbus.Conn).StopUnitContext, unit)
	if isDBusError(err, errNoSuchUnit) {
		return nil
	}
	return err
}

// ActiveState returns the unit's ActiveState property: active, reloading,
// inactive, failed, activating or deactivating. systemd answers "inactive"
// for a unit it does not know.
//
// It returns ("", err) when systemd cannot be asked or the property is not
// a string.
func (u *Units) ActiveState(ctx context.Context, unit string) (string, error) {
	var state string
	err := u.withConn(ctx, func(conn *sddbus.Conn) error {
		prop, err := conn.GetUnitPropertyContext(ctx, unit, "ActiveState")
		if err != nil {
			return err
		}
		s, ok := prop.Value.Value().(string)
		if !ok {
			return fmt.Errorf("ActiveState has type %s, want a string", prop.Value.Signature())
		}
		state = s
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("read ActiveState of %s: %w", unit, err)
	}
	return state, nil
}

// Close closes the connection, if one is open. A later call opens a new one.
func (u *Units) Close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.conn != nil {
		u.conn.Close()
		u.conn = nil
	}
}

// enqueueFunc is (*sddbus.Conn).StartUnitContext or StopUnitContext.
type enqueueFunc func(conn *sddbus.Conn, ctx context.Context, name, mode string, ch chan<- string) (int, error)

// job runs one start or stop job and turns a result other than "done" into
// a *JobError.
func (u *Units) job(ctx context.Context, op string, enqueue enqueueFunc, unit string) error {
	err := u.withConn(ctx, func(conn *sddbus.Conn) error {
		result, err := runJob(ctx, conn, enqueue, unit)
		if err != nil {
			return err
		}
		if result != jobDone {
			return jobError(ctx, conn, op, unit, result)
		}
		return nil
	})
	var jobErr *JobError
	if err == nil || errors.As(err, &jobErr) {
		return err
	}
	return fmt.Errorf("%s %s: %w", op, unit, err)
}

// runJob enqueues a job for unit and waits for its result.
//
// It returns (result, nil) when systemd reports one, ("", errConnLost)
// when the connection closes first, ("", err wrapping ctx.Err()) when ctx
// ends first, and ("", err) when the job cannot be enqueued.
func runJob(ctx context.Context, conn *sddbus.Conn, enqueue enqueueFunc, unit string) (string, error) {
	// Buffered: go-systemd sends the result while holding its job lock, so
	// a caller that stopped waiting must not block it.
	results := make(chan string, 1)
	if _, err := enqueue(conn, ctx, unit, jobMode, results); err != nil {
		return "", err
	}
	tick := time.NewTicker(connCheckInterval)
	defer tick.Stop()
	for {
		select {
		case result := <-results:
			return result, nil
		case <-ctx.Done():
			return "", fmt.Errorf("wait for job result: %w", ctx.Err())
		case <-tick.C:
			if !conn.Connected() {
				return "", errConnLost
			}
		}
	}
}

// jobError describes a failed job with the unit's state after it.
func jobError(ctx context.Context, conn *sddbus.Conn, op, unit, result string) *JobError {
	e := &JobError{Op: op, Unit: unit, Result: result}
	e.ActiveState, e.SubState, e.UnitResult, e.StateErr = unitState(ctx, conn, unit)
	return e
}

// unitState reads a unit's ActiveState and SubState, and its Result when
// its type has one.
//
// It returns the three values and nil, or what it could read and the first
// error.
func unitState(ctx context.Context, conn *sddbus.Conn, unit string) (active, sub, result string, err error) {
	props, err := conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return "", "", "", err
	}
	active, _ = props["ActiveState"].(string)
	sub, _ = props["SubState"].(string)
	iface, ok := resultInterface(unit)
	if !ok {
		return active, sub, "", nil
	}
	prop, err := conn.GetUnitTypePropertyContext(ctx, unit, iface, "Result")
	if err != nil {
		return active, sub, "", err
	}
	result, _ = prop.Value.Value().(string)
	return active, sub, result, nil
}

// resultInterface returns the systemd interface (without the
// org.freedesktop.systemd1. prefix) that carries the Result property of
// units with unit's suffix, and false for unit types without one (target,
// device, slice).
func resultInterface(unit string) (string, bool) {
	switch path.Ext(unit) {
	case ".service":
		return "Service", true
	case ".socket":
		return "Socket", true
	case ".mount":
		return "Mount", true
	case ".automount":
		return "Automount", true
	case ".swap":
		return "Swap", true
	case ".timer":
		return "Timer", true
	case ".path":
		return "Path", true
	case ".scope":
		return "Scope", true
	default:
		return "", false
	}
}

// withConn calls fn with the open connection. When fn fails because the
// connection closed, it connects again and calls fn once more.
//
// It returns fn's error, or the error connecting.
func (u *Units) withConn(ctx context.Context, fn func(*sddbus.Conn) error) error {
	conn, err := u.open(ctx, nil)
	if err != nil {
		return err
	}
	err = fn(conn)
	if err == nil || ctx.Err() != nil || !connLost(conn, err) {
		return err
	}
	conn, err = u.open(ctx, conn)
	if err != nil {
		return err
	}
	return fn(conn)
}

// open returns the open connection, connecting when there is none, when it
// is closed, or when it is stale (the one a caller just found broken).
//
// It returns (conn, nil), or (nil, err) when connecting fails.
func (u *Units) open(ctx context.Context, stale *sddbus.Conn) (*sddbus.Conn, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.conn != nil && u.conn != stale && u.conn.Connected() {
		return u.conn, nil
	}
	if u.conn != nil {
		u.conn.Close()
		u.conn = nil
	}
	conn, err := dial(ctx, u.connect)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd: %w", err)
	}
	u.conn = conn
	return conn, nil
}

// dial connects and subscribes to systemd's signals, bounded by ctx. The
// connection itself gets a context that is never cancelled, because
// godbus closes a connection when its context ends.
//
// It returns (conn, nil), (nil, ctx.Err()) when ctx ends first (a
// connection made later is closed), or (nil, err).
func dial(ctx context.Context, connect Connector) (*sddbus.Conn, error) {
	type dialed struct {
		conn *sddbus.Conn
		err  error
	}
	out := make(chan dialed, 1)
	go func() {
		conn, err := connectSubscribed(context.WithoutCancel(ctx), connect)
		out <- dialed{conn, err}
	}()
	select {
	case d := <-out:
		return d.conn, d.err
	case <-ctx.Done():
		go func() {
			if d := <-out; d.conn != nil {
				d.conn.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// connectSubscribed connects and asks systemd to send job signals. Newer
// systemd sends JobRemoved to the client that queued the job anyway; older
// systemd sends signals only to subscribers.
//
// It returns (conn, nil) or (nil, err).
func connectSubscribed(ctx context.Context, connect Connector) (*sddbus.Conn, error) {
	conn, err := connect(ctx)
	if err != nil {
		return nil, err
	}
	if err := conn.Subscribe(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("subscribe to job signals: %w", err)
	}
	return conn, nil
}

// connLost reports whether err means that conn can no longer be used. An
// answer from systemd (a job result, a D-Bus error reply) never does: it
// must not be retried even when the connection closed right after it.
func connLost(conn *sddbus.Conn, err error) bool {
	var jobErr *JobError
	if _, reply := dbusErrorName(err); reply || errors.As(err, &jobErr) {
		return false
	}
	return !conn.Connected() ||
		errors.Is(err, errConnLost) ||
		errors.Is(err, dbus.ErrClosed) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNRESET)
}

// isDBusError reports whether err is a D-Bus error reply named name.
func isDBusError(err error, name string) bool {
	got, ok := dbusErrorName(err)
	return ok && got == name
}

// dbusErrorName returns the name of the D-Bus error reply in err's chain
// and true, or "" and false when there is none. godbus returns replies as
// dbus.Error values, and some errors as *dbus.Error.
func dbusErrorName(err error) (string, bool) {
	var byValue dbus.Error
	if errors.As(err, &byValue) {
		return byValue.Name, true
	}
	var byPointer *dbus.Error
	if errors.As(err, &byPointer) {
		return byPointer.Name, true
	}
	return "", false
}
