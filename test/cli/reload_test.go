package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestReloadReadsTheConfig: `run` reads its configuration file again on
// SIGHUP (systemctl reload), and keeps the one in use when the new one is
// bad.
func TestReloadReadsTheConfig(t *testing.T) {
	root := host(t, "debian-generic") // no GPU: ready with nothing to do
	cfg := filepath.Join(root, "etc/nvidia-driverd/config.yaml")
	var out lockedBuffer
	cmd := exec.Command(binary, "--root", root, "--prefetch=false", "run")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	wait := func(want string) {
		t.Helper()
		for i := 0; i < 200; i++ {
			if strings.Contains(out.String(), want) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("no %q in:\n%s", want, out.String())
	}
	wait("planned no-gpu")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(strings.Replace(string(b), "550.54.14", "550.90.07", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	wait("configuration reloaded: driver-version 550.54.14 -> 550.90.07")
	if err := os.WriteFile(cfg, []byte("driver-verison: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGHUP)
	wait("configuration not reloaded, the one in use is kept")
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
}

// lockedBuffer is a bytes.Buffer that the command's output copier writes
// while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
