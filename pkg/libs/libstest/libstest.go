// Package libstest has the fake of libs.Mounter that tests outside libs
// share.
package libstest

import "errors"

// ErrNoMounts is what NoMounts answers.
var ErrNoMounts = errors.New("no mounts here")

// NoMounts is a libs.Mounter that refuses every mount and unmount: where
// the library mode is ldconfig, activation must not mount anything.
type NoMounts struct{}

// Mount returns ErrNoMounts.
func (NoMounts) Mount(string, string, string, uintptr, string) error { return ErrNoMounts }

// Unmount returns ErrNoMounts.
func (NoMounts) Unmount(string, int) error { return ErrNoMounts }
