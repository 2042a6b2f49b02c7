package daemon

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/metrics"
)

// scrape reads the daemon's metrics the way Prometheus does.
func scrape(t *testing.T, m *metrics.Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler(zap.NewNop()).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse metrics: %v\n%s", err, rec.Body)
	}
	return fams
}

// value is the value of the series of family name whose labels include
// want; it fails when there is none.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("no %s", name)
	}
series:
	for _, m := range f.Metric {
		got := map[string]string{}
		for _, l := range m.Label {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue series
			}
		}
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("no %s series with %v", name, want)
	return 0
}

func TestMetrics(t *testing.T) {
	t.Run("an install that activates: ready, info, durations", func(t *testing.T) {
		n := listenNotify(t)
		r := newRig(t, nil)
		r.d.Metrics = metrics.New()
		r.publish(t, driver, kernel)
		stop, _ := r.run(t)
		n.until(t, "READY=1")
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		fams := scrape(t, r.d.Metrics)
		if v := value(t, fams, "nvidia_driverd_driver_ready", nil); v != 1 {
			t.Errorf("driver_ready %v", v)
		}
		value(t, fams, "nvidia_driverd_driver_info", map[string]string{"driver": driver, "kernel": kernel, "os_version": osVer, "tree": newTree})
		if d := fams["nvidia_driverd_driver_info"].Metric[0].Label; !strings.Contains(labelValue(d, "digest"), "sha256:") {
			t.Errorf("info has no digest: %v", d)
		}
		for _, h := range []string{"nvidia_driverd_install_duration_seconds", "nvidia_driverd_activation_duration_seconds"} {
			if c := value(t, fams, h, nil); c != 1 {
				t.Errorf("%s has %v samples, want 1", h, c)
			}
		}
		if v := value(t, fams, "nvidia_driverd_failures_total", map[string]string{"step": "modules"}); v != 0 {
			t.Errorf("modules failures %v", v)
		}
	})

	t.Run("a module that fails to load: not ready, the step counted", func(t *testing.T) {
		listenNotify(t)
		r := newRig(t, nil)
		r.d.Metrics = metrics.New()
		r.publish(t, driver, kernel)
		r.kernel.Errs = map[string]error{"nvidia_drm": syscall.ENODEV}
		_, err := r.d.Reconcile(context.Background())
		r.d.report(Outcome{}, err)
		if err == nil {
			t.Fatal("Reconcile succeeded")
		}
		fams := scrape(t, r.d.Metrics)
		if v := value(t, fams, "nvidia_driverd_driver_ready", nil); v != 0 {
			t.Errorf("driver_ready %v", v)
		}
		if v := value(t, fams, "nvidia_driverd_failures_total", map[string]string{"step": "modules"}); v != 1 {
			t.Errorf("modules failures %v, want 1", v)
		}
	})
}

func labelValue(ls []*dto.LabelPair, name string) string {
	for _, l := range ls {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
