// Command nvidia-driverd keeps the NVIDIA driver matched to the running
// kernel on container-OS hosts. See README.md.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/daemon"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

// Exit statuses scripts can rely on.
const (
	exitOK    = 0
	exitError = 1 // the command could not do its job
	exitUsage = 2 // bad flags, arguments or configuration
	// exitNotReady: status --ready found the driver not in use.
	exitNotReady = 3
)

// notReady is status --ready's answer when the wanted driver is not the
// one running.
type notReady struct{ why string }

func (e notReady) Error() string { return "not ready: " + e.why }

// usageError marks errors in what the user asked for, as opposed to what
// the host did.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func run(args []string) int {
	cmd := newRootCommand(os.Stdout, os.Stderr, os.Environ())
	cmd.SetArgs(args)
	err := cmd.Execute()
	if err == nil {
		return exitOK
	}
	if !daemon.Reported(err) { // else the log has it already
		fmt.Fprintf(os.Stderr, "nvidia-driverd: %v\n", err)
	}
	var ue usageError
	if errors.As(err, &ue) || errors.Is(err, engine.ErrNoRepository) {
		return exitUsage
	}
	var nr notReady
	if errors.As(err, &nr) {
		return exitNotReady
	}
	return exitError
}
