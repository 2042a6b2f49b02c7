package cli

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// matrixEntry is one element of `matrix --json`; the names are the
// documented ones a CI workflow reads.
type matrixEntry struct {
	OSVersion     string `json:"os_version"`
	Channel       string `json:"channel"`
	KernelRelease string `json:"kernel_release"`
	Driver        string `json:"driver"`
	Tag           string `json:"tag"`
	Image         string `json:"image"`
}

var feedFiles = []string{"releases-stable.json", "releases-beta.json", "releases-alpha.json", "releases-lts.json"}

// matrixRegistry serves an in-process registry; requests for manifests of
// failTag get status failCode instead.
func matrixRegistry(t *testing.T, failTag string, failCode int) (host string) {
	t.Helper()
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failTag != "" && strings.HasSuffix(r.URL.Path, "/manifests/"+failTag) {
			w.WriteHeader(failCode)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func pushRandom(t *testing.T, ref string) {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
}

// matrixArgs are the flags of a matrix run over the fixture feeds (or
// feeds) against the registry at host.
func matrixArgs(t *testing.T, host string, feeds []string, extra ...string) []string {
	args := []string{"--root", t.TempDir(), "--insecure-registries", host, "--repository", host + "/gpu/nvidia-driver", "matrix"}
	for _, f := range feeds {
		args = append(args, "--feed", f)
	}
	return append(args, extra...)
}

func fixtureFeeds() []string {
	var out []string
	for _, f := range feedFiles {
		out = append(out, filepath.Join("../fixtures/feeds", f))
	}
	return out
}

func decodeMatrix(t *testing.T, r result) []matrixEntry {
	t.Helper()
	var out []matrixEntry
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("decode: %v\n%s", err, r.stdout)
	}
	return out
}

func TestMatrix(t *testing.T) {
	host := matrixRegistry(t, "", 0)
	repo := host + "/gpu/nvidia-driver"
	pushRandom(t, repo+":4152.2.0-550.127.05")
	pushRandom(t, repo+":4186.1.9-550.127.05")

	entry := func(ver, ch, kernel string) matrixEntry {
		return matrixEntry{ver, ch, kernel, "550.127.05", ver + "-550.127.05", repo + ":" + ver + "-550.127.05"}
	}
	wantMissing := []matrixEntry{
		entry("4081.2.1", "stable", "6.6.65-flatcar"),
		entry("4186.1.10", "beta", "6.6.79-flatcar"),
		entry("4265.0.0", "alpha", "6.12.13-flatcar"),
		entry("4230.0.0", "alpha", "6.6.79-flatcar"),
		entry("4081.3.1", "lts", "6.6.79-flatcar"),
		entry("4081.3.0", "lts", "6.6.71-flatcar"),
	}

	t.Run("--json lists exactly the combinations the registry lacks, in a stable order", func(t *testing.T) {
		r := run(t, nil, matrixArgs(t, host, fixtureFeeds(), "--driver", "550.127.05", "--last", "2", "--json")...)
		must(t, r, 0)
		if got := decodeMatrix(t, r); !reflect.DeepEqual(got, wantMissing) {
			t.Fatalf("got %+v\nwant %+v", got, wantMissing)
		}
		for _, s := range []string{"release skipped", "4230.1.0", "not built for amd64", "4284.0.0", "names no kernel"} {
			if !strings.Contains(r.stderr, s) {
				t.Errorf("stderr does not say %q:\n%s", s, r.stderr)
			}
		}
	})

	t.Run("the table names os-version, channel, kernel, driver and tag", func(t *testing.T) {
		r := run(t, nil, matrixArgs(t, host, fixtureFeeds()[:1], "--driver", "550.127.05", "--driver", "535.216.01", "--last", "1")...)
		must(t, r, 0)
		want := "OS-VERSION  CHANNEL  KERNEL          DRIVER      TAG\n" +
			"4152.2.0    stable   6.6.71-flatcar  535.216.01  4152.2.0-535.216.01\n"
		if r.stdout != want {
			t.Fatalf("stdout:\n%s\nwant:\n%s", r.stdout, want)
		}
	})

	t.Run("nothing missing: an empty array and exit 0", func(t *testing.T) {
		r := run(t, nil, matrixArgs(t, host, fixtureFeeds()[:1], "--driver", "550.127.05", "--last", "1", "--json")...)
		must(t, r, 0)
		if strings.TrimSpace(r.stdout) != "[]" {
			t.Fatalf("stdout %q", r.stdout)
		}
		r = run(t, nil, matrixArgs(t, host, fixtureFeeds()[:1], "--driver", "550.127.05", "--last", "1")...)
		must(t, r, 0)
		if r.stdout != "" {
			t.Fatalf("stdout %q", r.stdout)
		}
	})

	t.Run("the tag template from the configuration is used", func(t *testing.T) {
		args := append([]string{"--tag-template", "{{.OSID}}-{{.OSVersion}}-{{.KernelRelease}}-{{.DriverVersion}}"},
			matrixArgs(t, host, fixtureFeeds()[3:], "--driver", "550.127.05", "--last", "1", "--json")...)
		r := run(t, nil, args...)
		must(t, r, 0)
		got := decodeMatrix(t, r)
		if len(got) != 1 || got[0].Tag != "flatcar-4081.3.1-6.6.79-flatcar-550.127.05" {
			t.Fatalf("got %+v", got)
		}
	})

	t.Run("feeds are fetched over HTTP", func(t *testing.T) {
		srv := httptest.NewServer(http.StripPrefix("/releases-json/", http.FileServer(http.Dir("../fixtures/feeds"))))
		defer srv.Close()
		var urls []string
		for _, f := range feedFiles {
			urls = append(urls, srv.URL+"/releases-json/"+f)
		}
		r := run(t, nil, matrixArgs(t, host, urls, "--driver", "550.127.05", "--last", "2", "--json")...)
		must(t, r, 0)
		if got := decodeMatrix(t, r); !reflect.DeepEqual(got, wantMissing) {
			t.Fatalf("got %+v\nwant %+v", got, wantMissing)
		}

		r = run(t, nil, matrixArgs(t, host, []string{srv.URL + "/releases-json/releases-gamma.json"}, "--driver", "550.127.05")...)
		must(t, r, 1)
		if !strings.Contains(r.stderr, srv.URL+"/releases-json/releases-gamma.json") || !strings.Contains(r.stderr, "404") {
			t.Fatalf("stderr %q", r.stderr)
		}
	})

	t.Run("a malformed feed is an error naming it", func(t *testing.T) {
		r := run(t, nil, matrixArgs(t, host, []string{"../fixtures/feeds/releases-malformed.json"}, "--driver", "550.127.05")...)
		must(t, r, 1)
		if !strings.Contains(r.stderr, "releases-malformed.json") || !strings.Contains(r.stderr, "4152.2.1") || r.stdout != "" {
			t.Fatalf("stdout %q stderr %q", r.stdout, r.stderr)
		}
	})

	t.Run("bad flags are usage errors", func(t *testing.T) {
		feeds := fixtureFeeds()[:1]
		for _, args := range [][]string{
			matrixArgs(t, host, nil, "--driver", "550.127.05"),
			matrixArgs(t, host, feeds),
			matrixArgs(t, host, feeds, "--driver", "latest"),
			matrixArgs(t, host, feeds, "--driver", "550.127.05", "--last", "0"),
			matrixArgs(t, host, feeds, "--driver", "550.127.05", "--arch", "x86_64"),
			{"--root", t.TempDir(), "--repository=", "matrix", "--feed", feeds[0], "--driver", "550.127.05"},
		} {
			if r := run(t, nil, args...); r.code != 2 {
				t.Errorf("%v: exit %d, want 2\n%s", args, r.code, r.stderr)
			}
		}
	})
}

func TestMatrixRegistryErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		code int
	}{
		// 500 is retried (about 8 s with the default policy) before it fails.
		{"a registry answering 500 is an error, not a missing image", http.StatusInternalServerError},
		{"a registry refusing access is an error, not a missing image", http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			host := matrixRegistry(t, "4081.3.1-550.127.05", tc.code)
			r := run(t, nil, matrixArgs(t, host, fixtureFeeds()[3:], "--driver", "550.127.05", "--last", "1", "--json")...)
			must(t, r, 1)
			if r.stdout != "" || !strings.Contains(r.stderr, host+"/gpu/nvidia-driver:4081.3.1-550.127.05") {
				t.Fatalf("stdout %q stderr %q", r.stdout, r.stderr)
			}
		})
	}
}
