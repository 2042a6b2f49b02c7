package updateengine

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// This file runs a real dbus-daemon on a private socket and a fake
// update_engine on it (the approach of pkg/systemd's fakesystemd_test.go).

// busConfig allows everything on the bus, authenticated by EXTERNAL.
const busConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`

// testBus is a dbus-daemon on a socket in a temporary directory; restart
// replaces it with a new one on the same socket.
type testBus struct {
	t      *testing.T
	config string
	addr   string
	mu     sync.Mutex
	cmd    *exec.Cmd
}

// newTestBus starts a dbus-daemon. It skips the test when dbus-daemon is
// missing, unless NVIDIA_DRIVERD_REQUIRE_FIXTURES=1.
func newTestBus(t *testing.T) *testBus {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		if os.Getenv("NVIDIA_DRIVERD_REQUIRE_FIXTURES") == "1" {
			t.Fatal("NVIDIA_DRIVERD_REQUIRE_FIXTURES=1 but dbus-daemon is not installed (test/deps.sh installs package dbus)")
		}
		t.Skip("dbus-daemon not installed (Debian package dbus; test/deps.sh installs it)")
	}
	// Not t.TempDir: the test's name may hold a comma, which ends a value
	// in a D-Bus address.
	dir, err := os.MkdirTemp("", "busd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "bus")
	if len(socket) >= 108 {
		t.Fatalf("socket path %s is too long for a unix socket; set TMPDIR shorter", socket)
	}
	b := &testBus{t: t, config: filepath.Join(dir, "bus.conf"), addr: "unix:path=" + socket}
	if err := os.WriteFile(b.config, fmt.Appendf(nil, busConfig, socket), 0o644); err != nil {
		t.Fatal(err)
	}
	b.start()
	return b
}

// start starts a dbus-daemon and returns once it listens.
func (b *testBus) start() {
	b.t.Helper()
	cmd := exec.Command("dbus-daemon", "--config-file="+b.config, "--nofork", "--print-address=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.t.Fatalf("start dbus-daemon: %v", err)
	}
	b.t.Cleanup(func() { stopBus(cmd) })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, b.addr) {
		stopBus(cmd) // its stderr is complete once it is reaped
		b.t.Fatalf("dbus-daemon printed %q (%v); stderr: %s", line, err, stderr.String())
	}
	b.mu.Lock()
	b.cmd = cmd
	b.mu.Unlock()
}

// restart kills the daemon, dropping every connection, and starts another.
func (b *testBus) restart() {
	b.t.Helper()
	b.mu.Lock()
	cmd := b.cmd
	b.mu.Unlock()
	stopBus(cmd)
	b.start()
}

func stopBus(cmd *exec.Cmd) {
	if cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// dial opens an authenticated connection to the bus.
func (b *testBus) dial() (*dbus.Conn, error) {
	conn, err := dbus.Dial(b.addr)
	if err != nil {
		return nil, err
	}
	if err := conn.Auth([]dbus.Auth{dbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		conn.Close()
		return nil, err
	}
	if err := conn.Hello(); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// fakeEngine owns com.coreos.update1 on a test bus and answers GetStatus
// with its status.
type fakeEngine struct {
	conn *dbus.Conn
	mu   sync.Mutex
	st   Status
}

// newFakeEngine connects to b, exports GetStatus and takes the bus name.
func newFakeEngine(t *testing.T, b *testBus, st Status) *fakeEngine {
	t.Helper()
	conn, err := b.dial()
	if err != nil {
		t.Fatalf("connect fake update_engine: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeEngine{conn: conn, st: st}
	getStatus := func() (int64, float64, string, string, int64, *dbus.Error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.st.LastCheckedTime, f.st.Progress, f.st.Operation, f.st.NewVersion, f.st.NewSize, nil
	}
	if err := conn.ExportMethodTable(map[string]any{"GetStatus": getStatus}, ObjectPath, Interface); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(BusName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s: reply %v, %v", BusName, reply, err)
	}
	return f
}

// set changes the status GetStatus answers, without a signal.
func (f *fakeEngine) set(st Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st = st
}

// emit changes the status and sends StatusUpdate, as update_engine does.
func (f *fakeEngine) emit(t *testing.T, st Status) {
	t.Helper()
	f.set(st)
	if err := f.conn.Emit(ObjectPath, Interface+"."+memberStatusUpdate,
		st.LastCheckedTime, st.Progress, st.Operation, st.NewVersion, st.NewSize); err != nil {
		t.Fatal(err)
	}
}

// stop leaves the bus, as update_engine does when it exits.
func (f *fakeEngine) stop() { f.conn.Close() }

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
func monitor(t *testing.T, b *testBus, rule string) <-chan *dbus.Message {
	t.Helper()
	conn, err := b.dial()
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
