// Package kubelet holds the Wants= variant of the kubelet ordering
// drop-in; its test compares it with the Requires= one in systemd/.
package kubelet

import (
	"bytes"
	"os"
	"slices"
	"testing"

	"github.com/coreos/go-systemd/v22/unit"

	units "github.com/nvidia-driverd/nvidia-driverd/systemd"
)

// directives returns the [Unit] directives of a drop-in as "Name=Value".
func directives(t *testing.T, data []byte) []string {
	t.Helper()
	opts, err := unit.DeserializeOptions(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, o := range opts {
		if o.Section != "Unit" {
			t.Errorf("directive %s in section [%s], want [Unit]", o.Name, o.Section)
		}
		out = append(out, o.Name+"="+o.Value)
	}
	slices.Sort(out)
	return out
}

func TestTheWantsVariantDiffersOnlyInWants(t *testing.T) {
	requires, err := units.Files.ReadFile("kubelet.service.d/10-nvidia-driverd.conf")
	if err != nil {
		t.Fatal(err)
	}
	wants, err := os.ReadFile("10-nvidia-driverd-wants.conf")
	if err != nil {
		t.Fatal(err)
	}
	r, w := directives(t, requires), directives(t, wants)
	wantR := []string{"After=nvidia-driverd.service", "Requires=nvidia-driverd.service"}
	wantW := []string{"After=nvidia-driverd.service", "Wants=nvidia-driverd.service"}
	if !slices.Equal(r, wantR) {
		t.Errorf("systemd/kubelet.service.d/10-nvidia-driverd.conf: %q, want %q", r, wantR)
	}
	if !slices.Equal(w, wantW) {
		t.Errorf("10-nvidia-driverd-wants.conf: %q, want %q", w, wantW)
	}
}
