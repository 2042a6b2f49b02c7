// Package feed reads Flatcar Container Linux release feeds and works out
// which driver images a release pipeline still has to build.
//
// A feed is the JSON document Flatcar publishes per channel at
// https://www.flatcar.org/releases-json/releases-<channel>.json: an object
// keyed by release version, plus "current" (and, in the LTS feed,
// "current-<year>") entries that repeat a versioned one. Each value carries
// "channel", "architectures" (a list such as ["amd64", "arm64"]),
// "release_date", "major_software" (package name -> list of versions, e.g.
// "kernel": ["6.6.54"]) and "release_notes".
package feed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
)

// URL returns the address of a channel's feed on flatcar.org.
func URL(channel string) string {
	return "https://www.flatcar.org/releases-json/releases-" + channel + ".json"
}

// Channels are the channels Flatcar publishes feeds for.
var Channels = []string{"stable", "beta", "alpha", "lts"}

// Release is one Flatcar release as a feed describes it.
type Release struct {
	Version       string   // e.g. 4081.2.0
	Channel       string   // stable, beta, alpha, lts
	Architectures []string // e.g. amd64, arm64
	ReleaseDate   string   // as written in the feed, e.g. "2024-10-29 14:19:06 +0000"
	Kernel        string   // kernel version, e.g. 6.6.54; "" when the feed names none
}

// HasArch reports whether the release was built for arch.
func (r Release) HasArch(arch string) bool {
	for _, a := range r.Architectures {
		if a == arch {
			return true
		}
	}
	return false
}

// Feed is the releases of one feed document.
type Feed struct {
	Source   string    // the file or URL it was read from
	Releases []Release // newest first
}

var (
	versionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)
	channelRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	kernelRE  = regexp.MustCompile(`^[0-9]+\.[0-9]+(\.[0-9]+)?$`)
)

// entry is one release's value in the feed document.
type entry struct {
	Channel       string          `json:"channel"`
	Architectures json.RawMessage `json:"architectures"`
	ReleaseDate   string          `json:"release_date"`
	MajorSoftware map[string]any  `json:"major_software"`
}

// Parse reads a feed document; name (a file or URL) is used in errors.
// "current" and "current-<stream>" entries are dropped: they repeat a
// versioned entry and carry no version of their own. It returns an error
// for a document that is not a JSON object of releases, for a key that is
// not a release version, and for a release whose fields have the wrong
// types.
func Parse(name string, data []byte) (Feed, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return Feed{}, fmt.Errorf("feed %s: %w", name, err)
	}
	f := Feed{Source: name}
	for key, val := range raw {
		if key == "current" || strings.HasPrefix(key, "current-") {
			continue
		}
		if !versionRE.MatchString(key) {
			return Feed{}, fmt.Errorf("feed %s: key %q is not a release version (want MAJOR.MINOR.PATCH)", name, key)
		}
		r, err := parseEntry(key, val)
		if err != nil {
			return Feed{}, fmt.Errorf("feed %s: release %s: %w", name, key, err)
		}
		f.Releases = append(f.Releases, r)
	}
	if len(f.Releases) == 0 {
		return Feed{}, fmt.Errorf("feed %s: no releases", name)
	}
	sort.Slice(f.Releases, func(i, j int) bool {
		return CompareVersions(f.Releases[i].Version, f.Releases[j].Version) > 0
	})
	return f, nil
}

func parseEntry(version string, val json.RawMessage) (Release, error) {
	dec := json.NewDecoder(bytes.NewReader(val))
	var e entry
	if err := dec.Decode(&e); err != nil {
		return Release{}, err
	}
	r := Release{Version: version, Channel: e.Channel, ReleaseDate: e.ReleaseDate}
	if r.Channel == "" {
		return Release{}, errors.New(`no "channel"`)
	}
	if !channelRE.MatchString(r.Channel) {
		return Release{}, fmt.Errorf("channel %q is not a channel name", r.Channel)
	}
	archs, err := parseArchitectures(e.Architectures)
	if err != nil {
		return Release{}, err
	}
	r.Architectures = archs
	if r.Kernel, err = firstString(e.MajorSoftware["kernel"]); err != nil {
		return Release{}, fmt.Errorf("major_software.kernel: %w", err)
	}
	return r, nil
}

// parseArchitectures accepts the feed's list of names and, leniently, an
// object keyed by architecture.
func parseArchitectures(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err == nil {
		return list, nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("architectures: want a list of names, got %s", raw)
	}
	names := make([]string, 0, len(obj))
	for k := range obj {
		names = append(names, k)
	}
	sort.Strings(names)
	return names, nil
}

// firstString reads a major_software value: a list of versions (the feed's
// form) or a lone string. An absent value gives "".
func firstString(v any) (string, error) {
	switch v := v.(type) {
	case nil:
		return "", nil
	case string:
		return strings.TrimSpace(v), nil
	case []any:
		if len(v) == 0 {
			return "", nil
		}
		s, ok := v[0].(string)
		if !ok {
			return "", fmt.Errorf("want a list of version strings, got %v", v)
		}
		return strings.TrimSpace(s), nil
	default:
		return "", fmt.Errorf("want a list of version strings, got %v", v)
	}
}

// CompareVersions compares two MAJOR.MINOR.PATCH versions numerically and
// returns -1, 0 or 1. Parts that are not numbers compare as strings.
func CompareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) || i < len(pb); i++ {
		var x, y string
		if i < len(pa) {
			x = pa[i]
		}
		if i < len(pb) {
			y = pb[i]
		}
		x, y = strings.TrimLeft(x, "0"), strings.TrimLeft(y, "0")
		if len(x) != len(y) && isDigits(x) && isDigits(y) {
			if len(x) < len(y) {
				return -1
			}
			return 1
		}
		if c := strings.Compare(x, y); c != 0 {
			return c
		}
	}
	return 0
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// LoadOptions say how feeds are fetched.
type LoadOptions struct {
	// Client fetches URLs; nil means a client with Timeout.
	Client *http.Client
	// Timeout bounds one fetch; 0 means one minute.
	Timeout time.Duration
	// MaxBytes caps a feed's size; 0 means 64 MiB. The real feeds are a few
	// megabytes, most of it release notes.
	MaxBytes int64
}

// Load reads the feed at src: an http(s) URL, fetched with a GET, or a
// file path. Errors name src.
func Load(ctx context.Context, src string, o LoadOptions) (Feed, error) {
	if o.Timeout == 0 {
		o.Timeout = time.Minute
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = 64 << 20
	}
	var data []byte
	var err error
	if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		data, err = fetch(ctx, src, o)
	} else {
		data, err = readFile(src, o.MaxBytes)
	}
	if err != nil {
		return Feed{}, fmt.Errorf("feed %s: %w", src, err)
	}
	return Parse(src, data)
}

func readFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLimited(f, limit)
}

func fetch(ctx context.Context, url string, o LoadOptions) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	client := o.Client
	if client == nil {
		client = &http.Client{}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "nvidia-driverd")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET: %s", resp.Status)
	}
	if resp.ContentLength > o.MaxBytes {
		return nil, fmt.Errorf("%d bytes, more than the limit of %d bytes", resp.ContentLength, o.MaxBytes)
	}
	return readLimited(resp.Body, o.MaxBytes)
}

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("more than the limit of %d bytes", limit)
	}
	return data, nil
}
