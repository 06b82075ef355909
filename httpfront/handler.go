package httpfront

import (
	"errors"
	"github.com/kitsune-lb/kitsune/internal/iplimit"
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
}

// RoutingPrefix is the path every routing request starts with.
const RoutingPrefix = "/routing/v1/"

// Handler serves /routing/v1 (providers and peers) and refuses the rest.
type Handler struct {
	routing http.Handler
	limit   *iplimit.Limiter
	trusted []netip.Prefix
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
	r := &Router{self: cfg.Self, holdings: cfg.Holdings, observe: cfg.Observe}
	return &Handler{
		routing: server.Handler(r,
			server.WithRoutingTimeout(cfg.Timeout),
			server.WithPrometheusRegistry(cfg.Registry),
			server.WithRecordsLimit(server.DefaultRecordsLimit),
		),
		limit:   iplimit.New(cfg.MaxPerIP),
		trusted: cfg.TrustedProxies,
	}, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Browsers (Helia in a page) call from any origin; the API is public
	// and read-only, so any origin may read it.
	w.Header().Set("Access-Control-Allow-Origin", "*")
	if r.Method == http.MethodOptions {
		w.Header().Set("Access-Control-Allow-Methods", "GET, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "Accept")
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
	case strings.HasPrefix(p, RoutingPrefix+"ipns/"), strings.HasPrefix(p, RoutingPrefix+"dht/"):
		http.Error(w, "not implemented: Kitsune answers /routing/v1/providers and /routing/v1/peers only", http.StatusNotImplemented)
		return
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
