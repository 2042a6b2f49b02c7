// Package dbustest runs a real dbus-daemon on a private unix socket for
// tests, and a fake update_engine on it. The bus allows everything and
// authenticates peers by EXTERNAL (their uid over the socket).
package dbustest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/test/needs"

	"github.com/godbus/dbus/v5"
)

const config = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
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

// Bus is a bus on a socket in a temporary directory, served by one
// dbus-daemon at a time.
type Bus struct {
	t      testing.TB
	config string
	addr   string

	mu     sync.Mutex
	daemon *Daemon
}

// Daemon is one dbus-daemon process of a Bus.
type Daemon struct {
	cmd  *exec.Cmd
	once sync.Once
}

// New starts a bus; its daemons are killed at cleanup. It skips the test
// when dbus-daemon is missing, and fails it instead when
// NVIDIA_DRIVERD_REQUIRE_FIXTURES=1.
func New(t testing.TB) *Bus {
	t.Helper()
	needs.System(t, "a dbus-daemon")
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
	if len(socket) >= 108 {
		t.Fatalf("socket path %s is too long for a unix socket; set TMPDIR shorter", socket)
	}
	b := &Bus{t: t, config: filepath.Join(dir, "bus.conf"), addr: "unix:path=" + socket}
	if err := os.WriteFile(b.config, fmt.Appendf(nil, config, socket), 0o644); err != nil {
		t.Fatal(err)
	}
	b.Start()
	return b
}

// Addr returns the address clients dial, unix:path=....
func (b *Bus) Addr() string { return b.addr }

// Start starts another dbus-daemon and returns once it listens. It takes
// over the socket path: new connections reach it, while those to the
// daemon before it stay until that one is stopped.
func (b *Bus) Start() *Daemon {
	b.t.Helper()
	cmd := exec.Command("dbus-daemon", "--config-file="+b.config, "--nofork", "--print-address=1")
	// dbus-daemon would tell the test's notify socket READY=1 itself.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "NOTIFY_SOCKET=") })
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.t.Fatalf("start dbus-daemon: %v", err)
	}
	d := &Daemon{cmd: cmd}
	b.t.Cleanup(d.Stop)
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, b.addr) {
		d.Stop() // its stderr is complete once it is reaped
		b.t.Fatalf("dbus-daemon printed %q (%v); stderr: %s", line, err, stderr.String())
	}
	b.mu.Lock()
	b.daemon = d
	b.mu.Unlock()
	return d
}

// Daemon returns the daemon started last.
func (b *Bus) Daemon() *Daemon {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.daemon
}

// Restart kills the daemon, dropping every connection, and starts another.
func (b *Bus) Restart() {
	b.t.Helper()
	b.Daemon().Stop()
	b.Start()
}

// Stop kills the daemon and reaps it; later calls do nothing.
func (d *Daemon) Stop() {
	d.once.Do(func() {
		_ = d.cmd.Process.Kill()
		_ = d.cmd.Wait()
	})
}

// Dial opens an authenticated connection to the bus, closed when ctx ends.
func (b *Bus) Dial(ctx context.Context) (*dbus.Conn, error) { return Dial(ctx, b.addr) }

// Connect is Dial without a context, shaped for nextboot.Watcher.
func (b *Bus) Connect() (*dbus.Conn, error) { return Dial(context.Background(), b.addr) }

// Dial opens an authenticated connection to the bus at addr, closed when
// ctx ends.
func Dial(ctx context.Context, addr string) (*dbus.Conn, error) {
	conn, err := dbus.Dial(addr, dbus.WithContext(ctx))
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
