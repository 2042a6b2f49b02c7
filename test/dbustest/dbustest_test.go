package dbustest_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/nvidia-driverd/nvidia-driverd/test/dbustest"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dial(ctx context.Context, t *testing.T, b *dbustest.Bus) *dbus.Conn {
	t.Helper()
	conn, err := b.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// busID returns the id of the daemon conn is connected to.
func busID(ctx context.Context, conn *dbus.Conn) (string, error) {
	var id string
	err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetId", 0).Store(&id)
	return id, err
}

func mustBusID(ctx context.Context, t *testing.T, conn *dbus.Conn) string {
	t.Helper()
	id, err := busID(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// waitClosed fails unless conn is dropped before ctx ends.
func waitClosed(ctx context.Context, t *testing.T, conn *dbus.Conn) {
	t.Helper()
	for conn.Connected() {
		select {
		case <-ctx.Done():
			t.Fatal("connection still open")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestDial(t *testing.T) {
	ctx := testContext(t)
	b := dbustest.New(t)
	conn := dial(ctx, t, b)
	mustBusID(ctx, t, conn)
	if conn.Names()[0] == "" {
		t.Fatal("no unique name after Hello")
	}

	connCtx, cancel := context.WithCancel(ctx)
	bound := dial(connCtx, t, b)
	cancel()
	waitClosed(ctx, t, bound)
}

func TestRestart(t *testing.T) {
	ctx := testContext(t)
	b := dbustest.New(t)
	old := dial(ctx, t, b)
	oldID := mustBusID(ctx, t, old)

	b.Restart()
	waitClosed(ctx, t, old)
	if id := mustBusID(ctx, t, dial(ctx, t, b)); id == oldID {
		t.Fatal("the same daemon answers after Restart")
	}
}

func TestStart(t *testing.T) {
	ctx := testContext(t)
	b := dbustest.New(t)
	first := b.Daemon()
	old := dial(ctx, t, b)
	oldID := mustBusID(ctx, t, old)

	second := b.Start()
	if b.Daemon() != second {
		t.Fatal("Daemon is not the one started last")
	}
	newID := mustBusID(ctx, t, dial(ctx, t, b))
	if newID == oldID {
		t.Fatal("a new connection reached the old daemon")
	}
	if id := mustBusID(ctx, t, old); id != oldID {
		t.Fatalf("the old connection moved to %s", id)
	}

	first.Stop()
	first.Stop()
	waitClosed(ctx, t, old)
	if id := mustBusID(ctx, t, dial(ctx, t, b)); id != newID {
		t.Fatalf("bus id %s after stopping the first daemon, want %s", id, newID)
	}
}

func TestNotifySocketHidden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	b := dbustest.New(t)
	b.Restart()
	_ = sock.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 256)
	if n, err := sock.Read(buf); err == nil {
		t.Fatalf("dbus-daemon notified %q", buf[:n])
	}
}

// status has the shape of nextboot.Status.
type status struct {
	LastCheckedTime int64
	Progress        float64
	Operation       string
	NewVersion      string
	NewSize         int64
}

func getStatus(ctx context.Context, conn *dbus.Conn) (status, error) {
	var s status
	err := conn.Object("com.coreos.update1", "/com/coreos/update1").
		CallWithContext(ctx, "com.coreos.update1.Manager.GetStatus", 0).
		Store(&s.LastCheckedTime, &s.Progress, &s.Operation, &s.NewVersion, &s.NewSize)
	return s, err
}

func TestUpdateEngine(t *testing.T) {
	ctx := testContext(t)
	b := dbustest.New(t)
	conn := dial(ctx, t, b)
	signals := make(chan *dbus.Signal, 8)
	conn.Signal(signals)
	if err := conn.AddMatchSignalContext(ctx, dbus.WithMatchInterface("com.coreos.update1.Manager"), dbus.WithMatchMember("StatusUpdate")); err != nil {
		t.Fatal(err)
	}

	idle := status{LastCheckedTime: 1700000000, Operation: "UPDATE_STATUS_IDLE"}
	f := dbustest.NewUpdateEngine(t, b, idle)
	if s, err := getStatus(ctx, conn); err != nil || s != idle {
		t.Fatalf("GetStatus = %+v, %v; want %+v", s, err, idle)
	}

	downloading := status{LastCheckedTime: 1, Progress: 0.5, Operation: "UPDATE_STATUS_DOWNLOADING", NewVersion: "4081.2.0", NewSize: 42}
	f.Set(downloading)
	if s, err := getStatus(ctx, conn); err != nil || s != downloading {
		t.Fatalf("GetStatus after Set = %+v, %v", s, err)
	}

	staged := status{LastCheckedTime: 2, Progress: 1, Operation: "UPDATE_STATUS_UPDATED_NEED_REBOOT", NewVersion: "4081.2.0", NewSize: 42}
	f.Emit(t, staged)
	want := []any{staged.LastCheckedTime, staged.Progress, staged.Operation, staged.NewVersion, staged.NewSize}
	for got := false; !got; {
		select {
		case sig := <-signals:
			if sig.Name != "com.coreos.update1.Manager.StatusUpdate" {
				continue // NameAcquired
			}
			if sig.Path != "/com/coreos/update1" || !slices.Equal(sig.Body, want) {
				t.Fatalf("signal %+v, want StatusUpdate %v", sig, want)
			}
			got = true
		case <-ctx.Done():
			t.Fatal("no StatusUpdate")
		}
	}
	if s, err := getStatus(ctx, conn); err != nil || s != staged {
		t.Fatalf("GetStatus after Emit = %+v, %v", s, err)
	}

	f.Stop()
	for {
		var has bool
		if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, "com.coreos.update1").Store(&has); err != nil {
			t.Fatal(err)
		}
		if !has {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}
