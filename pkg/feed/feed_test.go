package feed

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const fixtures = "../../test/fixtures/feeds"

func load(t *testing.T, name string) Feed {
	t.Helper()
	f, err := Load(context.Background(), filepath.Join(fixtures, name), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func versions(rs []Release) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Version)
	}
	return out
}

func TestParseFixtures(t *testing.T) {
	t.Parallel()
	t.Run("stable: versioned entries newest first, current dropped", func(t *testing.T) {
		f := load(t, "releases-stable.json")
		want := []string{"4152.2.0", "4081.2.1", "4081.2.0", "3975.2.2", "3975.2.1"}
		if got := versions(f.Releases); !reflect.DeepEqual(got, want) {
			t.Fatalf("versions %v, want %v", got, want)
		}
		r := f.Releases[0]
		want0 := Release{Version: "4152.2.0", Channel: "stable", Architectures: []string{"amd64", "arm64"},
			ReleaseDate: "2025-03-04 16:45:09 +0000", Kernel: "6.6.71"}
		if !reflect.DeepEqual(r, want0) {
			t.Fatalf("release %+v, want %+v", r, want0)
		}
	})

	t.Run("lts: current-<year> entries are dropped too", func(t *testing.T) {
		f := load(t, "releases-lts.json")
		if got, want := versions(f.Releases), []string{"4081.3.1", "4081.3.0", "3510.3.6"}; !reflect.DeepEqual(got, want) {
			t.Fatalf("versions %v, want %v", got, want)
		}
		if f.Releases[2].Kernel != "5.15.173" || f.Releases[2].Channel != "lts" {
			t.Fatalf("release %+v", f.Releases[2])
		}
	})

	t.Run("alpha: a release without a kernel entry parses with no kernel", func(t *testing.T) {
		f := load(t, "releases-alpha.json")
		if f.Releases[0].Version != "4284.0.0" || f.Releases[0].Kernel != "" {
			t.Fatalf("release %+v", f.Releases[0])
		}
	})
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	t.Run("the malformed fixture names the feed, the release and the field", func(t *testing.T) {
		_, err := Load(context.Background(), filepath.Join(fixtures, "releases-malformed.json"), LoadOptions{})
		if err == nil {
			t.Fatal("no error")
		}
		for _, s := range []string{"releases-malformed.json", "release 4152.2.1", "major_software.kernel"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not name %q", err, s)
			}
		}
	})

	for _, tc := range []struct {
		name, doc, want string
	}{
		{"truncated JSON", `{"4152.2.0": {"channel": "stable"`, "unexpected end of JSON"},
		{"not an object", `["4152.2.0"]`, "cannot unmarshal array"},
		{"a key that is no version", `{"latest": {"channel": "stable"}}`, `key "latest" is not a release version`},
		{"no releases at all", `{"current": {"channel": "stable"}}`, "no releases"},
		{"a release without a channel", `{"1.2.3": {"architectures": ["amd64"]}}`, `release 1.2.3: no "channel"`},
		{"a channel that is no name", `{"1.2.3": {"channel": "stable; rm -rf /"}}`, "is not a channel name"},
		{"architectures of the wrong type", `{"1.2.3": {"channel": "beta", "architectures": 5}}`, "architectures: want a list"},
		{"major_software of the wrong type", `{"1.2.3": {"channel": "beta", "major_software": "x"}}`, "release 1.2.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("test.json", []byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "feed test.json") {
				t.Fatalf("error %v, want one naming test.json and %q", err, tc.want)
			}
		})
	}

	t.Run("architectures as an object keyed by name are accepted", func(t *testing.T) {
		f, err := Parse("x", []byte(`{"1.2.3": {"channel": "beta", "architectures": {"arm64": {}, "amd64": {}}, "major_software": {"kernel": "6.6.1"}}}`))
		if err != nil {
			t.Fatal(err)
		}
		if r := f.Releases[0]; !reflect.DeepEqual(r.Architectures, []string{"amd64", "arm64"}) || r.Kernel != "6.6.1" {
			t.Fatalf("release %+v", r)
		}
	})
}

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"4081.2.0", "4081.2.0", 0},
		{"4081.2.10", "4081.2.9", 1},
		{"3975.2.2", "4081.2.0", -1},
		{"4186.1.10", "4186.1.9", 1},
		{"10.0.0", "9.9.9", 1},
		{"1.0.0", "1.0.00", 0},
	} {
		if got := CompareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareVersions(%s, %s) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := CompareVersions(tc.b, tc.a); got != -tc.want {
			t.Errorf("CompareVersions(%s, %s) = %d, want %d", tc.b, tc.a, got, -tc.want)
		}
	}
}

func TestLoadURL(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(filepath.Join(fixtures, "releases-beta.json"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/releases-json/releases-beta.json":
			w.Header().Set("Content-Type", "application/json")
			w.Write(data)
		case "/broken.json":
			w.Write([]byte("<html>maintenance</html>"))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	ctx := context.Background()

	t.Run("a feed served over HTTP parses like the file", func(t *testing.T) {
		f, err := Load(ctx, srv.URL+"/releases-json/releases-beta.json", LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := versions(f.Releases), []string{"4230.1.0", "4186.1.10", "4186.1.9"}; !reflect.DeepEqual(got, want) {
			t.Fatalf("versions %v, want %v", got, want)
		}
		if f.Source != srv.URL+"/releases-json/releases-beta.json" {
			t.Fatalf("source %q", f.Source)
		}
	})

	for _, tc := range []struct {
		name, path string
		opts       LoadOptions
		want       string
	}{
		{"a 404 names the URL and the status", "/releases-json/releases-gamma.json", LoadOptions{}, "404 Not Found"},
		{"a feed over the size limit is refused", "/releases-json/releases-beta.json", LoadOptions{MaxBytes: 100}, "limit of 100 bytes"},
		{"an HTML page is not a feed", "/broken.json", LoadOptions{}, "invalid character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(ctx, srv.URL+tc.path, tc.opts)
			if err == nil || !strings.Contains(err.Error(), srv.URL+tc.path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s and %q", err, srv.URL+tc.path, tc.want)
			}
		})
	}

	t.Run("a missing file names the file", func(t *testing.T) {
		_, err := Load(ctx, "/nonexistent/releases-stable.json", LoadOptions{})
		if err == nil || !strings.Contains(err.Error(), "/nonexistent/releases-stable.json") {
			t.Fatalf("error %v", err)
		}
	})

	t.Run("the flatcar.org address of a channel", func(t *testing.T) {
		if got := URL("lts"); got != "https://www.flatcar.org/releases-json/releases-lts.json" {
			t.Fatal(got)
		}
	})
}
