package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Retry says how requests to a registry are retried.
type Retry struct {
	// Attempts is the most tries of one request, the first included.
	Attempts int
	// Base is the first backoff; each later one doubles, with jitter.
	Base time.Duration
	// Max caps a backoff, and a server's Retry-After.
	Max time.Duration
}

// DefaultRetry retries a request five times over about half a minute.
var DefaultRetry = Retry{Attempts: 5, Base: 500 * time.Millisecond, Max: 15 * time.Second}

// retryTransport retries idempotent requests that failed in a way worth
// retrying: a connection error, 429 Too Many Requests, or a 5xx. It honours
// Retry-After on 429 and 503. It sits below go-containerregistry's own
// transports (auth, user agent), so a retried request carries the same
// credentials.
//
// A GET whose body breaks mid-way (a connection reset during a blob) is
// resumed with a Range request from the byte it stopped at; the caller
// sees one unbroken body. Digests are verified above this layer, so a
// resumed stream that differs from the original still fails closed.
type retryTransport struct {
	base  http.RoundTripper
	retry Retry
	stall time.Duration // see stallBody; 0 for none
	sleep func(ctx context.Context, d time.Duration) error
}

func newRetryTransport(base http.RoundTripper, r Retry, stall time.Duration) *retryTransport {
	if r.Attempts < 1 {
		r.Attempts = 1
	}
	return &retryTransport{base: base, retry: r, stall: stall, sleep: sleepContext}
}

// MaxRedirects bounds the redirects one request follows, as Go's own
// client does: go-containerregistry's transport does not.
const MaxRedirects = 10

// MaxManifestBytes bounds a manifest or an index, well above what an
// image of a few hundred layers needs (containerd allows 4 MiB too).
const MaxManifestBytes = 4 << 20

// ErrTooLarge is wrapped when a registry's answer exceeds its cap.
var ErrTooLarge = errors.New("too large")

func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RoundTrip sends req, retrying as described at retryTransport.
func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if n := redirects(req); n > MaxRedirects {
		return nil, fmt.Errorf("%s %s: stopped after %d redirects", req.Method, req.URL.Redacted(), MaxRedirects)
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return t.base.RoundTrip(req) // uploads are not replayable here
	}
	resp, err := t.roundTrip(req)
	if err != nil || req.Method != http.MethodGet || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	if strings.Contains(req.URL.Path, "/manifests/") {
		return capManifest(req, resp)
	}
	if resp.ContentLength <= 0 {
		return resp, nil
	}
	resp.Body = &resumingBody{t: t, req: req, body: resp.Body, size: resp.ContentLength, etag: resp.Header.Get("ETag")}
	return resp, nil
}

func (t *retryTransport) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	for attempt := 1; ; attempt++ {
		resp, err := t.base.RoundTrip(req)
		wait, retry := t.shouldRetry(resp, err, attempt)
		if !retry {
			if err == nil && t.stall > 0 {
				resp.Body = newStallBody(resp.Body, t.stall)
			}
			return resp, err
		}
		if resp != nil {
			// Drain a little so the connection can be reused, then close.
			_, _ = io.CopyN(io.Discard, resp.Body, 4096)
			resp.Body.Close()
		}
		if err := t.sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("%s %s: %w (after %d attempts)", req.Method, req.URL.Redacted(), err, attempt)
		}
	}
}

// shouldRetry decides whether attempt number attempt is followed by
// another, and after how long.
func (t *retryTransport) shouldRetry(resp *http.Response, err error, attempt int) (time.Duration, bool) {
	if attempt >= t.retry.Attempts {
		return 0, false
	}
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return 0, false
		}
		return t.backoff(attempt), temporary(err)
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusServiceUnavailable:
		if d, ok := retryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return min(d, t.retry.Max), true
		}
		return t.backoff(attempt), true
	case resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
		return t.backoff(attempt), true
	}
	return 0, false
}

// backoff is Base·2^(attempt-1), capped at Max, with ±25 % jitter so that a
// fleet rebooting together does not retry in lock-step.
func (t *retryTransport) backoff(attempt int) time.Duration {
	d := t.retry.Base << (attempt - 1)
	if d <= 0 || d > t.retry.Max {
		d = t.retry.Max
	}
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return d + jitter
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && s >= 0 {
		// Saturate: a huge value must not wrap into a negative wait,
		// which would retry at once instead of at Max.
		if s > math.MaxInt64/int64(time.Second) {
			return time.Duration(math.MaxInt64), true
		}
		return time.Duration(s) * time.Second, true
	}
	if at, err := http.ParseTime(v); err == nil {
		return max(at.Sub(now), 0), true
	}
	return 0, false
}

// temporary reports whether a transport error may go away on a retry:
// network errors do; TLS certificate and protocol errors do not.
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// resumingBody is a response body that continues a broken download with a
// Range request instead of starting over.
type resumingBody struct {
	t       *retryTransport
	req     *http.Request
	body    io.ReadCloser
	size    int64
	etag    string
	read    int64
	resumes int
}

