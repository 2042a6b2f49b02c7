package nextboot

import (
	"context"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/nvidia-driverd/nvidia-driverd/test/dbustest"
)

// The tests run a real dbus-daemon and a fake update_engine on it, from
// test/dbustest.

// waitStatus reads statuses until one satisfies ok, failing after 20 s.
func waitStatus(ctx context.Context, t *testing.T, ch <-chan Status, what string, ok func(Status) bool) Status {
	t.Helper()
	var seen []Status
	for {
		select {
		case s, open := <-ch:
			if !open {
				t.Fatalf("watch ended waiting for %s; saw %+v", what, seen)
			}
			if ok(s) {
				return s
			}
			seen = append(seen, s)
		case <-ctx.Done():
			t.Fatalf("no status with %s; saw %+v", what, seen)
		}
	}
}

// monitor makes a connection a bus monitor for rule and returns the
// messages it sees.
func monitor(t *testing.T, b *dbustest.Bus, rule string) <-chan *dbus.Message {
	t.Helper()
	conn, err := b.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	call := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.Monitoring.BecomeMonitor", 0, []string{rule}, uint32(0))
	if call.Err != nil {
		t.Fatalf("become a monitor: %v", call.Err)
	}
	// From here on every message is a copy to read, none to answer. The
	// tests start what they monitor only after this.
	msgs := make(chan *dbus.Message, 64)
	conn.Eavesdrop(msgs)
	out := make(chan *dbus.Message, 64)
	go func() {
		for m := range msgs {
			if m.Type == dbus.TypeMethodCall {
				out <- m
			}
		}
	}()
	return out
}
