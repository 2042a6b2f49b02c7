package metrics

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

type fams map[string]*dto.MetricFamily

func parse(t *testing.T, r io.Reader) fams {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	f, err := p.TextToMetricFamilies(r)
	if err != nil {
		t.Fatalf("parse exposition: %v", err)
	}
	return f
}

// series returns the metrics of name, each as its labels "k=v,..." -> metric.
func (f fams) series(name string) map[string]*dto.Metric {
	out := map[string]*dto.Metric{}
	mf := f[name]
	if mf == nil {
		return out
	}
	for _, m := range mf.Metric {
		var ls []string
		for _, l := range m.Label {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		sort.Strings(ls)
		out[strings.Join(ls, ",")] = m
	}
	return out
}

// value is the value of the one series of name with labels (k=v, sorted);
// the test fails when there is none.
func (f fams) value(t *testing.T, name, labels string) float64 {
	t.Helper()
	m, ok := f.series(name)[labels]
	if !ok {
		t.Fatalf("%s{%s} missing; have %v", name, labels, keys(f.series(name)))
	}
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	t.Fatalf("%s{%s} is not a gauge or counter", name, labels)
	return 0
}

func (f fams) histogram(t *testing.T, name string) *dto.Histogram {
	t.Helper()
	m, ok := f.series(name)[""]
	if !ok || m.Histogram == nil {
		t.Fatalf("histogram %s missing", name)
	}
	return m.Histogram
}

func keys(m map[string]*dto.Metric) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// serve starts m's endpoint on a free loopback port, stopped at the end
// of the test.
func serve(t *testing.T, m *Metrics) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := m.Serve(ctx, "127.0.0.1:0", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := s.Wait(); err != nil {
			t.Errorf("wait: %v", err)
		}
	})
	return "http://" + s.Addr().String()
}

