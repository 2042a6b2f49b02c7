// Package cmdtest runs programs for black-box tests: a clean environment,
// captured output, and the exit status as a value.
package cmdtest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"testing"
)

// Result is what a program printed and how it exited.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs name with args in an environment holding only PATH, a fresh
// HOME and env. A program that cannot be started fails the test; a
// non-zero exit is a Result.
func Run(t testing.TB, env []string, name string, args ...string) Result {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		r.Code = exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return r
}
