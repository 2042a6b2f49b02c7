// Package kmodtest has the fake of kmod.Syscalls that every test of the
// module syscalls shares.
package kmodtest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"golang.org/x/sys/unix"
)

// Call is one finit_module call the fake saw.
type Call struct {
	Name, Params string
	Flags        int
	Compression  string // what the descriptor's content is compressed with
}

// Syscalls fakes kmod.Syscalls. FinitModule reads the module's .modinfo
// from the descriptor it is given, as the kernel would, and DeleteModule
// takes a name. When Root is set, they keep <Root>/sys/module the way the
// kernel does: a loaded module gets a live directory (initstate, version,
// refcnt 0) and becomes a holder of each module its depends= names; an
// unloaded one loses both. Errs scripts the error a call about a module
// (by kernel name) returns instead. Its methods are safe for concurrent
// use.
type Syscalls struct {
	Root string
	Errs map[string]error
	// Once scripts an error for a module's next finit_module only.
	Once map[string]error

	mu          sync.Mutex
	calls       []Call
	deletes     []string
	deleteFlags []int
}

// FinitModule records the call and returns the scripted error, or ENOEXEC
// when the descriptor holds no readable module.
func (k *Syscalls) FinitModule(f *os.File, params string, flags int) error {
	info, err := modinfo.Read(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		return fmt.Errorf("fake finit_module: %w: %w", unix.ENOEXEC, err)
	}
	name := modinfo.KernelName(info.Name)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls = append(k.calls, Call{Name: name, Params: params, Flags: flags, Compression: info.Compression})
	if err := k.Errs[name]; err != nil {
		return err
	}
	if err := k.Once[name]; err != nil {
		delete(k.Once, name)
		return err
	}
	if k.Root == "" {
		return nil
	}
	return k.markLive(name, info)
}

// DeleteModule records the call and returns the scripted error, if any.
func (k *Syscalls) DeleteModule(name string, flags int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.deletes = append(k.deletes, name)
	k.deleteFlags = append(k.deleteFlags, flags)
	if err := k.Errs[name]; err != nil {
		return err
	}
	if k.Root == "" {
		return nil
	}
	holders, _ := filepath.Glob(filepath.Join(k.Root, "sys/module/*/holders", name))
	for _, h := range holders {
		if err := os.Remove(h); err != nil {
			return err
		}
	}
	return os.RemoveAll(filepath.Join(k.Root, "sys/module", name))
}

func (k *Syscalls) markLive(name string, info *modinfo.Info) error {
	dir := filepath.Join(k.Root, "sys/module", name)
	if err := os.MkdirAll(filepath.Join(dir, "holders"), 0o755); err != nil {
		return err
	}
	for attr, v := range map[string]string{"initstate": "live", "version": info.Version, "refcnt": "0"} {
		if attr == "version" && v == "" {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, attr), []byte(v+"\n"), 0o644); err != nil {
			return err
		}
	}
	for _, dep := range info.Depends {
		holders := filepath.Join(k.Root, "sys/module", modinfo.KernelName(dep), "holders")
		if err := os.MkdirAll(holders, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(holders, name), nil, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Calls returns the finit_module calls so far, in order.
func (k *Syscalls) Calls() []Call {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.calls)
}

// Loaded returns the names of the modules finit_module was called for, in
// order.
func (k *Syscalls) Loaded() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	names := make([]string, len(k.calls))
	for i, c := range k.calls {
		names[i] = c.Name
	}
	return names
}

// Deleted returns the names delete_module was called with, in order, and
// the flags of each.
func (k *Syscalls) Deleted() (names []string, flags []int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.deletes), slices.Clone(k.deleteFlags)
}