func (b *resumingBody) Read(p []byte) (int, error) {
	for {
		n, err := b.body.Read(p)
		b.read += int64(n)
		if err == nil || (err == io.EOF && b.read == b.size) {
			return n, err
		}
		if b.read == b.size {
			// Every byte is here; whatever broke after the last one
			// (a stall timer, a reset) is no reason to ask again. The
			// digest above still checks the stream.
			return n, io.EOF
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if n > 0 {
			return n, nil // hand over what arrived; the next Read resumes
		}
		if b.resumes+1 >= b.t.retry.Attempts || b.req.Context().Err() != nil {
			return 0, fmt.Errorf("download %s: %w at byte %d of %d", b.req.URL.Redacted(), err, b.read, b.size)
		}
		b.resumes++
		if rerr := b.resume(); rerr != nil {
			return 0, fmt.Errorf("download %s: %w at byte %d of %d; resume: %v", b.req.URL.Redacted(), err, b.read, b.size, rerr)
		}
	}
}

// resume asks for the rest of the body from byte b.read.
func (b *resumingBody) resume() error {
	b.body.Close()
	if err := b.t.sleep(b.req.Context(), b.t.backoff(b.resumes)); err != nil {
		return err
	}
	req := b.req.Clone(b.req.Context())
	// A closed range: it means the same as "bytes=N-", but some servers
	// (go-containerregistry's own registry, `crane registry serve`) answer
	// only the closed form and refuse the open one with 416.
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", b.read, b.size-1))
	if b.etag != "" {
		req.Header.Set("If-Range", b.etag)
	}
	resp, err := b.t.roundTrip(req)
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusPartialContent:
		var start int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &start); err != nil || start != b.read {
			resp.Body.Close()
			return fmt.Errorf("server resumed at %q, want byte %d", resp.Header.Get("Content-Range"), b.read)
		}
	case http.StatusOK:
		// No range support: start over and skip what we have.
		if _, err := io.CopyN(io.Discard, resp.Body, b.read); err != nil {
			resp.Body.Close()
			return fmt.Errorf("skip to byte %d: %w", b.read, err)
		}
	default:
		resp.Body.Close()
		return errors.New(resp.Status)
	}
	b.body = resp.Body
	return nil
}

func (b *resumingBody) Close() error { return b.body.Close() }

// redirects counts the redirects that led to req.
func redirects(req *http.Request) int {
	n := 0
	for r := req.Response; r != nil && r.Request != nil; r = r.Request.Response {
		n++
	}
	return n
}

// capManifest refuses a manifest or index answer larger than
// MaxManifestBytes, before reading it when it says its length.
func capManifest(req *http.Request, resp *http.Response) (*http.Response, error) {
	if resp.ContentLength > MaxManifestBytes {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: manifest of %d bytes: %w (the limit is %d)", req.URL.Redacted(), resp.ContentLength, ErrTooLarge, MaxManifestBytes)
	}
	resp.Body = &cappedBody{ReadCloser: resp.Body, left: MaxManifestBytes, what: "GET " + req.URL.Redacted() + ": manifest"}
	return resp, nil
}

// cappedBody fails a read past its cap instead of returning more.
type cappedBody struct {
	io.ReadCloser
	left int64
	what string
}

func (b *cappedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		if n, _ := b.ReadCloser.Read(make([]byte, 1)); n > 0 {
			return 0, fmt.Errorf("%s: more than %d bytes: %w", b.what, MaxManifestBytes, ErrTooLarge)
		}
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return 0, fmt.Errorf("%s: more than %d bytes: %w", b.what, MaxManifestBytes, ErrTooLarge)
	}
	return n, err
}

// MinProgress is the least a download must receive per StallTimeout to
// count as making progress: a registry trickling a few bytes a second
// is stalled, not slow.
const MinProgress = 16 << 10

// ErrStalled is wrapped when a response body made no progress for the
// stall timeout.
var ErrStalled = errors.New("download stalled")

// stallBody gives up a response body that receives less than MinProgress
// bytes in a stall timeout of waiting for it: a Read that waits past what
// is left of the timeout closes the body, which ends it, and fails with
// ErrStalled (retried above as a broken download, resumed from where it
// stopped). Only time spent inside Read counts: a consumer that waits
// between reads (for a decoder's memory, for the disk) does not stall the
// download.
type stallBody struct {
	body    io.ReadCloser
	timeout time.Duration
	stalled atomic.Bool
	window  int64         // bytes received since the window started
	waited  time.Duration // time spent in Read since then
}

func newStallBody(body io.ReadCloser, timeout time.Duration) *stallBody {
	return &stallBody{body: body, timeout: timeout}
}

func (b *stallBody) Read(p []byte) (int, error) {
	left := max(b.timeout-b.waited, time.Millisecond)
	start := time.Now()
	timer := time.AfterFunc(left, func() {
		b.stalled.Store(true)
		b.body.Close()
	})
	n, err := b.body.Read(p)
	timer.Stop()
	b.waited += time.Since(start)
	if b.window += int64(n); b.window >= MinProgress {
		b.window, b.waited = 0, 0
	}
	if err != nil && err != io.EOF && b.stalled.Load() {
		return n, fmt.Errorf("%w: less than %d bytes in %v", ErrStalled, MinProgress, b.timeout)
	}
	return n, err
}

func (b *stallBody) Close() error { return b.body.Close() }
