package kofixture_test

import (
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

func TestPad(t *testing.T) {
	t.Parallel()
	const pad = 3<<20 + 17
	for _, c := range []struct {
		name string
		from func() *strings.Reader
	}{
		{"zeros", nil},
		{"from a reader", func() *strings.Reader { return strings.NewReader(strings.Repeat("nvidia", pad/6+1)) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := kofixture.Module{Name: "nvidia", Fields: kofixture.Standard("nvidia", "550.54.14", "6.1.77-flatcar SMP preempt mod_unload "), Pad: pad}
			if c.from != nil {
				m.PadFrom = c.from()
			}
			p := kofixture.Build(t, t.TempDir(), m)
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Size() < pad {
				t.Errorf("module is %d bytes, want at least %d", st.Size(), pad)
			}
			info, err := modinfo.ReadPlain(p)
			if err != nil {
				t.Fatal(err)
			}
			if info.Version != "550.54.14" || info.Name != "nvidia" {
				t.Errorf("modinfo %+v", info)
			}
		})
	}

	t.Run("a short reader is an error", func(t *testing.T) {
		_, err := kofixture.Write(t.TempDir(), kofixture.Module{Name: "nvidia", Pad: 100, PadFrom: strings.NewReader("short")})
		var missing *kofixture.MissingToolError
		switch {
		case errors.As(err, &missing):
			t.Skip(err)
		case !errors.Is(err, io.ErrUnexpectedEOF):
			t.Errorf("err %v, want io.ErrUnexpectedEOF", err)
		}
	})
}
