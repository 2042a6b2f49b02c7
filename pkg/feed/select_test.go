package feed

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
)

func TestSelect(t *testing.T) {
	t.Parallel()
	stable, beta, alpha := load(t, "releases-stable.json"), load(t, "releases-beta.json"), load(t, "releases-alpha.json")
	all := append(append(append([]Release(nil), stable.Releases...), beta.Releases...), alpha.Releases...)

	t.Run("the newest N per channel, channels in feed order", func(t *testing.T) {
		kept, skipped := Select(all, "amd64", 2)
		want := []string{"4152.2.0", "4081.2.1", "4186.1.10", "4186.1.9", "4265.0.0", "4230.0.0"}
		if got := versions(kept); !reflect.DeepEqual(got, want) {
			t.Fatalf("kept %v, want %v", got, want)
		}
		wantSkipped := []Skipped{
			{"beta", "4230.1.0", "not built for amd64 (architectures [arm64])"},
			{"alpha", "4284.0.0", "the feed names no kernel (major_software.kernel)"},
		}
		if !reflect.DeepEqual(skipped, wantSkipped) {
			t.Fatalf("skipped %+v, want %+v", skipped, wantSkipped)
		}
	})

	t.Run("skipped releases do not count against N", func(t *testing.T) {
		kept, _ := Select(beta.Releases, "amd64", 1)
		if got := versions(kept); !reflect.DeepEqual(got, []string{"4186.1.10"}) {
			t.Fatalf("kept %v", got)
		}
	})

	t.Run("another architecture", func(t *testing.T) {
		kept, skipped := Select(beta.Releases, "arm64", 1)
		if got := versions(kept); !reflect.DeepEqual(got, []string{"4230.1.0"}) || len(skipped) != 0 {
			t.Fatalf("kept %v skipped %v", got, skipped)
		}
	})

	t.Run("a kernel that is no version is skipped", func(t *testing.T) {
		rs := []Release{{Version: "1.2.3", Channel: "beta", Architectures: []string{"amd64"}, Kernel: "6.6.1 $(id)"}}
		kept, skipped := Select(rs, "amd64", 1)
		if len(kept) != 0 || len(skipped) != 1 || !strings.Contains(skipped[0].Reason, "not a kernel version") {
			t.Fatalf("kept %v skipped %+v", kept, skipped)
		}
	})

	t.Run("fewer releases than N", func(t *testing.T) {
		kept, _ := Select(stable.Releases, "amd64", 100)
		if len(kept) != 5 {
			t.Fatalf("kept %v", versions(kept))
		}
	})
}

func mustTemplate(t *testing.T, text string) *source.Template {
	t.Helper()
	tmpl, err := source.ParseTemplate(text)
	if err != nil {
		t.Fatal(err)
	}
	return tmpl
}

