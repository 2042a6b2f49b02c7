package modinfo_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
)

func TestParseVermagic(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, in, str string
		want          modinfo.Vermagic
	}{
		{
			name: "a Debian vermagic splits into release and flags",
			in:   "6.1.0-56-amd64 SMP preempt mod_unload modversions ",
			want: modinfo.Vermagic{Release: "6.1.0-56-amd64", Flags: []string{"SMP", "preempt", "mod_unload", "modversions"}},
			str:  "6.1.0-56-amd64 SMP preempt mod_unload modversions",
		},
		{
			name: "repeated and surrounding whitespace is ignored",
			in:   "  6.8.0-45-generic  SMP\tpreempt_rt  mod_unload\n",
			want: modinfo.Vermagic{Release: "6.8.0-45-generic", Flags: []string{"SMP", "preempt_rt", "mod_unload"}},
			str:  "6.8.0-45-generic SMP preempt_rt mod_unload",
		},
		{
			name: "a release alone has nil flags",
			in:   "6.12.0",
			want: modinfo.Vermagic{Release: "6.12.0"},
			str:  "6.12.0",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := modinfo.ParseVermagic(c.in)
			if err != nil {
				t.Fatalf("ParseVermagic: %v", err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("ParseVermagic(%q) = %#v, want %#v", c.in, got, c.want)
			}
			if s := got.String(); s != c.str {
				t.Errorf("String() = %q, want %q", s, c.str)
			}
			again, err := modinfo.ParseVermagic(got.String())
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Errorf("ParseVermagic(String()) = %#v, %v; want %#v", again, err, got)
			}
		})
	}

	for _, in := range []string{"", " \t\n"} {
		t.Run("an empty or blank string is an error", func(t *testing.T) {
			if v, err := modinfo.ParseVermagic(in); err == nil {
				t.Errorf("ParseVermagic(%q) = %#v, want an error", in, v)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	module := modinfo.Vermagic{Release: "6.1.0-56-amd64", Flags: []string{"SMP", "preempt", "mod_unload", "modversions"}}
	flags := []string{"SMP", "preempt", "mod_unload", "modversions"}

	for _, c := range []struct {
		name    string
		module  modinfo.Vermagic
		release string
		flags   []string
		want    *modinfo.MismatchError // nil: match
		msg     string
	}{
		{
			name: "the same release and flags match", module: module,
			release: "6.1.0-56-amd64", flags: flags,
		},
		{
			name: "flags in another order match", module: module,
			release: "6.1.0-56-amd64", flags: []string{"modversions", "mod_unload", "preempt", "SMP"},
		},
		{
			name: "a different release is a mismatch", module: module,
			release: "6.1.0-57-amd64", flags: flags,
			want: &modinfo.MismatchError{ReleaseDiffers: true},
			msg:  `vermagic release "6.1.0-56-amd64" != running kernel "6.1.0-57-amd64"`,
		},
		{
			name: "a flag the kernel has and the module lacks is missing", module: module,
			release: "6.1.0-56-amd64", flags: append([]string{"retpoline"}, flags...),
			want: &modinfo.MismatchError{Missing: []string{"retpoline"}},
			msg:  `vermagic flags differ from running kernel "6.1.0-56-amd64": flags missing from module: [retpoline]`,
		},
		{
			name: "a flag the module has and the kernel lacks is extra", module: module,
			release: "6.1.0-56-amd64", flags: []string{"SMP", "mod_unload", "modversions"},
			want: &modinfo.MismatchError{Extra: []string{"preempt"}},
			msg:  `vermagic flags differ from running kernel "6.1.0-56-amd64": extra in module: [preempt]`,
		},
		{
			name:    "release and flags can all differ at once",
			module:  modinfo.Vermagic{Release: "6.1.0-55-amd64", Flags: []string{"SMP", "preempt_rt", "mod_unload"}},
			release: "6.1.0-56-amd64", flags: []string{"SMP", "preempt", "mod_unload"},
			want: &modinfo.MismatchError{ReleaseDiffers: true, Missing: []string{"preempt"}, Extra: []string{"preempt_rt"}},
			msg:  `vermagic release "6.1.0-55-amd64" != running kernel "6.1.0-56-amd64"; flags missing from module: [preempt]; extra in module: [preempt_rt]`,
		},
		{
			name: "unknown kernel flags (nil) compare only the release", module: module,
			release: "6.1.0-56-amd64", flags: nil,
		},
		{
			name: "unknown kernel flags still catch a different release", module: module,
			release: "6.1.0-57-amd64", flags: nil,
			want: &modinfo.MismatchError{ReleaseDiffers: true},
			msg:  `vermagic release "6.1.0-56-amd64" != running kernel "6.1.0-57-amd64"`,
		},
		{
			name: "an empty flags slice means the kernel has no flags", module: module,
			release: "6.1.0-56-amd64", flags: []string{},
			want: &modinfo.MismatchError{Extra: []string{"SMP", "preempt", "mod_unload", "modversions"}},
			msg:  `vermagic flags differ from running kernel "6.1.0-56-amd64": extra in module: [SMP preempt mod_unload modversions]`,
		},
		{
			name:    "a module without flags matches a kernel without flags",
			module:  modinfo.Vermagic{Release: "6.12.0"},
			release: "6.12.0", flags: []string{},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := modinfo.Check(c.module, c.release, c.flags)
			if c.want == nil {
				if err != nil {
					t.Errorf("Check = %v, want nil", err)
				}
				return
			}
			var got *modinfo.MismatchError
			if !errors.As(err, &got) {
				t.Fatalf("Check = %v, want a *MismatchError", err)
			}
			c.want.Module, c.want.KernelRelease, c.want.KernelFlags = c.module, c.release, c.flags
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("Check = %#v, want %#v", got, c.want)
			}
			if err.Error() != c.msg {
				t.Errorf("Error() = %q, want %q", err.Error(), c.msg)
			}
		})
	}
}
