package source

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2024, 2, 12, 15, 23, 0, 0, time.UTC)
	cases := []struct {
		name   string
		header string
		want   time.Duration
		ok     bool
	}{
		{"an absent header says nothing", "", 0, false},
		{"delay-seconds is a wait in seconds", "7", 7 * time.Second, true},
		{"surrounding spaces are allowed", " 7 ", 7 * time.Second, true},
		{"zero means retry now", "0", 0, true},
		{"a negative delay is ignored", "-1", 0, false},
		{"a fraction is ignored", "1.5", 0, false},
		{"a word is ignored", "soon", 0, false},
		{"an IMF-fixdate is the time until then", now.Add(30 * time.Second).Format(http.TimeFormat), 30 * time.Second, true},
		{"an RFC 850 date is the time until then", now.Add(90 * time.Second).Format(time.RFC850), 90 * time.Second, true},
		{"an ANSI C date is the time until then", now.Add(time.Hour).Format(time.ANSIC), time.Hour, true},
		{"a date in the past means retry now", now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"a huge delay does not overflow into a negative wait", "10000000000", time.Duration(1<<63 - 1), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := retryAfter(tc.header, now)
			if ok != tc.ok || (tc.ok && got != tc.want) {
				t.Fatalf("retryAfter(%q) = %v, %v; want %v, %v", tc.header, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	t.Run("each wait is within 25% of the doubled base, capped by Max", func(t *testing.T) {
		for _, r := range []Retry{DefaultRetry, {Attempts: 5, Base: 100 * time.Millisecond, Max: time.Second}} {
			rt := newRetryTransport(nil, r, 0)
			for attempt := 1; attempt <= 70; attempt++ {
				d := r.Max
				if attempt < 30 {
					d = min(r.Base<<(attempt-1), r.Max)
				}
				for range 50 {
					got := rt.backoff(attempt)
					if got < d*3/4 || got > d*5/4 {
						t.Fatalf("%+v: attempt %d waits %v, want %v ± 25%%", r, attempt, got, d)
					}
				}
			}
		}
	})

	t.Run("the jitter spreads the waits", func(t *testing.T) {
		rt := newRetryTransport(nil, DefaultRetry, 0)
		seen := map[time.Duration]bool{}
		for range 100 {
			seen[rt.backoff(1)] = true
		}
		if len(seen) < 10 {
			t.Fatalf("%d distinct waits in 100", len(seen))
		}
	})

	t.Run("a zero Max means no waiting", func(t *testing.T) {
		rt := newRetryTransport(nil, Retry{Attempts: 3, Base: time.Second}, 0)
		if got := rt.backoff(2); got != 0 {
			t.Fatalf("waits %v", got)
		}
	})
}

func TestTemporary(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"a refused connection is worth a retry", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{"an unexpected EOF is worth a retry", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true},
		{"a timeout is worth a retry", timeoutError{}, true},
		{"a certificate error is not worth a retry", errors.New("tls: failed to verify certificate"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := temporary(tc.err); got != tc.want {
				t.Fatalf("temporary(%v) = %v", tc.err, got)
			}
		})
	}
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

func TestStallCountsOnlyWaitingForTheNetwork(t *testing.T) {
	t.Parallel()
	body := strings.Repeat("x", 64<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	}))
	defer srv.Close()
	rt := newRetryTransport(http.DefaultTransport, Retry{Attempts: 1}, 100*time.Millisecond)
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	// A consumer busy elsewhere (a decoder's memory, the disk) for longer
	// than the stall timeout is not a stalled download.
	time.Sleep(300 * time.Millisecond)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || len(rest)+len(buf) != len(body) {
		t.Fatalf("read %d bytes, %v", len(rest)+len(buf), err)
	}
}
