package gateway

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/boxo/blockservice"
	"github.com/ipfs/boxo/blockstore"
	bgw "github.com/ipfs/boxo/gateway"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kitsune-lb/kitsune/preload"
)

// Defaults for Config.
const (
	DefaultMaxPerIP         = 8
	DefaultMaxWaitingPerIP  = 256
	DefaultRetrievalTimeout = 30 * time.Second
	DefaultMaxDuration      = 10 * time.Minute
	DefaultMaxResponseBytes = 1 << 30
)

// Config configures the gateway handler.
type Config struct {
	// Fetcher is where blocks come from (the relay).
	Fetcher Fetcher
	// MaxPerIP bounds concurrent gateway requests per client address (per
	// /64 for IPv6); up to MaxWaitingPerIP more wait for a slot, and more
	// than that get 429.
	MaxPerIP        int
	MaxWaitingPerIP int
	// RetrievalTimeout bounds the wait for the first byte of a response
	// and between two writes (boxo's RetrievalTimeout): 504 before the
	// headers, a cut stream after.
	RetrievalTimeout time.Duration
	// MaxDuration bounds one request in all.
	MaxDuration time.Duration
	// MaxResponseBytes bounds the body of one response (in practice a
	// CAR: a raw block is at most 2 MiB).
	MaxResponseBytes int64
	// Prefetch is how many blocks a CAR request fetches ahead of boxo's
	// walk (DefaultPrefetch when zero, none when negative).
	Prefetch int
	// TrustedProxies are the peers whose X-Forwarded-For names the client.
	TrustedProxies []netip.Prefix
	// Registry receives boxo's gateway metrics; a private one when nil.
	Registry prometheus.Registerer
}

// Handler serves /ipfs/ as a trustless gateway.
type Handler struct {
	cfg   Config
	next  http.Handler
	limit *queueLimiter
}

// New checks cfg and builds the handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Fetcher == nil {
		return nil, errors.New("gateway: Config needs a Fetcher")
	}
	if cfg.Prefetch == 0 {
		cfg.Prefetch = DefaultPrefetch
	}
	if cfg.MaxPerIP < 0 || cfg.MaxWaitingPerIP < 0 || cfg.RetrievalTimeout < 0 || cfg.MaxDuration < 0 || cfg.MaxResponseBytes < 0 {
		return nil, errors.New("gateway: limits must not be negative")
	}
	if cfg.MaxPerIP == 0 {
		cfg.MaxPerIP = DefaultMaxPerIP
	}
	if cfg.MaxWaitingPerIP == 0 {
		cfg.MaxWaitingPerIP = DefaultMaxWaitingPerIP
	}
	if cfg.RetrievalTimeout == 0 {
		cfg.RetrievalTimeout = DefaultRetrievalTimeout
	}
	if cfg.MaxDuration == 0 {
		cfg.MaxDuration = DefaultMaxDuration
	}
	if cfg.MaxResponseBytes == 0 {
		cfg.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	// Nothing is kept: what the fleet sends is streamed out and dropped.
	bstore := blockstore.NewBlockstore(dssync.MutexWrap(datastore.NewNullDatastore()))
	bs := blockservice.New(bstore, NewExchange(cfg.Fetcher))
	backend, err := bgw.NewBlocksBackend(bs, bgw.WithPrometheusRegistry(cfg.Registry))
	if err != nil {
		return nil, fmt.Errorf("gateway backend: %w", err)
	}
	h := bgw.NewHandler(bgw.Config{
		DeserializedResponses: false, // trustless only: no HTML, no listings
		NoDNSLink:             true,
		DisableHTMLErrors:     true,
		RetrievalTimeout:      cfg.RetrievalTimeout,
		MaxRequestDuration:    cfg.MaxDuration,
		// The per-IP limit below is the one that matters; boxo's global
		// one stays at its default as a backstop.
		MaxConcurrentRequests: bgw.DefaultMaxConcurrentRequests,
		DiagnosticServiceURL:  "",
		MetricsRegistry:       cfg.Registry,
	}, backend)
	return &Handler{
		cfg:   cfg,
		next:  bgw.NewHeaders(nil).ApplyCors().Wrap(h),
		limit: newQueueLimiter(cfg.MaxPerIP, cfg.MaxWaitingPerIP),
	}, nil
}

// Prefix is the path the gateway serves.
const Prefix = "/ipfs/"

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, Prefix):
	case strings.HasPrefix(r.URL.Path, "/ipns/"):
		http.Error(w, "not implemented: this is a trustless gateway for /ipfs/ only", http.StatusNotImplemented)
		return
	default:
		http.NotFound(w, r)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodOptions:
		h.next.ServeHTTP(w, r) // CORS preflight, answered by boxo's headers
		return
	default:
		w.Header().Set("Allow", "GET, HEAD, OPTIONS")
		http.Error(w, "method not allowed: GET and HEAD only", http.StatusMethodNotAllowed)
		return
	}
	// The wait for a slot counts against the retrieval timeout too.
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.RetrievalTimeout)
	release, err := h.limit.acquire(ctx, preload.ClientIP(r, h.cfg.TrustedProxies))
	cancel()
	switch {
	case errors.Is(err, errBusy):
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many concurrent gateway requests from your address", http.StatusTooManyRequests)
		return
	case err != nil:
		http.Error(w, "timed out waiting for a free slot among your address's requests", http.StatusGatewayTimeout)
		return
	}
	defer release()
	if h.cfg.Prefetch > 0 && wantsCAR(r) {
		r = r.WithContext(withPrefetch(r.Context(), h.cfg.Fetcher, h.cfg.Prefetch))
	}
	h.next.ServeHTTP(&boundedWriter{ResponseWriter: w, left: h.cfg.MaxResponseBytes}, r)
}

// ErrTooLarge is what a write past MaxResponseBytes returns.
var ErrTooLarge = errors.New("gateway: response larger than the configured bound")

// truncated is written where a response is cut: the bytes stop being a
// well-formed CAR, as boxo marks a stream that failed partway (a client
// checking its CAR fails there instead of taking a short DAG as whole).
const truncated = "\n\n[Kitsune gateway: response cut at the configured size bound, incomplete]"

// boundedWriter passes at most left body bytes, then marks the cut and
// refuses the rest.
type boundedWriter struct {
	http.ResponseWriter
	mu   sync.Mutex
	left int64
	cut  bool
}

func (b *boundedWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cut {
		return 0, ErrTooLarge
	}
	if int64(len(p)) <= b.left {
		n, err := b.ResponseWriter.Write(p)
		b.left -= int64(n)
		return n, err
	}
	n, err := b.ResponseWriter.Write(p[:b.left])
	b.left -= int64(n)
	b.cut = true
	_, _ = b.ResponseWriter.Write([]byte(truncated))
	if err == nil {
		err = ErrTooLarge
	}
	return n, err
}

// Flush and Hijack pass through: boxo flushes streams and, on a retrieval
// timeout after the headers, hijacks the connection to reset it.
func (b *boundedWriter) Flush() {
	if f, ok := b.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (b *boundedWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if h, ok := b.ResponseWriter.(http.Hijacker); ok {
		return h.Hijack()
	}
	return nil, nil, http.ErrNotSupported
}

// Unwrap lets http.ResponseController reach the connection.
func (b *boundedWriter) Unwrap() http.ResponseWriter { return b.ResponseWriter }
