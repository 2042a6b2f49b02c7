// Package metrics exposes nvidia-driverd's state to Prometheus, over HTTP
// and as a node_exporter textfile. Both are off unless asked for.
//
// The metrics live in a private registry (never the global one):
//
//	nvidia_driverd_driver_ready                           gauge, 1 when the driver is usable, else 0
//	nvidia_driverd_driver_info{driver,kernel,os_version,digest,tree}
//	                                                      gauge 1, one series: the last SetInfo
//	nvidia_driverd_install_duration_seconds               histogram of installs (fetch, unpack, switch)
//	nvidia_driverd_last_install_duration_seconds          gauge, the last install's duration (0 before one)
//	nvidia_driverd_activation_duration_seconds            histogram of activations
//	nvidia_driverd_last_activation_duration_seconds       gauge, the last activation's duration (0 before one)
//	nvidia_driverd_failures_total{step}                   counter per step (Steps(); others count as "other")
//	nvidia_driverd_prefetch_ready{os_version}             gauge, one series: 1 when the staged
//	                                                      version's driver is in the store, 0 pending/failed
//	nvidia_driverd_reconciles_total                       counter of finished reconciles
//	nvidia_driverd_last_reconcile_timestamp_seconds       gauge, Unix time of the last reconcile
//
// The HTTP endpoint adds the standard go_* and process_* metrics; the
// textfile does not, as node_exporter serves its own under those names.
//
// Installs and activations happen about once per boot or kernel update, so
// a single daemon's histogram mostly holds zero or one observation: the
// histograms are for fleet-wide aggregation (sum by (le) of increase), the
// last-duration gauges answer "how long did it take on this host". The
// buckets run from 0.1 s to 10 min.
//
// Use: m := New(); the daemon calls Ready/NotReady, SetInfo,
// ObserveInstall, ObserveActivation, Failure, Prefetch/ClearPrefetch and
// Reconciled as things happen. m.Serve(ctx, addr, log) serves /metrics and
// /healthz (200 when ready, else 503); m.SetTextfile(path, log) writes the
// textfile now and again after every change. All methods are safe for
// concurrent use, and all are no-ops on a nil *Metrics, so a daemon with
// metrics off can hold a nil one.
package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
)

const namespace = "nvidia_driverd"

// Step names for Failure. The activation steps match engine.Activator's.
const (
	StepGather       = "gather"       // facts about the host
	StepPlan         = "plan"         // planning refused, or no target for the host
	StepFetch        = "fetch"        // download and unpack
	StepSwitch       = "switch"       // pointing current at a tree
	StepUnload       = "unload"       // removing another driver version
	StepLibraries    = "libraries"    // libraries, binaries, firmware path
	StepModules      = "modules"      // loading kernel modules
	StepDevices      = "devices"      // device nodes
	StepPersistenced = "persistenced" // starting nvidia-persistenced
	StepCDI          = "cdi"          // writing the CDI spec
	StepPrefetch     = "prefetch"     // fetching for a staged OS update
	StepGC           = "gc"           // removing old trees
	StepOther        = "other"        // any other name given to Failure
)

// steps are the step label values, each exported from the start with 0.
var steps = []string{
	StepGather, StepPlan, StepFetch, StepSwitch, StepUnload, StepLibraries, StepModules,
	StepDevices, StepPersistenced, StepCDI, StepPrefetch, StepGC, StepOther,
}

