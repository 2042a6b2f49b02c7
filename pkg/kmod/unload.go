package kmod

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrBusy is wrapped by the error of Unload when the driver is in use and
// cannot be unloaded without a reboot.
var ErrBusy = errors.New("driver in use")

// loadedModule is a module Unload is to remove.
type loadedModule struct {
	refcnt  int
	holders []string // modules using it
}

// Unload unloads the NVIDIA modules that are loaded: the configured
// modules (either spelling) and every loaded "nvidia" or "nvidia_*" module
// (such as nvidia_peermem, which the configuration may not name). Each is
// removed with delete_module(O_NONBLOCK) after the modules of the set that
// hold it (/sys/module/<m>/holders). In-tree modules loaded for the driver
// (drm, ipmi_*) stay. Stopping users such as nvidia-persistenced is the
// caller's job, before.
//
// Before removing anything it checks every module's refcnt against its
// holders in the set: a higher refcnt means a process or a module outside
// the set holds the GPU, and then nothing is unloaded.
//
// It returns the modules unloaded, in order (nil when none was loaded), or
// those unloaded before an error. The error wraps ErrBusy, saying a reboot
// is needed and naming the module, its refcnt and holders, when the refcnt
// check fails, a module is coming or going, or the kernel answers EBUSY or
// EAGAIN; it names the module otherwise: host is nil, sysfs cannot be
// read, or delete_module fails. A module already gone (ENOENT) is passed
// over without being listed.
func Unload(k Syscalls, host Host, modules []string) ([]string, error) {
	if host == nil {
		return nil, errors.New("unload modules: no host")
	}
	set, err := unloadSet(host, modules)
	if err != nil {
		return nil, err
	}
	if err := checkUnused(set); err != nil {
		return nil, err
	}
	order, err := unloadOrder(set)
	if err != nil {
		return nil, err
	}
	var done []string
	for _, name := range order {
		err := k.DeleteModule(name, unix.O_NONBLOCK)
		switch {
		case errors.Is(err, unix.ENOENT):
			continue
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY):
			return done, fmt.Errorf("unload module %s: the kernel says it is in use; a reboot is needed to change the driver: %w: %w", name, ErrBusy, err)
		case err != nil:
			return done, fmt.Errorf("unload module %s: %w", name, err)
		}
		done = append(done, name)
	}
	return done, nil
}

// unloadCandidates returns the normalised configured names and the names
// in /sys/module that are "nvidia" or start with "nvidia_", sorted
// and without repeats. It returns an error for an invalid configured name
// or when /sys/module exists but cannot be read.
func unloadCandidates(host Host, modules []string) ([]string, error) {
	names, err := rootNames(modules)
	if err != nil {
		return nil, err
	}
	loaded, err := host.ModuleNames()
	if err != nil {
		return nil, fmt.Errorf("unload modules: %w", err)
	}
	for _, n := range loaded {
		if n == "nvidia" || strings.HasPrefix(n, "nvidia_") {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// unloadSet returns the loaded modules among unloadCandidates, by name,
// with their refcnt and holders. It returns an error when sysfs cannot be
// read, or one wrapping ErrBusy when a module is coming or going.
func unloadSet(host Host, modules []string) (map[string]loadedModule, error) {
	names, err := unloadCandidates(host, modules)
	if err != nil {
		return nil, err
	}
	set := make(map[string]loadedModule)
	for _, name := range names {
		sys, err := readSysModule(host, name)
		switch {
		case err != nil:
			return nil, fmt.Errorf("unload modules: %w", err)
		case !sys.present || sys.builtIn():
			continue
		case !sys.live():
			return nil, fmt.Errorf("unload module %s: it is %s, not live; a reboot may be needed: %w", name, sys.initState, ErrBusy)
		}
		m := loadedModule{holders: sys.holders}
		if m.refcnt, err = refcntOf(name, sys); err != nil {
			return nil, fmt.Errorf("unload module %s: %w", name, err)
		}
		set[name] = m
	}
	return set, nil
}

// checkUnused returns nil when every module's refcnt is explained by its
// holders in the set, which go first. Otherwise it returns an error
// wrapping ErrBusy that names the first such module (in name order), its
// refcnt and its holders.
func checkUnused(set map[string]loadedModule) error {
	for _, name := range slices.Sorted(maps.Keys(set)) {
		m := set[name]
		var inSet int
		var outside []string
		for _, h := range m.holders {
			if _, ok := set[h]; ok {
				inSet++
			} else {
				outside = append(outside, h)
			}
		}
		if m.refcnt <= inSet {
			continue
		}
		user := "a process (one with /dev/nvidia* open)"
		if len(outside) > 0 {
			user = "module " + strings.Join(outside, ", ")
		}
		return fmt.Errorf("unload module %s: refcnt %d, holders %s: %s uses it; a reboot is needed to change the driver: %w",
			name, m.refcnt, holderList(m.holders), user, ErrBusy)
	}
	return nil
}

// holderList writes holders for a message: "[a b]", or "none".
func holderList(holders []string) string {
	if len(holders) == 0 {
		return "none"
	}
	return fmt.Sprint(holders)
}

// unloadOrder returns the names of set with every module after the
// modules of the set that hold it, otherwise in name order. It returns an
// error naming a module whose holders lead back to it.
func unloadOrder(set map[string]loadedModule) ([]string, error) {
	state := make(map[string]int)
	var order []string
	var visit func(name string) error
	visit = func(name string) error {
		switch state[name] {
		case visited:
			return nil
		case visiting:
			return fmt.Errorf("unload module %s: its holders lead back to it", name)
		}
		state[name] = visiting
		for _, h := range set[name].holders {
			if _, ok := set[h]; ok {
				if err := visit(h); err != nil {
					return err
				}
			}
		}
		state[name] = visited
		order = append(order, name)
		return nil
	}
	for _, name := range slices.Sorted(maps.Keys(set)) {
		if err := visit(name); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// UnloadLoadedFor undoes the in-tree part of a Load that failed or whose
// activation is being undone: each host module that Load loaded (a step
// with InTree set and nothing Skipped) is removed again, in reverse load
// order, when nothing uses it now (refcnt 0, no holders). One that is in
// use (something else took it meanwhile) or gone stays as it is, untold.
// Modules that were there before Load, or built in, are never touched. It
// returns the modules removed, and the first error other than "in use".
func UnloadLoadedFor(k Syscalls, host Host, steps []Step) ([]string, error) {
	var done []string
	for i := len(steps) - 1; i >= 0; i-- {
		s := steps[i]
		if !s.InTree || s.Skipped != "" {
			continue
		}
		sys, err := readSysModule(host, s.Name)
		if err != nil {
			return done, fmt.Errorf("unload module %s: %w", s.Name, err)
		}
		if !sys.present || sys.builtIn() || !sys.live() || len(sys.holders) > 0 {
			continue
		}
		if n, err := refcntOf(s.Name, sys); err != nil || n > 0 {
			continue
		}
		err = k.DeleteModule(s.Name, unix.O_NONBLOCK)
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY):
			continue
		case err != nil:
			return done, fmt.Errorf("unload module %s: %w", s.Name, err)
		}
		done = append(done, s.Name)
	}
	return done, nil
}
