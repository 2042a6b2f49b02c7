package hostfixture

import (
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
)

// Open opens the host tree at root for t; it is closed when t ends.
func Open(t testing.TB, root string) *hostinfo.Host {
	t.Helper()
	h, err := hostinfo.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// FS is Open's host tree, for the packages that take a hostfs.Root.
func FS(t testing.TB, root string) *hostfs.Root { return Open(t, root).FS() }
