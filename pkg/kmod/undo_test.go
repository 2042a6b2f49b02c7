package kmod

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"golang.org/x/sys/unix"
)

// kmsg writes the host's dev/kmsg as records stamped at offsets from now.
func (f *fixture) kmsg(records map[time.Duration]string) {
	f.t.Helper()
	var b strings.Builder
	seq := 0
	for at, text := range records {
		seq++
		usec := (hostinfo.Monotonic() + at).Microseconds()
		fmt.Fprintf(&b, "3,%d,%d,-;%s\n SUBSYSTEM=module\n", seq, usec, text)
	}
	f.write("dev/kmsg", b.String())
}

func TestLoadQuotesTheKernel(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.standardTree(false)
	f.standardHost()
	f.kmsg(map[time.Duration]string{
		-time.Hour:    "NVRM: an old line from an earlier boot's load",
		time.Hour:     "NVRM: No NVIDIA GPU found.",
		time.Hour + 1: "nvidia: loading out-of-tree module taints kernel.",
		time.Hour + 2: "usb 1-1: new device, not ours",
		time.Hour + 3: `nvidia: probe of 0000:01:00.0 failed with error -1\x0a`,
	})
	_, err := Load(fakeKernel(f.root, map[string]error{"nvidia": unix.ENODEV}), f.req)
	if err == nil {
		t.Fatal("Load succeeded")
	}
	for _, want := range []string{`no NVIDIA GPU the module can drive; the kernel said: `, `"NVRM: No NVIDIA GPU found."`, `"nvidia: probe of 0000:01:00.0 failed with error -1"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q\nwant it to contain %s", err, want)
		}
	}
	for _, not := range []string{"earlier boot", "taints", "usb"} {
		if strings.Contains(err.Error(), not) {
			t.Errorf("error %q quotes an unrelated line (%s)", err, not)
		}
	}
}

func TestUntrustedSignerIsNamed(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.standardTree(true) // signed, by kofixture's key
	f.standardHost()
	f.write("sys/module/module/parameters/sig_enforce", "Y\n")
	f.write("proc/keys", "0f0ba0b6 I------     1 perm 1f030000     0     0 asymmetri Debian Secure Boot CA: 6ccece7e: X509.rsa 6ccece7e []\n")
	_, err := Load(fakeKernel(f.root, map[string]error{"nvidia": unix.EKEYREJECTED}), f.req)
	want := `signed with the key with identifier 22c06ce381db0c64eb45d08a33a906addd267cc2, which the kernel did not accept (a key it does not trust, a signature that does not verify, or crypto it lacks); it trusts "Debian Secure Boot CA: 6ccece7e"`
	if !errors.Is(err, ErrUnsigned) || !strings.Contains(err.Error(), want) {
		t.Fatalf("err %v\nwant it to say %s", err, want)
	}
}

func TestUnloadLoadedFor(t *testing.T) {
	t.Parallel()
	t.Run("the host modules a failed load brought in are unloaded, newest first", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		k := fakeKernel(f.root, map[string]error{"nvidia": unix.ENODEV})
		done, err := Load(k, f.req)
		if err == nil {
			t.Fatal("Load succeeded")
		}
		got, err := UnloadLoadedFor(k, f.host, done)
		want := []string{"drm_kms_helper", "drm", "ipmi_devintf", "ipmi_msghandler"}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("unloaded %q, %v; want %q", got, err, want)
		}
		names, _ := f.host.ModuleNames()
		for _, n := range names {
			if m, _ := readSysModule(f.host, n); m.live() {
				t.Errorf("%s is still loaded", n)
			}
		}
	})

	t.Run("modules there before, or used since, stay", func(t *testing.T) {
		f := newFixture(t)
		f.standardTree(false)
		f.standardHost()
		f.loaded("drm", "", 0) // the host's graphics had it before
		k := fakeKernel(f.root, map[string]error{"nvidia": unix.ENODEV})
		done, _ := Load(k, f.req)
		f.write("sys/module/drm_kms_helper/refcnt", "1\n") // another driver took it since
		got, err := UnloadLoadedFor(k, f.host, done)
		if want := []string{"ipmi_devintf", "ipmi_msghandler"}; err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("unloaded %q, %v; want %q", got, err, want)
		}
		for _, n := range []string{"drm", "drm_kms_helper"} {
			if m, _ := readSysModule(f.host, n); !m.live() {
				t.Errorf("%s was unloaded", n)
			}
		}
	})
}
