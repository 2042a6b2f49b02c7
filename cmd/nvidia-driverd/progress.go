package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/systemd"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// progress reports download progress: a line redrawn in place on a
// terminal, a log line every few seconds otherwise (the journal should not
// get a line per megabyte).
type progress struct {
	mu       sync.Mutex
	w        io.Writer
	log      *zap.Logger
	tty      bool
	start    time.Time
	last     time.Time
	interval time.Duration
	drew     bool
}

func newProgress(w io.Writer, log *zap.Logger) *progress {
	now := time.Now()
	p := &progress{w: w, log: log, start: now, last: now, interval: 5 * time.Second}
	if f, ok := w.(*os.File); ok {
		if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			p.tty, p.interval = true, 100*time.Millisecond
		}
	}
	return p
}

// update is called with the bytes done so far; safe for concurrent use.
func (p *progress) update(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if now.Sub(p.last) < p.interval && done < total {
		return
	}
	p.last = now
	elapsed := now.Sub(p.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r%s (%s)  ", systemd.Progress("pulling", done, total), perSecond(rate))
		p.drew = true
		return
	}
	p.log.Info(systemd.Progress("pulling", done, total)+" ("+perSecond(rate)+")",
		zap.Int64("done_bytes", done), zap.Int64("total_bytes", total), zap.Float64("mib_per_s", math.Round(rate/(1<<20)*10)/10))
}

// finish ends a redrawn line.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drew {
		fmt.Fprintln(p.w)
		p.drew = false
	}
}

// perSecond writes a rate of bytes per second with three significant
// digits in the largest unit it reaches: "812 KiB/s", "45.2 MiB/s".
func perSecond(b float64) string { return sized(b, "/s") }

// sized is b bytes in B, KiB, MiB or GiB with three significant digits,
// the unit followed by suffix.
func sized(b float64, suffix string) string {
	unit, size := "B", 1.0
	for _, u := range []struct {
		name string
		size float64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b >= u.size {
			unit, size = u.name, u.size
			break
		}
	}
	v := b / size
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f %s%s", v, unit, suffix)
	case v >= 10:
		return fmt.Sprintf("%.1f %s%s", v, unit, suffix)
	}
	return fmt.Sprintf("%.2f %s%s", v, unit, suffix)
}
