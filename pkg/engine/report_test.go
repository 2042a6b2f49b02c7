package engine

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
)

func TestPrefetchReport(t *testing.T) {
	t.Parallel()
	at := time.Date(2024, 3, 2, 10, 0, 0, 0, time.UTC)
	next := at.Add(2 * time.Minute)
	staged := store.Prefetch{Driver: "550.54.14", OSVersion: "4081.2.0", KernelRelease: "6.6.30-flatcar",
		Tag: "4081.2.0-550.54.14", Tree: "/opt/nvidia/550.54.14/4081.2.0", Digest: "sha256:0123",
		State: store.PrefetchReady, At: at, Attempts: 1}
	failed := staged
	failed.State, failed.Tree, failed.Error, failed.Attempts, failed.NextRetry = store.PrefetchFailed, "", "GET .../manifests/4081.2.0-550.54.14: 500 Internal Server Error", 2, next
	booted := host()
	booted.OS.VersionID, booted.Kernel.Release = "4081.2.0", "6.6.30-flatcar"
	debian := Facts{OS: hostinfo.OSRelease{ID: "debian", VersionID: "12"}, Kernel: Kernel{Release: "6.1.0-18-amd64"}}
	newKernel := store.Prefetch{Driver: "550.54.14", OSVersion: "12", KernelRelease: "6.1.0-21-amd64",
		Tag: "debian12-6.1.0-21-amd64-550.54.14", State: store.PrefetchFetching, At: at, Attempts: 1}

	for _, tc := range []struct {
		name    string
		p       *store.Prefetch
		f       Facts
		booted  bool
		summary string
	}{
		{"ready before the reboot", &staged, host(), false, "prefetched 4081.2.0-550.54.14 for the staged update"},
		{"ready after the reboot", &staged, booted, true, "4081.2.0-550.54.14 was prefetched before the reboot into OS 4081.2.0"},
		{"failed with a retry", &failed, host(), false, "prefetch of 4081.2.0-550.54.14 for the staged update failed (attempt 2): " +
			"GET .../manifests/4081.2.0-550.54.14: 500 Internal Server Error; next try at " + next.Local().Format(RetryTimeFormat)},
		{"a new kernel on a generic host", &newKernel, debian, false, "prefetching debian12-6.1.0-21-amd64-550.54.14 for kernel 6.1.0-21-amd64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewPrefetchReport(tc.p, tc.f)
			if r.Summary != tc.summary || r.Booted != tc.booted {
				t.Fatalf("summary %q booted %v, want %q %v", r.Summary, r.Booted, tc.summary, tc.booted)
			}
			if r.Tag != tc.p.Tag || r.State != tc.p.State || r.Attempts != tc.p.Attempts || r.Error != tc.p.Error {
				t.Fatalf("%+v from %+v", r, tc.p)
			}
		})
	}

	t.Run("JSON names the fields and the retry only when scheduled", func(t *testing.T) {
		r := NewReport(host(), cfg(), Decision{Action: ActionNone})
		r.Prefetch = NewPrefetchReport(&failed, host())
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{`"prefetch":{`, `"state":"failed"`, `"next_retry":"2024-03-02T10:02:00Z"`, `"attempts":2`, `"booted":false`, `"summary":"prefetch of`} {
			if !strings.Contains(string(b), key) {
				t.Errorf("no %s in %s", key, b)
			}
		}
		r.Prefetch = NewPrefetchReport(&staged, host())
		if b, _ := json.Marshal(r.Prefetch); strings.Contains(string(b), "next_retry") {
			t.Errorf("unscheduled retry in %s", b)
		}
		if NewPrefetchReport(nil, host()) != nil {
			t.Error("a report for no prefetch")
		}
	})
}
