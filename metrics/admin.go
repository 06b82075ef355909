package metrics

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

//go:embed web
var webFS embed.FS

// contentSecurity keeps the dashboard to what the binary serves: no script,
// style, font or image from anywhere else.
const contentSecurity = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the admin endpoints:
//
//	/              the dashboard (embedded HTML, JS and CSS)
//	/metrics       Prometheus metrics from g
//	/healthz       200 while the process runs
//	/readyz        200 when ready, 503 with the reason otherwise
//	/api/status    the Status document as JSON
//	/debug/pprof/  the Go profiler
func Handler(m *Metrics, g prometheus.Gatherer, log *zap.Logger) http.Handler {
	if log == nil {
		log = zap.NewNop()
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:      zap.NewStdLog(log),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := m.Ready(); !ok {
			plain(w, http.StatusServiceUnavailable, "not ready: "+why+"\n")
			return
		}
		plain(w, http.StatusOK, "ready\n")
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(m.Status())
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)

	web, _ := fs.Sub(webFS, "web")
	files := http.FileServerFS(web)
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			h.Set("Allow", "GET, HEAD")
			plain(w, http.StatusMethodNotAllowed, "method not allowed\n")
			return
		}
		h.Set("Content-Security-Policy", contentSecurity)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}))
	return mux
}

func plain(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// Server is the admin HTTP server, which also runs the throughput
// sampler.
type Server struct {
	srv    *http.Server
	ln     net.Listener
	m      *Metrics
	cancel context.CancelFunc
	done   chan struct{}
}

// Listen serves Handler(m, g, log) on addr (host:port; port 0 picks one)
// and samples throughput until Close.
func Listen(addr string, m *Metrics, g prometheus.Gatherer, log *zap.Logger) (*Server, error) {
	if log == nil {
		log = zap.NewNop()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		srv: &http.Server{
			Handler:           Handler(m, g, log),
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    32 << 10,
			ErrorLog:          zap.NewStdLog(log.WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
		},
		ln:     ln,
		m:      m,
		cancel: cancel,
		done:   make(chan struct{}, 2),
	}
	go func() {
		defer func() { s.done <- struct{}{} }()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server stopped", zap.Error(err))
		}
	}()
	go func() {
		defer func() { s.done <- struct{}{} }()
		m.Run(ctx)
	}()
	return s, nil
}

// Addr is the address listened on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the server's base URL, e.g. http://127.0.0.1:5080; "" for a nil
// Server.
func (s *Server) URL() string {
	if s == nil {
		return ""
	}
	return "http://" + s.ln.Addr().String()
}

// Close stops the server, waiting for running requests until ctx ends. A
// nil Server is a no-op.
func (s *Server) Close(ctx context.Context) error {
	if s == nil {
		return nil
	}
	s.cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	<-s.done
	return err
}
