// Package needs skips a test that needs what a hermetic run lacks.
// `make test-unit` runs `go test -short` as any user, without network or
// fixtures: a test that needs root, or starts a program of the system's,
// says so here and is skipped there; `make test` runs it.
package needs

import (
	"os"
	"testing"
)

// Root skips t unless it runs as root; why says what for ("make device
// nodes").
func Root(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root to %s", why)
	}
}

// System skips t in a -short run: it starts what (a dbus-daemon, say),
// which a hermetic run does not.
func System(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("-short: starts %s", what)
	}
}