func scrape(t *testing.T, base string) fams {
	t.Helper()
	f, err := tryScrape(base)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// tryScrape is scrape for goroutines other than the test's.
func tryScrape(base string) (fams, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return nil, fmt.Errorf("content type %q", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(resp.Body)
}

func healthz(t *testing.T, base string) (int, string) {
	t.Helper()
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

const (
	mReady       = "nvidia_driverd_driver_ready"
	mInfo        = "nvidia_driverd_driver_info"
	mInstall     = "nvidia_driverd_install_duration_seconds"
	mLastInstall = "nvidia_driverd_last_install_duration_seconds"
	mActivation  = "nvidia_driverd_activation_duration_seconds"
	mLastAct     = "nvidia_driverd_last_activation_duration_seconds"
	mFailures    = "nvidia_driverd_failures_total"
	mPrefetch    = "nvidia_driverd_prefetch_ready"
	mReconciles  = "nvidia_driverd_reconciles_total"
	mLastRec     = "nvidia_driverd_last_reconcile_timestamp_seconds"
)

var (
	infoA = Info{Driver: "550.54.14", Kernel: "6.6.21-flatcar", OSVersion: "3815.2.0",
		Digest: "sha256:" + strings.Repeat("a", 64), Tree: "/opt/nvidia/550.54.14/6.6.21-flatcar"}
	infoB = Info{Driver: "550.90.07", Kernel: "6.6.21-flatcar", OSVersion: "3815.2.0",
		Digest: "sha256:" + strings.Repeat("b", 64), Tree: "/opt/nvidia/550.90.07/6.6.21-flatcar"}
)

func infoLabels(i Info) string {
	return fmt.Sprintf("digest=%s,driver=%s,kernel=%s,os_version=%s,tree=%s", i.Digest, i.Driver, i.Kernel, i.OSVersion, i.Tree)
}

func TestScrape(t *testing.T) {
	m := New()
	base := serve(t, m)

	t.Run("a new Metrics is not ready, has no info or prefetch series, and zero failures", func(t *testing.T) {
		f := scrape(t, base)
		if v := f.value(t, mReady, ""); v != 0 {
			t.Fatalf("ready %v", v)
		}
		if n := len(f.series(mInfo)); n != 0 {
			t.Fatalf("%d info series", n)
		}
		if n := len(f.series(mPrefetch)); n != 0 {
			t.Fatalf("%d prefetch series", n)
		}
		for _, s := range Steps() {
			if v := f.value(t, mFailures, "step="+s); v != 0 {
				t.Fatalf("%s failures %v", s, v)
			}
		}
		if h := f.histogram(t, mInstall); h.GetSampleCount() != 0 {
			t.Fatalf("install count %d", h.GetSampleCount())
		}
		if f["go_goroutines"] == nil || f["process_start_time_seconds"] == nil {
			t.Fatal("no go_* / process_* metrics on HTTP")
		}
	})

	t.Run("ready sets the info series", func(t *testing.T) {
		m.Ready(infoA)
		f := scrape(t, base)
		if v := f.value(t, mReady, ""); v != 1 {
			t.Fatalf("ready %v", v)
		}
		if s := f.series(mInfo); len(s) != 1 {
			t.Fatalf("info series %v", keys(s))
		}
		if v := f.value(t, mInfo, infoLabels(infoA)); v != 1 {
			t.Fatalf("info %v", v)
		}
	})

	t.Run("switching to another driver replaces the info series", func(t *testing.T) {
		m.Ready(infoB)
		f := scrape(t, base)
		if s := f.series(mInfo); len(s) != 1 {
			t.Fatalf("info series %v", keys(s))
		}
		f.value(t, mInfo, infoLabels(infoB))
	})

	t.Run("not ready keeps the info; SetInfo of the zero Info removes it", func(t *testing.T) {
		m.NotReady()
		f := scrape(t, base)
		if v := f.value(t, mReady, ""); v != 0 {
			t.Fatalf("ready %v", v)
		}
		f.value(t, mInfo, infoLabels(infoB))
		m.SetInfo(infoA)
		f = scrape(t, base)
		if v := f.value(t, mReady, ""); v != 0 {
			t.Fatalf("SetInfo changed ready to %v", v)
		}
		f.value(t, mInfo, infoLabels(infoA))
		m.SetInfo(Info{})
		if s := scrape(t, base).series(mInfo); len(s) != 0 {
			t.Fatalf("info series %v", keys(s))
		}
	})

	t.Run("failures are counted per step, unknown steps as other", func(t *testing.T) {
		m.Failure(StepModules)
		m.Failure("modules")
		m.Failure(StepFetch)
		m.Failure("frobnicate")
		m.Failure("")
		f := scrape(t, base)
		want := map[string]float64{"modules": 2, "fetch": 1, "other": 2, "devices": 0, "prefetch": 0}
		for step, w := range want {
			if v := f.value(t, mFailures, "step="+step); v != w {
				t.Errorf("step %s: %v, want %v", step, v, w)
			}
		}
		if n := len(f.series(mFailures)); n != len(Steps()) {
			t.Fatalf("%d failure series, want %d", n, len(Steps()))
		}
	})

	t.Run("durations fill the histograms and the last-duration gauges", func(t *testing.T) {
		m.ObserveInstall(3 * time.Second)
		m.ObserveActivation(500 * time.Millisecond)
		m.ObserveActivation(45 * time.Second)
		f := scrape(t, base)
		h := f.histogram(t, mInstall)
		if h.GetSampleCount() != 1 || h.GetSampleSum() != 3 {
			t.Fatalf("install count %d sum %v", h.GetSampleCount(), h.GetSampleSum())
		}
		h = f.histogram(t, mActivation)
		if h.GetSampleCount() != 2 || h.GetSampleSum() != 45.5 {
			t.Fatalf("activation count %d sum %v", h.GetSampleCount(), h.GetSampleSum())
		}
		cum := map[float64]uint64{}
		for _, b := range h.Bucket {
			cum[b.GetUpperBound()] = b.GetCumulativeCount()
		}
		if cum[0.1] != 0 || cum[0.5] != 1 || cum[30] != 1 || cum[60] != 2 || cum[600] != 2 {
			t.Fatalf("activation buckets %v", cum)
		}
		if v := f.value(t, mLastInstall, ""); v != 3 {
			t.Fatalf("last install %v", v)
		}
		if v := f.value(t, mLastAct, ""); v != 45 {
			t.Fatalf("last activation %v", v)
		}
	})

	t.Run("prefetch keeps one series, for the latest staged version", func(t *testing.T) {
		m.Prefetch("3815.2.1", false)
		f := scrape(t, base)
		if v := f.value(t, mPrefetch, "os_version=3815.2.1"); v != 0 {
			t.Fatalf("pending prefetch %v", v)
		}
		m.Prefetch("3815.2.1", true)
		if v := scrape(t, base).value(t, mPrefetch, "os_version=3815.2.1"); v != 1 {
			t.Fatalf("ready prefetch %v", v)
		}
		m.Prefetch("3850.0.0", false)
		f = scrape(t, base)
		if s := f.series(mPrefetch); len(s) != 1 {
			t.Fatalf("prefetch series %v", keys(s))
		}
		f.value(t, mPrefetch, "os_version=3850.0.0")
		m.ClearPrefetch()
		if s := scrape(t, base).series(mPrefetch); len(s) != 0 {
			t.Fatalf("prefetch series %v", keys(s))
		}
	})

	t.Run("reconciled counts and stamps the time", func(t *testing.T) {
		before := float64(time.Now().Unix())
		m.Reconciled()
		m.Reconciled()
		f := scrape(t, base)
		if v := f.value(t, mReconciles, ""); v != 2 {
			t.Fatalf("reconciles %v", v)
		}
		if v := f.value(t, mLastRec, ""); v < before || v > float64(time.Now().Unix()+1) {
			t.Fatalf("last reconcile %v, now %v", v, before)
		}
	})
}

func TestHealthz(t *testing.T) {
	m := New()
	base := serve(t, m)
	if code, body := healthz(t, base); code != http.StatusServiceUnavailable || body != "not ready\n" {
		t.Fatalf("new: %d %q", code, body)
	}
	m.Ready(infoA)
	if code, body := healthz(t, base); code != http.StatusOK || body != "ready\n" {
		t.Fatalf("ready: %d %q", code, body)
	}
	m.NotReady()
	if code, _ := healthz(t, base); code != http.StatusServiceUnavailable {
		t.Fatalf("not ready: %d", code)
	}
}

func TestServe(t *testing.T) {
	t.Run("an address in use is an error naming it, at once", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		addr := ln.Addr().String()
		s, err := New().Serve(context.Background(), addr, nil)
		if err == nil || s != nil {
			t.Fatalf("served on a used address: %v", err)
		}
		if !strings.Contains(err.Error(), addr) {
			t.Fatalf("error does not name %s: %v", addr, err)
		}
	})
	t.Run("a bad address is an error naming it", func(t *testing.T) {
		_, err := New().Serve(context.Background(), "127.0.0.1:notaport", nil)
		if err == nil || !strings.Contains(err.Error(), "127.0.0.1:notaport") {
			t.Fatalf("%v", err)
		}
	})
	t.Run("the end of ctx stops the server and frees the port", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		s, err := New().Serve(ctx, "127.0.0.1:0", nil)
		if err != nil {
			t.Fatal(err)
		}
		addr := s.Addr().String()
		cancel()
		if err := s.Wait(); err != nil {
			t.Fatalf("wait: %v", err)
		}
		if _, err := http.Get("http://" + addr + "/metrics"); err == nil {
			t.Fatal("still serving after ctx ended")
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("port not freed: %v", err)
		}
		ln.Close()
	})
	t.Run("no address serves nothing", func(t *testing.T) {
		s, err := New().Serve(context.Background(), "", nil)
		if s != nil || err != nil {
			t.Fatalf("%v %v", s, err)
		}
		if s.Addr() != nil || s.Wait() != nil {
			t.Fatal("nil server")
		}
	})
}

func TestTextfile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nvidia-driverd.prom")
	m := New()
	core, logs := observer.New(zap.WarnLevel)
	log := zap.New(core)

	read := func(t *testing.T) fams {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return parse(t, bytes.NewReader(b))
	}

	t.Run("SetTextfile writes at once, without go_* or process_*", func(t *testing.T) {
		if err := m.SetTextfile(path, log); err != nil {
			t.Fatal(err)
		}
		f := read(t)
		if v := f.value(t, mReady, ""); v != 0 {
			t.Fatalf("ready %v", v)
		}
		for name := range f {
			if !strings.HasPrefix(name, "nvidia_driverd_") {
				t.Fatalf("textfile has %s", name)
			}
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
			t.Fatalf("%v %v", fi, err)
		}
	})

	t.Run("every change rewrites the file by rename; no temp files stay", func(t *testing.T) {
		old, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer old.Close()
		m.Ready(infoA)
		m.Failure(StepCDI)
		m.ObserveInstall(90 * time.Second)
		m.Prefetch("3815.2.1", true)
		f := read(t)
		if v := f.value(t, mReady, ""); v != 1 {
			t.Fatalf("ready %v", v)
		}
		f.value(t, mInfo, infoLabels(infoA))
		if v := f.value(t, mFailures, "step=cdi"); v != 1 {
			t.Fatalf("cdi failures %v", v)
		}
		if h := f.histogram(t, mInstall); h.GetSampleCount() != 1 || h.GetSampleSum() != 90 {
			t.Fatalf("install %v", h)
		}
		if v := f.value(t, mPrefetch, "os_version=3815.2.1"); v != 1 {
			t.Fatalf("prefetch %v", v)
		}
		oldf := parse(t, old)
		if v := oldf.value(t, mReady, ""); v != 0 {
			t.Fatalf("an open reader saw the file change: ready %v", v)
		}
		entries, _ := os.ReadDir(dir)
		if len(entries) != 1 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Fatalf("leftovers: %v", names)
		}
	})

	t.Run("the textfile holds what HTTP serves", func(t *testing.T) {
		base := serve(t, m)
		web := scrape(t, base)
		file := read(t)
		for name, mf := range file {
			if got, want := text(t, web[name]), text(t, mf); got != want {
				t.Errorf("%s: HTTP\n%s\ntextfile\n%s", name, got, want)
			}
		}
		if len(file) != 10 {
			t.Fatalf("%d families in the textfile", len(file))
		}
	})

	t.Run("a missing directory is an error naming it", func(t *testing.T) {
		missing := filepath.Join(dir, "nope")
		err := m.WriteTextfile(filepath.Join(missing, "x.prom"))
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Fatalf("%v", err)
		}
		if _, serr := os.Stat(missing); serr == nil {
			t.Fatal("the directory was created")
		}
		err = m.SetTextfile(filepath.Join(missing, "x.prom"), log)
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Fatalf("%v", err)
		}
		m.Failure(StepGC)
		got := logs.FilterMessage("write metrics textfile").All()
		if len(got) != 1 || !strings.Contains(fmt.Sprint(got[0].ContextMap()["error"]), missing) {
			t.Fatalf("logged %v", got)
		}
	})

	t.Run("an empty path turns the textfile off", func(t *testing.T) {
		if err := m.SetTextfile("", log); err != nil {
			t.Fatal(err)
		}
		before := logs.Len()
		m.Failure(StepGC)
		if logs.Len() != before {
			t.Fatal("wrote with no textfile set")
		}
		if err := m.WriteTextfile(""); err == nil {
			t.Fatal("wrote to an empty path")
		}
	})
}

