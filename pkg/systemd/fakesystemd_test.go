package systemd

import (
	"context"
	"fmt"
	"strings"
	"testing"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"

	"github.com/nvidia-driverd/nvidia-driverd/test/dbustest"
)

// This file runs a real dbus-daemon (test/dbustest) and a fake
// org.freedesktop.systemd1 on it, speaking the real protocol: go-systemd's
// calls, matches and the JobRemoved signal all cross the daemon.

const (
	managerPath  = dbus.ObjectPath("/org/freedesktop/systemd1")
	managerIface = "org.freedesktop.systemd1.Manager"
	unitIface    = "org.freedesktop.systemd1.Unit"
	propsIface   = "org.freedesktop.DBus.Properties"
	systemdName  = "org.freedesktop.systemd1"
)

// testBus is a bus from dbustest. start may be called again to simulate a
// restart: the new daemon takes over the socket path while the old one
// still runs.
type testBus struct {
	bus  *dbustest.Bus
	addr string // the address clients dial, unix:path=...
}

// newTestBus starts a bus and returns it with its first daemon.
func newTestBus(t *testing.T) (*testBus, *dbustest.Daemon) {
	t.Helper()
	b := dbustest.New(t)
	return &testBus{bus: b, addr: b.Addr()}, b.Daemon()
}

// start starts another daemon and returns once it listens.
func (b *testBus) start() *dbustest.Daemon { return b.bus.Start() }

// stopBus kills a daemon and reaps it; a second call does nothing.
func stopBus(d *dbustest.Daemon) { d.Stop() }

// connector returns a Connector for the test bus, the way production's
// SystemBus connects to the system bus.
func (b *testBus) connector() Connector {
	return func(ctx context.Context) (*sddbus.Conn, error) {
		return sddbus.NewConnection(func() (*dbus.Conn, error) { return b.bus.Dial(ctx) })
	}
}

// fakeUnit scripts one unit: the result of its next jobs and the
// properties it shows.
type fakeUnit struct {
	Job         string // job result to emit; "" means never emit JobRemoved
	LoadState   string
	ActiveState string
	SubState    string
	Result      string // the Service (or other type's) Result property
}

// fakeSystemd owns org.freedesktop.systemd1 on a test bus and answers the
// Manager methods go-systemd calls and Properties Get/GetAll on unit
// objects. It reads raw messages so that it can emit JobRemoved strictly
// after the method reply, as systemd does.
type fakeSystemd struct {
	conn  *dbus.Conn
	units map[string]fakeUnit // only touched by serve
	calls chan string         // "StartUnit nvidia.service replace", ... for the test to read
	jobID uint32
}

// newFakeSystemd connects to the bus at addr and serves until the test
// ends or the bus goes away.
func newFakeSystemd(t *testing.T, addr string, units map[string]fakeUnit) *fakeSystemd {
	t.Helper()
	conn, err := dbustest.Dial(context.Background(), addr)
	if err != nil {
		t.Fatalf("connect fake systemd: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	reply, err := conn.RequestName(systemdName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s: reply %v, %v", systemdName, reply, err)
	}
	f := &fakeSystemd{conn: conn, units: units, calls: make(chan string, 64)}
	msgs := make(chan *dbus.Message, 256)
	conn.Eavesdrop(msgs) // from here on every incoming message is ours to answer
	go f.serve(msgs)
	return f
}

// serve answers method calls until the connection closes.
func (f *fakeSystemd) serve(msgs <-chan *dbus.Message) {
	for msg := range msgs {
		if msg.Type != dbus.TypeMethodCall {
			continue
		}
		f.handle(msg)
	}
}

// handle answers one method call.
func (f *fakeSystemd) handle(msg *dbus.Message) {
	path, _ := msg.Headers[dbus.FieldPath].Value().(dbus.ObjectPath)
	iface, _ := msg.Headers[dbus.FieldInterface].Value().(string)
	member, _ := msg.Headers[dbus.FieldMember].Value().(string)
	switch {
	case path == managerPath && iface == managerIface:
		f.manager(msg, member)
	case iface == propsIface && strings.HasPrefix(string(path), string(managerPath)+"/unit/"):
		f.properties(msg, path, member)
	default:
		f.fail(msg, "org.freedesktop.DBus.Error.UnknownMethod", fmt.Sprintf("no %s.%s on %s", iface, member, path))
	}
}

// manager answers org.freedesktop.systemd1.Manager calls.
func (f *fakeSystemd) manager(msg *dbus.Message, member string) {
	args := make([]string, len(msg.Body))
	for i, a := range msg.Body {
		args[i] = fmt.Sprint(a)
	}
	f.calls <- strings.TrimSpace(member + " " + strings.Join(args, " "))
	switch member {
	case "Subscribe", "Unsubscribe":
		f.reply(msg)
	case "GetUnit":
		name, _ := msg.Body[0].(string)
		if _, ok := f.units[name]; !ok {
			f.fail(msg, errNoSuchUnit, "Unit "+name+" not loaded.")
			return
		}
		f.reply(msg, unitObject(name))
	case "StartUnit", "StopUnit":
		f.job(msg)
	default:
		f.fail(msg, "org.freedesktop.DBus.Error.UnknownMethod", "no method "+member)
	}
}

