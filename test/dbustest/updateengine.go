package dbustest

import (
	"sync"
	"testing"

	"github.com/godbus/dbus/v5"
)

// update_engine's D-Bus names, written out: pkg/nextboot's own tests
// use this package, so it cannot import pkg/nextboot.
const (
	engineName   = "com.coreos.update1"
	enginePath   = dbus.ObjectPath("/com/coreos/update1")
	engineIface  = "com.coreos.update1.Manager"
	engineSignal = engineIface + ".StatusUpdate"
)

// EngineStatus is satisfied by nextboot.Status.
type EngineStatus interface{ ~engineStatus }

// engineStatus is update_engine's status, in the order GetStatus and
// StatusUpdate carry it (xdssx).
type engineStatus = struct {
	LastCheckedTime int64
	Progress        float64
	Operation       string
	NewVersion      string
	NewSize         int64
}

// UpdateEngine is a fake update_engine: it owns com.coreos.update1 on a
// bus and answers GetStatus with its status.
type UpdateEngine[S EngineStatus] struct {
	conn *dbus.Conn
	mu   sync.Mutex
	st   S
}

// NewUpdateEngine connects to b, exports GetStatus and takes the bus name.
// The connection is closed at cleanup.
func NewUpdateEngine[S EngineStatus](t testing.TB, b *Bus, st S) *UpdateEngine[S] {
	t.Helper()
	conn, err := b.Connect()
	if err != nil {
		t.Fatalf("connect fake update_engine: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &UpdateEngine[S]{conn: conn, st: st}
	getStatus := func() (int64, float64, string, string, int64, *dbus.Error) {
		f.mu.Lock()
		s := engineStatus(f.st)
		f.mu.Unlock()
		return s.LastCheckedTime, s.Progress, s.Operation, s.NewVersion, s.NewSize, nil
	}
	if err := conn.ExportMethodTable(map[string]any{"GetStatus": getStatus}, enginePath, engineIface); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(engineName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s: reply %v, %v", engineName, reply, err)
	}
	return f
}

// Set changes the status GetStatus answers, without a signal.
func (f *UpdateEngine[S]) Set(st S) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
}

// Emit changes the status and sends StatusUpdate, as update_engine does.
func (f *UpdateEngine[S]) Emit(t testing.TB, st S) {
	t.Helper()
	f.Set(st)
	s := engineStatus(st)
	if err := f.conn.Emit(enginePath, engineSignal,
		s.LastCheckedTime, s.Progress, s.Operation, s.NewVersion, s.NewSize); err != nil {
		t.Fatal(err)
	}
}

// Stop leaves the bus, as update_engine does when it exits.
func (f *UpdateEngine[S]) Stop() { f.conn.Close() }