func text(t *testing.T, mf *dto.MetricFamily) string {
	t.Helper()
	if mf == nil {
		return "(missing)"
	}
	var b bytes.Buffer
	if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestNil(t *testing.T) {
	var m *Metrics
	m.Ready(infoA)
	m.NotReady()
	m.SetInfo(infoA)
	m.ObserveInstall(time.Second)
	m.ObserveActivation(time.Second)
	m.Failure(StepFetch)
	m.Prefetch("1", true)
	m.ClearPrefetch()
	m.Reconciled()
	if m.IsReady() {
		t.Fatal("nil is ready")
	}
	if err := m.SetTextfile(filepath.Join(t.TempDir(), "x.prom"), nil); err != nil {
		t.Fatal(err)
	}
	if err := m.WriteTextfile("/nonexistent/x.prom"); err != nil {
		t.Fatal(err)
	}
	s, err := m.Serve(context.Background(), "127.0.0.1:0", nil)
	if s != nil || err != nil {
		t.Fatalf("%v %v", s, err)
	}
	if m.Handler(nil) == nil {
		t.Fatal("nil handler")
	}
}

func TestLabelValuesNeedNotBeUTF8(t *testing.T) {
	m := New()
	m.Ready(Info{Driver: "550\xff", Tree: "/opt/nvidia/\xfe"})
	m.Prefetch("\xff", true)
	b, err := m.text()
	if err != nil {
		t.Fatal(err)
	}
	f := parse(t, bytes.NewReader(b))
	if len(f.series(mInfo)) != 1 || len(f.series(mPrefetch)) != 1 {
		t.Fatalf("%s", b)
	}
}

func TestConcurrent(t *testing.T) {
	m := New()
	path := filepath.Join(t.TempDir(), "c.prom")
	if err := m.SetTextfile(path, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	base := serve(t, m)
	const workers, rounds = 8, 25
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				info := infoA
				info.Driver = fmt.Sprintf("550.%d.%d", w, i)
				m.Ready(info)
				m.NotReady()
				m.Failure(Steps()[(w+i)%len(Steps())])
				m.ObserveInstall(time.Duration(i) * time.Millisecond)
				m.ObserveActivation(time.Duration(w) * time.Second)
				m.Prefetch(fmt.Sprintf("%d.%d", w, i), i%2 == 0)
				m.Reconciled()
				_ = m.IsReady()
			}
		}()
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				f, err := tryScrape(base)
				if err != nil {
					t.Error(err)
					return
				}
				if n := len(f.series(mInfo)); n > 1 {
					t.Errorf("%d info series", n)
				}
				if n := len(f.series(mPrefetch)); n > 1 {
					t.Errorf("%d prefetch series", n)
				}
			}
		}()
	}
	wg.Wait()

	f := scrape(t, base)
	var failures float64
	for _, s := range Steps() {
		failures += f.value(t, mFailures, "step="+s)
	}
	n := float64(workers * rounds)
	if failures != n {
		t.Fatalf("failures %v, want %v", failures, n)
	}
	if c := f.histogram(t, mInstall).GetSampleCount(); c != workers*rounds {
		t.Fatalf("installs %d", c)
	}
	if v := f.value(t, mReconciles, ""); v != n {
		t.Fatalf("reconciles %v", v)
	}
	if len(f.series(mInfo)) != 1 || len(f.series(mPrefetch)) != 1 {
		t.Fatal("not one info and one prefetch series")
	}
	want, err := m.text()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("textfile is not the final state (%v):\n%s\nwant\n%s", err, got, want)
	}
	if math.IsNaN(f.value(t, mLastRec, "")) {
		t.Fatal("NaN timestamp")
	}
}