// job queues a start or stop job: it replies with the job's path, then
// emits JobRemoved with the unit's scripted result, if any.
func (f *fakeSystemd) job(msg *dbus.Message) {
	name, _ := msg.Body[0].(string)
	u, ok := f.units[name]
	if !ok {
		f.fail(msg, errNoSuchUnit, "Unit "+name+" not found.")
		return
	}
	f.jobID++
	job := dbus.ObjectPath(fmt.Sprintf("%s/job/%d", managerPath, f.jobID))
	f.reply(msg, job)
	if u.Job != "" {
		_ = f.conn.Emit(managerPath, managerIface+".JobRemoved", f.jobID, job, name, u.Job)
	}
}

// properties answers Get and GetAll on a unit object.
func (f *fakeSystemd) properties(msg *dbus.Message, path dbus.ObjectPath, member string) {
	u, ok := f.unitAt(path)
	if !ok {
		f.fail(msg, "org.freedesktop.DBus.Error.UnknownObject", "no unit at "+string(path))
		return
	}
	iface, _ := msg.Body[0].(string)
	props := map[string]dbus.Variant{}
	switch {
	case iface == unitIface:
		props["LoadState"] = dbus.MakeVariant(u.LoadState)
		props["ActiveState"] = dbus.MakeVariant(u.ActiveState)
		props["SubState"] = dbus.MakeVariant(u.SubState)
	case strings.HasPrefix(iface, "org.freedesktop.systemd1."):
		props["Result"] = dbus.MakeVariant(u.Result)
	}
	switch member {
	case "GetAll":
		f.reply(msg, props)
	case "Get":
		name, _ := msg.Body[1].(string)
		v, ok := props[name]
		if !ok {
			f.fail(msg, "org.freedesktop.DBus.Error.UnknownProperty", "no property "+iface+"."+name)
			return
		}
		f.reply(msg, v)
	default:
		f.fail(msg, "org.freedesktop.DBus.Error.UnknownMethod", "no method "+member)
	}
}

// unitAt finds the unit whose object path is path.
func (f *fakeSystemd) unitAt(path dbus.ObjectPath) (fakeUnit, bool) {
	for name, u := range f.units {
		if unitObject(name) == path {
			return u, true
		}
	}
	return fakeUnit{}, false
}

// unitObject returns a unit's object path, as systemd escapes it.
func unitObject(name string) dbus.ObjectPath {
	return managerPath + "/unit/" + dbus.ObjectPath(sddbus.PathBusEscape(name))
}

// reply sends a method return; Send writes it before returning.
func (f *fakeSystemd) reply(call *dbus.Message, body ...any) {
	msg := &dbus.Message{
		Type: dbus.TypeMethodReply,
		Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldReplySerial: dbus.MakeVariant(call.Serial()),
			dbus.FieldDestination: call.Headers[dbus.FieldSender],
		},
		Body: body,
	}
	if len(body) > 0 {
		msg.Headers[dbus.FieldSignature] = dbus.MakeVariant(dbus.SignatureOf(body...))
	}
	f.conn.Send(msg, nil)
}

// fail sends an error reply.
func (f *fakeSystemd) fail(call *dbus.Message, name, text string) {
	f.conn.Send(&dbus.Message{
		Type: dbus.TypeError,
		Headers: map[dbus.HeaderField]dbus.Variant{
			dbus.FieldReplySerial: dbus.MakeVariant(call.Serial()),
			dbus.FieldDestination: call.Headers[dbus.FieldSender],
			dbus.FieldErrorName:   dbus.MakeVariant(name),
			dbus.FieldSignature:   dbus.MakeVariant(dbus.SignatureOf(text)),
		},
		Body: []any{text},
	}, nil)
}

// next returns the next Manager call the fake received, failing the test
// when none arrives before ctx ends.
func (f *fakeSystemd) next(ctx context.Context, t *testing.T) string {
	t.Helper()
	select {
	case c := <-f.calls:
		return c
	case <-ctx.Done():
		t.Fatal("fake systemd received no call")
		return ""
	}
}

// expect reads Manager calls until one equals want, skipping Subscribe.
func (f *fakeSystemd) expect(ctx context.Context, t *testing.T, want string) {
	t.Helper()
	for {
		got := f.next(ctx, t)
		if got == want {
			return
		}
		if got != "Subscribe" {
			t.Fatalf("fake systemd got %q, want %q", got, want)
		}
	}
}
