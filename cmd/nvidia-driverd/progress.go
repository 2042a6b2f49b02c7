package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

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
		rate = float64(done) / elapsed / (1 << 20)
	}
	if p.tty {
		fmt.Fprintf(p.w, "\rpulling %s/%s MiB (%.1f MiB/s)  ", mib(done), mib(total), rate)
		p.drew = true
		return
	}
	p.log.Info("pulling", zap.Int64("done_bytes", done), zap.Int64("total_bytes", total), zap.Float64("mib_per_s", rate))
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

func mib(n int64) string { return fmt.Sprintf("%.0f", float64(n)/(1<<20)) }
