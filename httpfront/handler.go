package httpfront

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/ipfs/boxo/ipns"
	"github.com/kitsune-lb/kitsune/internal/iplimit"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/ipfs/boxo/routing/http/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kitsune-lb/kitsune/preload"
)

// Defaults for Config.
const (
	DefaultMaxPerIP = 16
	DefaultTimeout  = 10 * time.Second
)

// Config configures the HTTP front's handler.
type Config struct {
	Self     Self
	Holdings *Holdings
	// MaxPerIP bounds concurrent requests per client address (per /64 for
	// IPv6); more get 429. DefaultMaxPerIP when zero.
	MaxPerIP int
	// Timeout bounds one routing answer; DefaultTimeout when zero. Helia
	// gives up after 30s, so the default stays well inside it.
	Timeout time.Duration
	// Registry receives boxo's HTTP metrics; a private registry when nil
	// (boxo would otherwise register on the global one).
	Registry prometheus.Registerer
	// TrustedProxies are the peers whose X-Forwarded-For names the client
	// (for the per-IP limit); from anyone else it is ignored.
	TrustedProxies []netip.Prefix
	// Observe, when set, hears how each providers answer was reached and
	// how long deciding took.
	Observe func(Outcome, time.Duration)
	// Fleet, when set, answers other peers' records, IPNS (GET and PUT)
	// and closest peers from the fleet's own /routing/v1; without it
	// those get not found or 501.
	Fleet *Fleet
}

// RoutingPrefix is the path every routing request starts with.
const RoutingPrefix = "/routing/v1/"

// Handler serves /routing/v1 (providers and peers) and refuses the rest.
type Handler struct {
	routing http.Handler
	limit   *iplimit.Limiter
	trusted []netip.Prefix
	fleet   bool
}

// New checks cfg and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Holdings == nil || cfg.Self.ID == "" || cfg.Self.Addrs == nil {
		return nil, errors.New("httpfront: Config needs Holdings and Self")
	}
	if cfg.MaxPerIP < 0 || cfg.Timeout < 0 {
		return nil, errors.New("httpfront: MaxPerIP and Timeout must not be negative")
	}
	if cfg.MaxPerIP == 0 {
		cfg.MaxPerIP = DefaultMaxPerIP
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	r := &Router{self: cfg.Self, holdings: cfg.Holdings, observe: cfg.Observe, fleet: cfg.Fleet}
	return &Handler{
		routing: server.Handler(r,
			server.WithRoutingTimeout(cfg.Timeout),
			server.WithPrometheusRegistry(cfg.Registry),
			server.WithRecordsLimit(server.DefaultRecordsLimit),
		),
		limit:   iplimit.New(cfg.MaxPerIP),
		trusted: cfg.TrustedProxies,
		fleet:   cfg.Fleet != nil,
	}, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Browsers (Helia in a page) call from any origin; the API is public
	// and read-only, so any origin may read it.
	w.Header().Set("Access-Control-Allow-Origin", "*")
	if r.Method == http.MethodOptions {
		w.Header().Set("Access-Control-Allow-Methods", "GET, PUT, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Accept, Content-Type")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, RoutingPrefix+"providers/"), strings.HasPrefix(p, RoutingPrefix+"peers/"):
		if r.Method != http.MethodGet {
			// PUT /providers (IPIP-526, deprecated) is not taken: the
			// fleet's content is announced by Kitsune, not by callers.
			w.Header().Set("Allow", "GET, OPTIONS")
			http.Error(w, "method not allowed: only GET is served", http.StatusMethodNotAllowed)
			return
		}
	case !h.fleet && (strings.HasPrefix(p, RoutingPrefix+"ipns/") || strings.HasPrefix(p, RoutingPrefix+"dht/")):
		http.Error(w, "not implemented: Kitsune answers /routing/v1/providers and /routing/v1/peers only", http.StatusNotImplemented)
		return
	case strings.HasPrefix(p, RoutingPrefix+"ipns/"):
		if !checkIPNSRequest(w, r) {
			return
		}
	case strings.HasPrefix(p, RoutingPrefix+"dht/closest/peers/"):
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", "GET, OPTIONS")
			http.Error(w, "method not allowed: only GET is served", http.StatusMethodNotAllowed)
			return
		}
	default:
		http.NotFound(w, r)
		return
	}
	release, ok := h.limit.Acquire(preload.ClientIP(r, h.trusted))
	if !ok {
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many concurrent requests from your address", http.StatusTooManyRequests)
		return
	}
	defer release()
	h.routing.ServeHTTP(w, r)
}

// checkIPNSRequest refuses what boxo's server would not refuse the way
// the API promises: a PUT body over the IPNS size limit (boxo reads only
// the first MaxRecordSize bytes and would call the rest malformed) gets
// 413. It replaces a PUT body with the bytes read, so the server sees the
// whole record. It reports whether the request goes on.
func checkIPNSRequest(w http.ResponseWriter, r *http.Request) bool {
	switch r.Method {
	case http.MethodGet:
		return true
	case http.MethodPut:
	default:
		w.Header().Set("Allow", "GET, PUT, OPTIONS")
		http.Error(w, "method not allowed: GET and PUT are served", http.StatusMethodNotAllowed)
		return false
	}
	if r.ContentLength > int64(ipns.MaxRecordSize) {
		http.Error(w, fmt.Sprintf("IPNS record over %d bytes", ipns.MaxRecordSize), http.StatusRequestEntityTooLarge)
		return false
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(ipns.MaxRecordSize)+1))
	if err != nil {
		http.Error(w, "reading the record: "+err.Error(), http.StatusBadRequest)
		return false
	}
	if len(body) > ipns.MaxRecordSize {
		http.Error(w, fmt.Sprintf("IPNS record over %d bytes", ipns.MaxRecordSize), http.StatusRequestEntityTooLarge)
		return false
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return true
}
