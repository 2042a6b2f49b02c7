package modinfo

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Vermagic is a parsed vermagic string: the kernel release a module was
// built for and the build flags that must match the kernel's, e.g.
// "6.1.0-56-amd64 SMP preempt mod_unload modversions ".
type Vermagic struct {
	Release string
	// Flags are the space-separated words after the release, in order; nil
	// when there are none.
	Flags []string
}

// ParseVermagic splits a vermagic string on whitespace into the release
// (the first word) and the flags (the rest). It returns an error when s
// holds no words.
func ParseVermagic(s string) (Vermagic, error) {
	words := strings.Fields(s)
	if len(words) == 0 {
		return Vermagic{}, errors.New("parse vermagic: empty string")
	}
	v := Vermagic{Release: words[0]}
	if len(words) > 1 {
		v.Flags = words[1:]
	}
	return v, nil
}

// String returns the release followed by the flags, separated by single
// spaces, without the trailing space the kernel writes.
func (v Vermagic) String() string {
	return strings.Join(append([]string{v.Release}, v.Flags...), " ")
}

// Check compares a module's vermagic with the running kernel's release and
// vermagic flags. The flags are compared as sets: order and repeats do not
// matter. kernelFlags == nil means the kernel's flags are unknown, and only
// the release is compared; an empty non-nil slice means the kernel has no
// flags.
//
// It returns nil when they match, or a *MismatchError saying what differs.
func Check(module Vermagic, kernelRelease string, kernelFlags []string) error {
	e := &MismatchError{
		Module:         module,
		KernelRelease:  kernelRelease,
		KernelFlags:    kernelFlags,
		ReleaseDiffers: module.Release != kernelRelease,
	}
	if kernelFlags != nil {
		e.Missing = difference(kernelFlags, module.Flags)
		e.Extra = difference(module.Flags, kernelFlags)
	}
	if !e.ReleaseDiffers && e.Missing == nil && e.Extra == nil {
		return nil
	}
	return e
}

// difference returns the distinct words of a that are not in b, in the
// order of a, or nil if there are none.
func difference(a, b []string) []string {
	var out []string
	for _, w := range a {
		if !slices.Contains(b, w) && !slices.Contains(out, w) {
			out = append(out, w)
		}
	}
	return out
}

// MismatchError is returned by Check when a module's vermagic does not
// match the running kernel.
type MismatchError struct {
	// Module is the module's vermagic.
	Module Vermagic
	// KernelRelease and KernelFlags are what Check was given.
	KernelRelease string
	KernelFlags   []string
	// ReleaseDiffers is true when Module.Release != KernelRelease.
	ReleaseDiffers bool
	// Missing are the flags the kernel has and the module lacks.
	Missing []string
	// Extra are the flags the module has and the kernel lacks.
	Extra []string
}

// Error says exactly what differs, e.g.
//
//	vermagic release "6.1.0-55-amd64" != running kernel "6.1.0-56-amd64"; flags missing from module: [preempt]; extra in module: [preempt_rt]
//
// When only the flags differ, it starts with
// `vermagic flags differ from running kernel "6.1.0-56-amd64": `.
func (e *MismatchError) Error() string {
	var parts []string
	if e.ReleaseDiffers {
		parts = append(parts, fmt.Sprintf("vermagic release %q != running kernel %q", e.Module.Release, e.KernelRelease))
	}
	if len(e.Missing) > 0 {
		parts = append(parts, fmt.Sprintf("flags missing from module: %v", e.Missing))
	}
	if len(e.Extra) > 0 {
		parts = append(parts, fmt.Sprintf("extra in module: %v", e.Extra))
	}
	msg := strings.Join(parts, "; ")
	if len(parts) == 0 {
		return fmt.Sprintf("vermagic %q does not match running kernel %q", e.Module, e.KernelRelease)
	}
	if !e.ReleaseDiffers {
		msg = fmt.Sprintf("vermagic flags differ from running kernel %q: %s", e.KernelRelease, msg)
	}
	return msg
}
