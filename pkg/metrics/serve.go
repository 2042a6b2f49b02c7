package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// shutdownGrace bounds the graceful shutdown once ctx ends.
const shutdownGrace = 5 * time.Second

// Handler serves /metrics (the private registry plus go_* and process_*)
// and /healthz (200 when driver_ready is 1, else 503). Errors while
// gathering go to log (nil: not logged).
func (m *Metrics) Handler(log *zap.Logger) http.Handler {
	mux := http.NewServeMux()
	if m == nil {
		return mux
	}
	opts := promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             30 * time.Second,
	}
	if log != nil {
		opts.ErrorLog = zap.NewStdLog(log.Named("metrics"))
	}
	mux.Handle("/metrics", promhttp.HandlerFor(prometheus.Gatherers{m.reg, m.runtime}, opts))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if m.IsReady() {
			_, _ = w.Write([]byte("ready\n"))
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready\n"))
	})
	return mux
}

// Server is a running metrics endpoint.
type Server struct {
	addr net.Addr
	done chan struct{}
	err  error // set before done is closed
}

// Serve listens on addr (host:port; port 0 picks one) and serves Handler
// in the background until ctx ends, then shuts down gracefully. It returns
// once listening, or the listen error naming addr. A nil *Metrics or addr
// "" serves nothing and returns a nil *Server.
func (m *Metrics) Serve(ctx context.Context, addr string, log *zap.Logger) (*Server, error) {
	if m == nil || addr == "" {
		return nil, nil
	}
	if log == nil {
		log = zap.NewNop()
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           m.Handler(log),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          zap.NewStdLog(log.Named("metrics")),
	}
	s := &Server{addr: ln.Addr(), done: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	go func() {
		defer close(s.done)
		select {
		case err := <-served:
			// Serve stopped on its own: an accept error.
			s.err = fmt.Errorf("serve metrics on %s: %w", s.addr, err)
			log.Error("metrics endpoint stopped", zap.Error(err))
			return
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
			s.err = fmt.Errorf("shut down metrics on %s: %w", s.addr, err)
		}
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) && s.err == nil {
			s.err = fmt.Errorf("serve metrics on %s: %w", s.addr, err)
		}
	}()
	log.Info("serving metrics", zap.Stringer("addr", s.addr))
	return s, nil
}

// Addr is the address listened on; nil on a nil *Server.
func (s *Server) Addr() net.Addr {
	if s == nil {
		return nil
	}
	return s.addr
}

// Wait blocks until the server has stopped, after ctx ended or on an
// accept error, and returns that error or nil. A nil *Server returns nil
// at once.
func (s *Server) Wait() error {
	if s == nil {
		return nil
	}
	<-s.done
	return s.err
}
