package source

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Options say how images are fetched.
type Options struct {
	// Insecure lists registries (host or host:port) that may be reached over
	// plain HTTP or with an unverified TLS certificate. Every other
	// registry gets verified TLS.
	Insecure []string
	// Mirrors are repositories tried, in order, before the configured one;
	// the first that has the tag wins.
	Mirrors []string
	// Platform is the platform to pick from an index and to insist on; the
	// zero value means this machine's.
	Platform v1.Platform
	// Digests pin tags: a tag that resolves to another digest is refused.
	Digests map[string]string
	// Keychain finds credentials; nil means the Docker config
	// ($DOCKER_CONFIG/config.json, credential helpers).
	Keychain authn.Keychain
	// Retry is the retry policy; the zero value means DefaultRetry.
	Retry Retry
	// Timeout bounds connecting and waiting for response headers of one
	// request (a download itself may take longer); 0 means 30 s.
	Timeout time.Duration
	// StallTimeout is how long a response body may go without progress
	// (MinProgress bytes) before the read is given up and retried; 0
	// means 1 min.
	StallTimeout time.Duration
	// RootCAs, when set, replace the system roots (tests use a private CA).
	TLSConfig *tls.Config
}

func (o Options) withDefaults() Options {
	if o.Platform.OS == "" {
		o.Platform = DefaultPlatform()
	}
	if o.Keychain == nil {
		o.Keychain = authn.DefaultKeychain
	}
	if o.Retry.Attempts == 0 {
		o.Retry = DefaultRetry
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = time.Minute
	}
	return o
}

// Registry fetches images from a repository in an OCI registry, trying
// mirrors first.
type Registry struct {
	repos []name.Repository // mirrors first, the repository last
	opts  Options
	rt    http.RoundTripper // retries, over verified or unverified TLS per host
}

// NewRegistry returns a Registry for repository. It returns an error for a
// malformed repository, mirror or pin.
func NewRegistry(repository string, opts Options) (*Registry, error) {
	opts = opts.withDefaults()
	r := &Registry{opts: opts}
	for _, s := range append(slices.Clone(opts.Mirrors), repository) {
		nameOpts := []name.Option{name.StrictValidation}
		if hostListed(opts.Insecure, s) {
			nameOpts = append(nameOpts, name.Insecure)
		}
		repo, err := name.NewRepository(s, nameOpts...)
		if err != nil {
			return nil, fmt.Errorf("repository %q: %w", s, err)
		}
		r.repos = append(r.repos, repo)
	}
	for tag, d := range opts.Digests {
		if _, err := v1.NewHash(d); err != nil {
			return nil, fmt.Errorf("digest pin for %q: %w", tag, err)
		}
	}
	r.rt = newRetryTransport(newHostTransport(opts), opts.Retry, opts.StallTimeout)
	return r, nil
}

// hostListed reports whether the registry of repository s is in hosts.
func hostListed(hosts []string, s string) bool {
	host, _, _ := strings.Cut(s, "/")
	return slices.Contains(hosts, host)
}

// ErrNotFound says the registry answered that it has no such tag.
var ErrNotFound = errors.New("no such image")

// notFound is ErrNotFound for one reference.
type notFound struct{ ref, repo, tag string }

func (e notFound) Error() string {
	return fmt.Sprintf("fetch %s: repository %s has no image tagged %s", e.ref, e.repo, e.tag)
}

func (e notFound) Is(target error) bool { return target == ErrNotFound }

// isNotFound tells a registry's "no such manifest" (404, MANIFEST_UNKNOWN,
// NAME_UNKNOWN) from every other failure.
func isNotFound(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range te.Errors {
		if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode {
			return true
		}
	}
	return false
}

// hostTransport picks verified or unverified TLS by the request's host.
type hostTransport struct {
	secure, insecure http.RoundTripper
	insecureHosts    []string
}

