package modinfo_test

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

// FuzzParse feeds arbitrary bytes to Parse, which must return an Info or an
// error and never panic. Seeds include real module objects when gcc and
// objcopy are installed.
func FuzzParse(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x7fELF"))
	f.Add([]byte("\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x3e\x00"))
	f.Add([]byte("\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x05abcde" + kofixture.SignatureMagic))
	f.Add(append(kofixture.SignatureInfo(2, 0xffffffff), kofixture.SignatureMagic...))
	if haveTools("gcc", "objcopy") {
		dir := f.TempDir()
		for _, m := range []kofixture.Module{
			{Name: "plain", Fields: kofixture.Standard("nvidia", "550.54.14", "6.1.0-56-amd64 SMP mod_unload ", "drm")},
			{Name: "signed", Fields: []string{"license=GPL", "alias=x"}, Sign: true},
		} {
			data, err := os.ReadFile(kofixture.Build(f, dir, m))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := modinfo.Parse(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if info != nil {
				t.Errorf("Parse returned %+v with error %v", info, err)
			}
			return
		}
		if info.Fields == nil {
			t.Error("Parse returned nil Fields without an error")
		}
		if s := info.Signature; s != nil && (s.Length < 0 || s.Length > len(data)) {
			t.Errorf("Signature.Length = %d for %d bytes of input", s.Length, len(data))
		}
		for _, d := range info.Depends {
			if d == "" || strings.Contains(d, ",") {
				t.Errorf("Depends has entry %q", d)
			}
		}
	})
}

// FuzzParseFields checks that ParseFields never panics and that what it
// returns is consistent: keys are exactly the map's keys, without '=' or
// NUL, and values hold no NUL.
func FuzzParseFields(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("license=GPL\x00\x00\x00alias=a\x00alias=b\x00"))
	f.Add([]byte("name=nvidia\x00depends=drm,i2c_core\x00vermagic=6.1.0 SMP \x00"))
	f.Add([]byte("=\x00junk"))
	f.Fuzz(func(t *testing.T, section []byte) {
		fields, keys, err := modinfo.ParseFields(section)
		if err != nil {
			if fields != nil || keys != nil {
				t.Errorf("ParseFields returned values with error %v", err)
			}
			return
		}
		if len(keys) != len(fields) {
			t.Fatalf("%d keys for %d map entries", len(keys), len(fields))
		}
		for _, k := range keys {
			vals, ok := fields[k]
			if !ok || len(vals) == 0 {
				t.Errorf("key %q has no values", k)
			}
			if k == "" || strings.ContainsAny(k, "=\x00") {
				t.Errorf("bad key %q", k)
			}
			for _, v := range vals {
				if strings.Contains(v, "\x00") {
					t.Errorf("value %q of %q holds a NUL", v, k)
				}
			}
		}
	})
}

// FuzzParseVermagic checks that ParseVermagic never panics and that String
// and ParseVermagic round-trip.
func FuzzParseVermagic(f *testing.F) {
	f.Add("6.1.0-56-amd64 SMP preempt mod_unload modversions ")
	f.Add("6.8.0-rt SMP preempt_rt mod_unload")
	f.Add("")
	f.Add(" \t\n\v")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := modinfo.ParseVermagic(s)
		if err != nil {
			if len(strings.Fields(s)) != 0 {
				t.Errorf("ParseVermagic(%q) failed: %v", s, err)
			}
			return
		}
		if v.Release == "" {
			t.Errorf("ParseVermagic(%q) has an empty release", s)
		}
		again, err := modinfo.ParseVermagic(v.String())
		if err != nil || again.String() != v.String() || again.Release != v.Release || len(again.Flags) != len(v.Flags) {
			t.Errorf("round trip of %q: %#v then %#v (%v)", s, v, again, err)
		}
		if err := modinfo.Check(v, v.Release, v.Flags); err != nil {
			t.Errorf("Check of %#v against itself: %v", v, err)
		}
	})
}

func haveTools(names ...string) bool {
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			return false
		}
	}
	return true
}
