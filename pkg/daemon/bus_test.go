package daemon

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/godbus/dbus/v5"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/updateengine"
)

// This file runs a real dbus-daemon on a private socket and a fake
// update_engine on it (as pkg/systemd's fakesystemd_test.go does for
// systemd).

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

// testBus is a dbus-daemon listening on a socket in a temporary directory.
type testBus struct{ addr string }

// newTestBus starts a dbus-daemon, killed at cleanup. It skips the test
// when dbus-daemon is missing, unless NVIDIA_DRIVERD_REQUIRE_FIXTURES=1.
func newTestBus(t *testing.T) *testBus {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		if os.Getenv("NVIDIA_DRIVERD_REQUIRE_FIXTURES") == "1" {
			t.Fatal("NVIDIA_DRIVERD_REQUIRE_FIXTURES=1 but dbus-daemon is not installed (test/deps.sh installs package dbus)")
		}
		t.Skip("dbus-daemon not installed (Debian package dbus; test/deps.sh installs it)")
	}
	// Not t.TempDir: a comma in the test's name would end the path in
	// the D-Bus address.
	dir, err := os.MkdirTemp("", "busd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "bus")
	config := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(config, fmt.Appendf(nil, busConfig, socket), 0o644); err != nil {
		t.Fatal(err)
	}
	b := &testBus{addr: "unix:path=" + socket}
	cmd := exec.Command("dbus-daemon", "--config-file="+config, "--nofork", "--print-address=1")
	// dbus-daemon would tell the test's notify socket READY=1 itself.
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "NOTIFY_SOCKET=") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dbus-daemon: %v", err)
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	t.Cleanup(stop)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, b.addr) {
		stop()
		t.Fatalf("dbus-daemon printed %q (%v); stderr: %s", line, err, stderr.String())
	}
	return b
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

// fakeEngine owns com.coreos.update1 and answers GetStatus.
type fakeEngine struct {
	conn *dbus.Conn
	mu   sync.Mutex
	st   updateengine.Status
}

func newFakeEngine(t *testing.T, b *testBus, st updateengine.Status) *fakeEngine {
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
	if err := conn.ExportMethodTable(map[string]any{"GetStatus": getStatus}, updateengine.ObjectPath, updateengine.Interface); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(updateengine.BusName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s: reply %v, %v", updateengine.BusName, reply, err)
	}
	return f
}

// emit changes the status and sends StatusUpdate.
func (f *fakeEngine) emit(t *testing.T, st updateengine.Status) {
	t.Helper()
	f.mu.Lock()
	f.st = st
	f.mu.Unlock()
	if err := f.conn.Emit(updateengine.ObjectPath, updateengine.Interface+".StatusUpdate",
		st.LastCheckedTime, st.Progress, st.Operation, st.NewVersion, st.NewSize); err != nil {
		t.Fatal(err)
	}
}

// stop leaves the bus, as update_engine does when it exits.
func (f *fakeEngine) stop() { f.conn.Close() }
