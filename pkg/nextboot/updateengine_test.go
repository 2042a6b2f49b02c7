package nextboot

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/nvidia-driverd/nvidia-driverd/test/dbustest"
)

func staged(v string) func(Status) bool {
	return func(s Status) bool { return s.Staged() == v }
}

// watch starts a Watcher on b with short backoffs.
func watch(ctx context.Context, b *dbustest.Bus) <-chan Status {
	w := &Watcher{Connect: b.Connect, MinDelay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond}
	return w.Watch(ctx)
}

func TestWatch(t *testing.T) {
	t.Run("the status at start, then every StatusUpdate", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b := dbustest.New(t)
		f := dbustest.NewUpdateEngine(t, b, Status{LastCheckedTime: 1700000000, Operation: StatusIdle})
		ch := watch(ctx, b)
		first := waitStatus(ctx, t, ch, "IDLE", func(s Status) bool { return true })
		if first != (Status{LastCheckedTime: 1700000000, Operation: StatusIdle}) {
			t.Fatalf("first status %+v", first)
		}
		f.Emit(t, Status{LastCheckedTime: 1700000100, Progress: 0.5, Operation: StatusDownloading, NewVersion: "4081.2.0", NewSize: 300 << 20})
		got := waitStatus(ctx, t, ch, "DOWNLOADING", func(s Status) bool { return s.Operation == StatusDownloading })
		if got.NewVersion != "4081.2.0" || got.Progress != 0.5 || got.NewSize != 300<<20 || got.Staged() != "" {
			t.Fatalf("%+v", got)
		}
		f.Emit(t, Status{LastCheckedTime: 1700000200, Progress: 1, Operation: StatusUpdatedNeedReboot, NewVersion: "4081.2.0", NewSize: 300 << 20})
		waitStatus(ctx, t, ch, "4081.2.0 staged", staged("4081.2.0"))
	})

	t.Run("a StatusUpdate sent by another peer straight to the watcher is not believed", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b := dbustest.New(t)
		f := dbustest.NewUpdateEngine(t, b, Status{Operation: StatusIdle})
		var watcherName string
		connect := func() (*dbus.Conn, error) {
			c, err := b.Connect()
			if err == nil {
				watcherName = c.Names()[0]
			}
			return c, err
		}
		ch := (&Watcher{Connect: connect, MinDelay: time.Hour}).Watch(ctx)
		waitStatus(ctx, t, ch, "IDLE", func(s Status) bool { return s.Operation == StatusIdle })

		// A unicast signal reaches the watcher whatever its match rules say.
		spoofer, err := b.Dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer spoofer.Close()
		body := []any{int64(0), float64(1), StatusUpdatedNeedReboot, "6666.6.6", int64(1 << 40)}
		msg := &dbus.Message{Type: dbus.TypeSignal, Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldPath:        dbus.MakeVariant(ObjectPath),
			dbus.FieldInterface:   dbus.MakeVariant(Interface),
			dbus.FieldMember:      dbus.MakeVariant(memberStatusUpdate),
			dbus.FieldDestination: dbus.MakeVariant(watcherName),
			dbus.FieldSignature:   dbus.MakeVariant(dbus.SignatureOf(body...)),
		}, Body: body}
		if call := spoofer.Send(msg, nil); call.Err != nil {
			t.Fatal(call.Err)
		}
		// The real update_engine then stages 4081.2.0; the spoofed version
		// must never have been reported before it.
		f.Emit(t, Status{Operation: StatusUpdatedNeedReboot, NewVersion: "4081.2.0"})
		for s := range ch {
			if s.NewVersion == "6666.6.6" {
				t.Fatalf("the spoofed status was reported: %+v", s)
			}
			if s.Staged() == "4081.2.0" {
				break
			}
		}
	})

	t.Run("a restarted update_engine is asked for its status again", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b := dbustest.New(t)
		f := dbustest.NewUpdateEngine(t, b, Status{Operation: StatusIdle})
		ch := (&Watcher{Connect: b.Connect, MinDelay: time.Hour}).Watch(ctx)
		waitStatus(ctx, t, ch, "IDLE", func(s Status) bool { return s.Operation == StatusIdle })
		f.Stop()
		// The new instance finds a staged update and sends no signal about
		// it: only GetStatus can tell.
		dbustest.NewUpdateEngine(t, b, Status{Operation: StatusUpdatedNeedReboot, NewVersion: "4081.2.0"})
		waitStatus(ctx, t, ch, "4081.2.0 staged", staged("4081.2.0"))
	})

	t.Run("an update_engine absent at the start is followed once it appears", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b := dbustest.New(t)
		calls := monitor(t, b, "type='method_call',member='GetStatus'")
		// No retry within the test: only the name's appearance can make
		// the watcher ask again.
		ch := (&Watcher{Connect: b.Connect, MinDelay: time.Hour}).Watch(ctx)
		select {
		case <-calls: // asked, and got ServiceUnknown
		case <-ctx.Done():
			t.Fatal("the watcher never asked for the status")
		}
		probe, err := b.Connect()
		if err != nil {
			t.Fatal(err)
		}
		defer probe.Close()
		if _, err := GetStatus(ctx, probe); err == nil || !strings.Contains(err.Error(), BusName) {
			t.Fatalf("GetStatus with no update_engine = %v", err)
		}
		dbustest.NewUpdateEngine(t, b, Status{Operation: StatusUpdatedNeedReboot, NewVersion: "4081.2.0"})
		waitStatus(ctx, t, ch, "4081.2.0 staged", staged("4081.2.0"))
	})

	t.Run("after the bus restarts it reconnects and asks again", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b := dbustest.New(t)
		dbustest.NewUpdateEngine(t, b, Status{Operation: StatusIdle})
		ch := watch(ctx, b)
		waitStatus(ctx, t, ch, "IDLE", func(s Status) bool { return s.Operation == StatusIdle })
		b.Restart()
		f := dbustest.NewUpdateEngine(t, b, Status{Operation: StatusUpdatedNeedReboot, NewVersion: "4081.2.0"})
		waitStatus(ctx, t, ch, "4081.2.0 staged", staged("4081.2.0"))
		// The new connection is subscribed to the signal too.
		f.Emit(t, Status{Operation: StatusUpdatedNeedReboot, NewVersion: "4081.3.0"})
		waitStatus(ctx, t, ch, "4081.3.0 staged", staged("4081.3.0"))
	})

	t.Run("a failing connect is retried until the bus is there", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b := dbustest.New(t)
		dbustest.NewUpdateEngine(t, b, Status{Operation: StatusUpdatedNeedReboot, NewVersion: "4081.2.0"})
		fails := 3
		connect := func() (*dbus.Conn, error) {
			if fails > 0 {
				fails--
				return nil, errors.New("no bus yet")
			}
			return b.Connect()
		}
		ch := (&Watcher{Connect: connect, MinDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}).Watch(ctx)
		waitStatus(ctx, t, ch, "4081.2.0 staged", staged("4081.2.0"))
		if fails != 0 {
			t.Fatalf("%d connects left", fails)
		}
	})

	t.Run("the channel is closed when the context ends", func(t *testing.T) {
		b := dbustest.New(t)
		ctx, cancel := context.WithCancel(context.Background())
		ch := watch(ctx, b)
		cancel()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return
				}
			case <-deadline:
				t.Fatal("channel not closed")
			}
		}
	})
}

func TestParseStatus(t *testing.T) {
	s, err := parseStatus([]any{int64(1), 0.25, StatusUpdatedNeedReboot, "4081.2.0", int64(42)})
	if err != nil || s != (Status{1, 0.25, StatusUpdatedNeedReboot, "4081.2.0", 42}) || s.Staged() != "4081.2.0" {
		t.Fatalf("%+v, %v", s, err)
	}
	if _, err := parseStatus([]any{int64(1), 0.25, StatusIdle, "", int32(42)}); err == nil || !strings.Contains(err.Error(), "value 4 is int32") {
		t.Fatalf("wrong type: %v", err)
	}
	if _, err := parseStatus([]any{int64(1)}); err == nil || !strings.Contains(err.Error(), "1 values") {
		t.Fatalf("short body: %v", err)
	}
}