func newHostTransport(o Options) http.RoundTripper {
	mk := func(cfg *tls.Config) *http.Transport {
		return &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   o.Timeout,
			ResponseHeaderTimeout: o.Timeout,
			ExpectContinueTimeout: time.Second,
			MaxIdleConnsPerHost:   8,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
			TLSClientConfig:       cfg,
		}
	}
	secure := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.TLSConfig != nil {
		secure = o.TLSConfig.Clone()
	}
	insecure := secure.Clone()
	insecure.InsecureSkipVerify = true // only for hosts listed in insecure-registries
	return &hostTransport{secure: mk(secure), insecure: mk(insecure), insecureHosts: o.Insecure}
}

func (t *hostTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if slices.Contains(t.insecureHosts, req.URL.Host) {
		return t.insecure.RoundTrip(req)
	}
	// go-containerregistry falls back to plain HTTP on its own for
	// localhost, loopback, *.local and RFC 1918 addresses when HTTPS
	// fails; a registry not listed as insecure gets verified TLS only.
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("%s %s: plain HTTP to %s refused: it is not listed in insecure-registries", req.Method, req.URL.Redacted(), req.URL.Host)
	}
	return t.secure.RoundTrip(req)
}

// Image resolves tag in each mirror, then the repository, and returns the
// first image found. Errors from every place tried are reported together.
func (r *Registry) Image(ctx context.Context, tag string) (*Image, error) {
	var errs []error
	for _, repo := range r.repos {
		img, err := r.image(ctx, repo, tag)
		if err == nil {
			return img, nil
		}
		if errors.Is(err, ErrRefused) || ctx.Err() != nil {
			return nil, err // a pin or platform mismatch is not a mirror problem
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func (r *Registry) image(ctx context.Context, repo name.Repository, tag string) (*Image, error) {
	ref := repo.Tag(tag)
	opts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(r.rt),
		remote.WithAuthFromKeychain(r.opts.Keychain),
		remote.WithPlatform(r.opts.Platform),
		remote.WithUserAgent("nvidia-driverd"),
		// Retries happen in r.rt, which honours Retry-After and resumes
		// broken downloads; one attempt here avoids multiplying them.
		remote.WithRetryBackoff(remote.Backoff{Steps: 1}),
	}
	desc, err := remote.Get(ref, opts...)
	if isNotFound(err) {
		return nil, notFound{ref: ref.String(), repo: repo.String(), tag: tag}
	}
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", ref, err)
	}
	if pin, ok := r.opts.Digests[tag]; ok && desc.Digest.String() != pin {
		return nil, refusal(fmt.Sprintf("fetch %s: it resolves to %s, but digests pins %s", ref, desc.Digest, pin))
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", ref, err)
	}
	return describe(ref.String(), "registry "+repo.RegistryStr(), desc.Digest, img, r.opts.Platform, false)
}

// Push uploads img to the repository (never to a mirror) under tag and
// returns the manifest digest. Blobs the registry already has are not
// uploaded again.
func (r *Registry) Push(ctx context.Context, tag string, img v1.Image) (v1.Hash, error) {
	return r.push(ctx, tag, img, func(ref name.Reference, o ...remote.Option) error { return remote.Write(ref, img, o...) })
}

// PushIndex uploads idx, an image per platform, to the repository under
// tag and returns its digest.
func (r *Registry) PushIndex(ctx context.Context, tag string, idx v1.ImageIndex) (v1.Hash, error) {
	return r.push(ctx, tag, idx, func(ref name.Reference, o ...remote.Option) error { return remote.WriteIndex(ref, idx, o...) })
}

// push writes an image or index with write, over the registry's
// transport and credentials, and returns its digest.
func (r *Registry) push(ctx context.Context, tag string, what interface{ Digest() (v1.Hash, error) },
	write func(name.Reference, ...remote.Option) error) (v1.Hash, error) {
	ref := r.repos[len(r.repos)-1].Tag(tag)
	if err := write(ref,
		remote.WithContext(ctx),
		remote.WithTransport(r.rt),
		remote.WithAuthFromKeychain(r.opts.Keychain),
		remote.WithUserAgent("nvidia-driverd"),
		remote.WithJobs(4),
	); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := what.Digest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return d, nil
}