// durationBuckets spans 0.1 s to 10 min.
var durationBuckets = []float64{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// Info describes the active driver; it becomes the driver_info labels.
type Info struct {
	Driver    string // NVIDIA driver version, e.g. 550.54.14
	Kernel    string // running kernel release
	OSVersion string // running OS version
	Digest    string // image digest of the tree, sha256:...
	Tree      string // host path of the active tree
}

// Metrics holds nvidia-driverd's metrics. Create it with New.
type Metrics struct {
	reg     *prometheus.Registry // exported everywhere
	runtime *prometheus.Registry // go_* and process_*, HTTP only

	ready          prometheus.GaugeFunc // reads isReady
	info           *single
	install        prometheus.Histogram
	lastInstall    prometheus.Gauge
	activation     prometheus.Histogram
	lastActivation prometheus.Gauge
	failures       *prometheus.CounterVec
	prefetch       *single
	reconciles     prometheus.Counter
	lastReconcile  prometheus.Gauge

	isReady atomic.Bool // driver_ready and /healthz

	mu       sync.Mutex // guards textfile and log
	textfile string
	log      *zap.Logger

	writeMu sync.Mutex // serializes textfile writes
}

// New returns Metrics with driver_ready 0, no info or prefetch series,
// and every step's failure count at 0.
func New() *Metrics {
	m := &Metrics{
		reg:     prometheus.NewRegistry(),
		runtime: prometheus.NewRegistry(),
		info: newSingle(prometheus.NewDesc(namespace+"_driver_info",
			"The active driver; always 1.",
			[]string{"driver", "kernel", "os_version", "digest", "tree"}, nil)),
		install: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "install_duration_seconds",
			Help:    "Time to install a driver: fetch, unpack and switch.",
			Buckets: durationBuckets,
		}),
		lastInstall: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_install_duration_seconds",
			Help: "Duration of the last driver install.",
		}),
		activation: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "activation_duration_seconds",
			Help:    "Time to activate a driver: modules, device nodes, libraries, persistenced.",
			Buckets: durationBuckets,
		}),
		lastActivation: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_activation_duration_seconds",
			Help: "Duration of the last driver activation.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "failures_total",
			Help: "Failures by step.",
		}, []string{"step"}),
		prefetch: newSingle(prometheus.NewDesc(namespace+"_prefetch_ready",
			"1 when the driver for the staged OS version is in the store, 0 while pending or after a failure.",
			[]string{"os_version"}, nil)),
		reconciles: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "reconciles_total",
			Help: "Reconciles finished, successful or not.",
		}),
		lastReconcile: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "last_reconcile_timestamp_seconds",
			Help: "Unix time of the last finished reconcile.",
		}),
	}
	m.ready = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "driver_ready",
		Help: "1 when the NVIDIA driver is loaded and usable, else 0.",
	}, func() float64 {
		if m.isReady.Load() {
			return 1
		}
		return 0
	})
	for _, s := range steps {
		m.failures.WithLabelValues(s)
	}
	m.reg.MustRegister(m.ready, m.info, m.install, m.lastInstall, m.activation, m.lastActivation,
		m.failures, m.prefetch, m.reconciles, m.lastReconcile)
	m.runtime.MustRegister(collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Ready sets driver_ready to 1 and the info series to info.
func (m *Metrics) Ready(info Info) {
	if m == nil {
		return
	}
	m.info.set(1, info.labels()...)
	m.isReady.Store(true)
	m.changed()
}

// NotReady sets driver_ready to 0; the info series stays as it was.
func (m *Metrics) NotReady() {
	if m == nil {
		return
	}
	m.isReady.Store(false)
	m.changed()
}

// SetInfo replaces the info series with info, leaving driver_ready as it
// is; the zero Info removes the series.
func (m *Metrics) SetInfo(info Info) {
	if m == nil {
		return
	}
	if info == (Info{}) {
		m.info.clear()
	} else {
		m.info.set(1, info.labels()...)
	}
	m.changed()
}

// ObserveInstall records the duration of one install.
func (m *Metrics) ObserveInstall(d time.Duration) {
	if m == nil {
		return
	}
	m.install.Observe(d.Seconds())
	m.lastInstall.Set(d.Seconds())
	m.changed()
}

// ObserveActivation records the duration of one activation.
func (m *Metrics) ObserveActivation(d time.Duration) {
	if m == nil {
		return
	}
	m.activation.Observe(d.Seconds())
	m.lastActivation.Set(d.Seconds())
	m.changed()
}

// Failure counts one failure of step, one of Steps(); any other name
// counts as StepOther.
func (m *Metrics) Failure(step string) {
	if m == nil {
		return
	}
	m.failures.WithLabelValues(knownStep(step)).Inc()
	m.changed()
}

// Prefetch replaces the prefetch_ready series with one for osVersion: 1
// when its driver is in the store, 0 while pending or failed.
func (m *Metrics) Prefetch(osVersion string, ready bool) {
	if m == nil {
		return
	}
	v := 0.0
	if ready {
		v = 1
	}
	m.prefetch.set(v, osVersion)
	m.changed()
}

// ClearPrefetch removes the prefetch_ready series: no update is staged.
func (m *Metrics) ClearPrefetch() {
	if m == nil {
		return
	}
	m.prefetch.clear()
	m.changed()
}

// Reconciled counts a finished reconcile and sets its timestamp to now.
func (m *Metrics) Reconciled() {
	if m == nil {
		return
	}
	m.reconciles.Inc()
	m.lastReconcile.Set(float64(time.Now().UnixNano()) / 1e9)
	m.changed()
}

// IsReady reports whether driver_ready is 1; false on a nil *Metrics.
func (m *Metrics) IsReady() bool {
	return m != nil && m.isReady.Load()
}

// SetTextfile makes every later change rewrite the textfile at path,
// logging failures to log (nil: not logged), and writes it now, returning
// that write's error; path stays set even then, so later changes retry.
// path "" turns the textfile off.
func (m *Metrics) SetTextfile(path string, log *zap.Logger) error {
	if m == nil {
		return nil
	}
	if log == nil {
		log = zap.NewNop()
	}
	m.mu.Lock()
	m.textfile, m.log = path, log
	m.mu.Unlock()
	if path == "" {
		return nil
	}
	return m.WriteTextfile(path)
}

// WriteTextfile writes the metrics in the text exposition format to path,
// atomically: a temporary file in the same directory, fsynced and renamed
// over path. The directory must exist.
func (m *Metrics) WriteTextfile(path string) error {
	if m == nil {
		return nil
	}
	if path == "" {
		return errors.New("metrics textfile: no path")
	}
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil {
		return fmt.Errorf("metrics textfile directory %s: %w", dir, err)
	} else if !fi.IsDir() {
		return fmt.Errorf("metrics textfile directory %s: not a directory", dir)
	}
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	b, err := m.text()
	if err != nil {
		return fmt.Errorf("metrics textfile %s: %w", path, err)
	}
	if _, err := atomicfile.Replace(path, b, 0o644); err != nil {
		return fmt.Errorf("metrics textfile: %w", err)
	}
	return nil
}

// text is the private registry in the text exposition format.
func (m *Metrics) text() ([]byte, error) {
	mfs, err := m.reg.Gather()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

// changed rewrites the textfile when one is set.
func (m *Metrics) changed() {
	m.mu.Lock()
	path, log := m.textfile, m.log
	m.mu.Unlock()
	if path == "" {
		return
	}
	if err := m.WriteTextfile(path); err != nil {
		log.Warn("write metrics textfile", zap.String("path", path), zap.Error(err))
	}
}

func (i Info) labels() []string {
	return []string{i.Driver, i.Kernel, i.OSVersion, i.Digest, i.Tree}
}

// Steps returns the step label values of failures_total.
func Steps() []string {
	return append([]string(nil), steps...)
}

func knownStep(step string) string {
	for _, s := range steps {
		if s == step {
			return s
		}
	}
	return StepOther
}

// single is a gauge with at most one series, replaced as a whole, so no
// scrape sees two series or none during a change.
type single struct {
	desc   *prometheus.Desc
	mu     sync.Mutex
	labels []string // nil: no series
	value  float64
}

func newSingle(desc *prometheus.Desc) *single {
	return &single{desc: desc}
}

func (s *single) set(v float64, labels ...string) {
	clean := make([]string, len(labels))
	for i, l := range labels {
		clean[i] = strings.ToValidUTF8(l, "\uFFFD")
	}
	s.mu.Lock()
	s.labels, s.value = clean, v
	s.mu.Unlock()
}

func (s *single) clear() {
	s.mu.Lock()
	s.labels = nil
	s.mu.Unlock()
}

func (s *single) Describe(ch chan<- *prometheus.Desc) { ch <- s.desc }

func (s *single) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	labels, v := s.labels, s.value
	s.mu.Unlock()
	if labels != nil {
		ch <- prometheus.MustNewConstMetric(s.desc, prometheus.GaugeValue, v, labels...)
	}
}