func TestCombinations(t *testing.T) {
	t.Parallel()
	stable := load(t, "releases-stable.json")
	kept, _ := Select(stable.Releases, "amd64", 2)

	t.Run("the default template: <os-version>-<driver>", func(t *testing.T) {
		m := Matrix{Template: mustTemplate(t, source.DefaultTagTemplate), Repository: "registry.example.com/gpu/nvidia-driver", OSID: "flatcar", KernelSuffix: "-flatcar"}
		got, err := m.Combinations(kept, []string{"550.127.05", "535.216.01"})
		if err != nil {
			t.Fatal(err)
		}
		want := []Combination{
			{"4152.2.0", "stable", "6.6.71-flatcar", "550.127.05", "4152.2.0-550.127.05", "registry.example.com/gpu/nvidia-driver:4152.2.0-550.127.05"},
			{"4152.2.0", "stable", "6.6.71-flatcar", "535.216.01", "4152.2.0-535.216.01", "registry.example.com/gpu/nvidia-driver:4152.2.0-535.216.01"},
			{"4081.2.1", "stable", "6.6.65-flatcar", "550.127.05", "4081.2.1-550.127.05", "registry.example.com/gpu/nvidia-driver:4081.2.1-550.127.05"},
			{"4081.2.1", "stable", "6.6.65-flatcar", "535.216.01", "4081.2.1-535.216.01", "registry.example.com/gpu/nvidia-driver:4081.2.1-535.216.01"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %+v\nwant %+v", got, want)
		}
	})

	t.Run("a template over OS ID and kernel release", func(t *testing.T) {
		m := Matrix{Template: mustTemplate(t, "{{.OSID}}-{{.OSVersion}}-{{.KernelRelease}}-{{.DriverVersion}}"), Repository: "r.example/x", OSID: "flatcar", KernelSuffix: "-flatcar"}
		got, err := m.Combinations(kept[:1], []string{"550.127.05"})
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Tag != "flatcar-4152.2.0-6.6.71-flatcar-550.127.05" {
			t.Fatalf("tag %q", got[0].Tag)
		}
	})

	t.Run("a template needing the build ID cannot be rendered from a feed", func(t *testing.T) {
		m := Matrix{Template: mustTemplate(t, "{{.OSVersion}}-{{.BuildID}}-{{.DriverVersion}}"), Repository: "r.example/x", OSID: "flatcar"}
		_, err := m.Combinations(kept, []string{"550.127.05"})
		if err == nil || !strings.Contains(err.Error(), "BuildID") || !strings.Contains(err.Error(), "stable 4152.2.0") {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("a release listed twice gives one combination", func(t *testing.T) {
		m := Matrix{Template: mustTemplate(t, source.DefaultTagTemplate), Repository: "r.example/x", OSID: "flatcar"}
		got, err := m.Combinations(append(kept, kept...), []string{"550.127.05"})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 {
			t.Fatalf("got %+v", got)
		}
	})
}

// testRegistry is an in-process registry on loopback. fail, when set,
// answers requests for manifests of that tag with its status code.
type testRegistry struct {
	host string
	repo string
	fail atomic.Int32
	hits atomic.Int32
}

func startRegistry(t *testing.T, failTag string) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if code := r.fail.Load(); code != 0 && strings.HasSuffix(req.URL.Path, "/manifests/"+failTag) {
			r.hits.Add(1)
			w.WriteHeader(int(code))
			return
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	r.repo = r.host + "/gpu/nvidia-driver"
	return r
}

func (r *testRegistry) push(t *testing.T, tag string, labels map[string]string) {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	if labels != nil {
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cfg = cfg.DeepCopy()
		cfg.Config.Labels = labels
		if img, err = mutate.ConfigFile(img, cfg); err != nil {
			t.Fatal(err)
		}
	}
	ref, err := name.NewTag(r.repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
}

func (r *testRegistry) source(t *testing.T) *source.Registry {
	t.Helper()
	src, err := source.NewRegistry(r.repo, source.Options{
		Insecure: []string{r.host},
		Platform: v1.Platform{OS: "linux", Architecture: "amd64"},
		Retry:    source.Retry{Attempts: 3, Base: time.Millisecond, Max: 5 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func tags(cs []Combination) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Tag)
	}
	return out
}

func TestMissing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	stable := load(t, "releases-stable.json")
	kept, _ := Select(stable.Releases, "amd64", 3)
	combos := func(t *testing.T, reg *testRegistry) []Combination {
		m := Matrix{Template: mustTemplate(t, source.DefaultTagTemplate), Repository: reg.repo, OSID: "flatcar", KernelSuffix: "-flatcar"}
		cs, err := m.Combinations(kept, []string{"550.127.05", "535.216.01"})
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}

	t.Run("an empty repository: everything is missing", func(t *testing.T) {
		reg := startRegistry(t, "")
		cs := combos(t, reg)
		got, err := Missing(ctx, reg.source(t), cs, 4)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, cs) {
			t.Fatalf("missing %v, want all %v", tags(got), tags(cs))
		}
	})

	t.Run("exactly the tags not pushed are listed, in order", func(t *testing.T) {
		reg := startRegistry(t, "")
		reg.push(t, "4152.2.0-550.127.05", map[string]string{publish.LabelKernel: "6.6.71-flatcar"})
		reg.push(t, "4081.2.0-535.216.01", nil)
		got, err := Missing(ctx, reg.source(t), combos(t, reg), 3)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"4152.2.0-535.216.01", "4081.2.1-550.127.05", "4081.2.1-535.216.01", "4081.2.0-550.127.05"}
		if !reflect.DeepEqual(tags(got), want) {
			t.Fatalf("missing %v, want %v", tags(got), want)
		}
	})

	t.Run("a server error is an error naming the registry, not a missing image", func(t *testing.T) {
		reg := startRegistry(t, "4081.2.1-550.127.05")
		reg.fail.Store(http.StatusInternalServerError)
		got, err := Missing(ctx, reg.source(t), combos(t, reg), 2)
		if err == nil || got != nil {
			t.Fatalf("missing %v, error %v", tags(got), err)
		}
		if !strings.Contains(err.Error(), reg.host) || !strings.Contains(err.Error(), "500") {
			t.Fatalf("error %q does not name %s and the status", err, reg.host)
		}
		if n := reg.hits.Load(); n != 3 {
			t.Fatalf("%d requests, want 3 (retried)", n)
		}
	})

	t.Run("an authentication failure is an error", func(t *testing.T) {
		reg := startRegistry(t, "4152.2.0-550.127.05")
		reg.fail.Store(http.StatusForbidden)
		_, err := Missing(ctx, reg.source(t), combos(t, reg), 2)
		if err == nil || !strings.Contains(err.Error(), reg.host) {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("an image labelled for another kernel is an error", func(t *testing.T) {
		reg := startRegistry(t, "")
		reg.push(t, "4081.2.1-550.127.05", map[string]string{publish.LabelKernel: "6.6.60-flatcar"})
		_, err := Missing(ctx, reg.source(t), combos(t, reg), 2)
		if err == nil || !strings.Contains(err.Error(), "6.6.60-flatcar") || !strings.Contains(err.Error(), "6.6.65-flatcar") {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("many failures are summarised", func(t *testing.T) {
		err := joinFirst([]error{nil, errString("a"), errString("b"), errString("c"), errString("d"), errString("e")}, 3)
		if err == nil || err.Error() != "a\nb\nc\nand 2 more checks failed" {
			t.Fatalf("error %q", err)
		}
	})
}

type errString string

func (e errString) Error() string { return string(e) }
