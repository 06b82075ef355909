package main

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/downstream"
	"github.com/kitsune-lb/kitsune/gateway"
	"github.com/kitsune-lb/kitsune/httpfront"
	"github.com/kitsune-lb/kitsune/preload"
)

// httpFlags configure the HTTP front: delegated routing (/routing/v1) so
// HTTP-routing clients (Helia) find Kitsune as the provider of what the
// fleet holds.
type httpFlags struct {
	HTTP          string        `name:"http" env:"KITSUNE_HTTP" placeholder:"[HOST:]PORT" help:"Serve delegated routing (/routing/v1) on this port, or host:port, or TCP multiaddr, as -p takes. Providers queries answer Kitsune's own peer record when a fleet node holds the CID (an offline block lookup on the node the policy picks, cached); peers (other than Kitsune), IPNS (GET, PUT) and closest peers are asked of a healthy fleet node's own /routing/v1 (its gateway port, which must be fixed in Addresses.Gateway). Empty or 0 (the default) turns it off. A multiaddr ending /tls/http (or /https) serves HTTPS, HTTP/2 included, with --tls-cert."`
	HTTPMaxPerIP  int           `name:"http-max-per-ip" env:"KITSUNE_HTTP_MAX_PER_IP" default:"16" help:"Concurrent routing requests per client IP (per /64 for IPv6); more get 429."`
	HTTPTimeout   time.Duration `name:"http-timeout" env:"KITSUNE_HTTP_TIMEOUT" default:"10s" help:"Longest routing answer (Helia gives up after 30s)."`
	HTTPCheckTime time.Duration `name:"http-check-timeout" env:"KITSUNE_HTTP_CHECK_TIMEOUT" default:"2s" help:"How long a fleet node has to say whether it holds a CID; no answer counts as no for that request and is not cached."`
	HTTPCacheSize int           `name:"http-cache-size" env:"KITSUNE_HTTP_CACHE_SIZE" default:"65536" help:"Remembered \"the fleet holds this CID\" answers (least recently stored dropped first)."`
	HTTPTrusted   []string      `name:"http-trusted-proxies" env:"KITSUNE_HTTP_TRUSTED_PROXIES" sep:"," placeholder:"CIDR" help:"Comma-separated IPs or CIDRs of reverse proxies whose X-Forwarded-For names the routing client (for --http-max-per-ip); from anyone else it is ignored."`
	HTTPCacheTTL  time.Duration `name:"http-cache-ttl" env:"KITSUNE_HTTP_CACHE_TTL" default:"1m" help:"How long a yes is remembered; a no is remembered for a twelfth of it (at least 1s), as content is added all the time."`
	gatewayFlags  `embed:""`
}

// httpConfig is the validated form; Addr is empty when the front is off.
type httpConfig struct {
	Addr         string
	MaxPerIP     int
	Timeout      time.Duration
	CheckTimeout time.Duration
	CacheSize    int
	CacheTTL     time.Duration
	Trusted      []netip.Prefix
	Gateway      gatewayConfig
	// HTTPS is set by an /https or /tls/http --http address; TLS is then
	// the front host's --tls-cert configuration.
	HTTPS bool
	TLS   *tls.Config
}

func (f *httpFlags) config() (httpConfig, error) {
	// A multiaddr ending /tls/http or /https serves HTTPS (with HTTP/2),
	// with --tls-cert (set in runCmd.config), as -p does.
	rest, https, err := cutHTTPS(f.HTTP)
	if err != nil {
		return httpConfig{}, fmt.Errorf("--http %q: %w", f.HTTP, err)
	}
	addr, err := preloadAddr(rest)
	if err != nil {
		return httpConfig{}, fmt.Errorf("--http %q: %w", f.HTTP, err)
	}
	for _, v := range []struct {
		name string
		ok   bool
	}{
		{"--http-max-per-ip", f.HTTPMaxPerIP > 0},
		{"--http-timeout", f.HTTPTimeout > 0},
		{"--http-check-timeout", f.HTTPCheckTime > 0},
		{"--http-cache-size", f.HTTPCacheSize > 0},
		{"--http-cache-ttl", f.HTTPCacheTTL > 0},
	} {
		if !v.ok {
			return httpConfig{}, fmt.Errorf("%s must be positive", v.name)
		}
	}
	trusted, err := parseTrustedProxies(f.HTTPTrusted)
	if err != nil {
		return httpConfig{}, fmt.Errorf("--http-trusted-proxies %w", err)
	}
	gw, err := f.gatewayFlags.config()
	if err != nil {
		return httpConfig{}, err
	}
	return httpConfig{Addr: addr, HTTPS: https && addr != "", MaxPerIP: f.HTTPMaxPerIP, Timeout: f.HTTPTimeout, CheckTimeout: f.HTTPCheckTime,
		CacheSize: f.HTTPCacheSize, CacheTTL: f.HTTPCacheTTL, Trusted: trusted, Gateway: gw}, nil
}

// maxCheckedNodes bounds the nodes asked whether they hold one CID.
const maxCheckedNodes = 3

// startHTTP starts the HTTP front when it is configured; a nil Server
// (off) is safe to Close. reg may be nil (admin port off).
func startHTTP(cfg httpConfig, front host.Host, backID peer.ID, pool *downstream.Pool, relay gateway.Fetcher, reg prometheus.Registerer, log *zap.Logger) (*preload.Server, error) {
	if cfg.Addr == "" {
		return nil, nil
	}
	hold, err := httpfront.NewHoldings(httpfront.HoldingsConfig{
		Checker:      httpfront.KuboChecker{},
		Locator:      poolLocator{pool},
		MaxNodes:     maxCheckedNodes,
		CheckTimeout: cfg.CheckTimeout,
		CacheSize:    cfg.CacheSize,
		PositiveTTL:  cfg.CacheTTL,
		NegativeTTL:  max(cfg.CacheTTL/12, time.Second),
	})
	if err != nil {
		return nil, err
	}
	fleet, err := httpfront.NewFleet(httpfront.FleetConfig{
		Locator:  poolLocator{pool},
		Routing:  &httpfront.KuboRouting{},
		MaxNodes: maxCheckedNodes,
		Log:      log,
		// The fleet's addresses are internal: never handed out.
		Hidden: func(id peer.ID) bool { return id == backID || pool.IsNode(id) },
	})
	if err != nil {
		return nil, err
	}
	self := httpfront.Self{ID: front.ID(), Addrs: front.Addrs}
	gwAddrs := &gatewayAddrs{announce: cfg.Gateway.Announce, front: front, tls: cfg.TLS != nil}
	if cfg.Gateway.On {
		self.GatewayAddrs = gwAddrs.addrs
	}
	h, err := httpfront.New(httpfront.Config{
		Fleet:          fleet,
		Self:           self,
		Holdings:       hold,
		MaxPerIP:       cfg.MaxPerIP,
		Timeout:        cfg.Timeout,
		Registry:       reg,
		TrustedProxies: cfg.Trusted,
		Observe: func(o httpfront.Outcome, d time.Duration) {
			if o == httpfront.Unsure {
				// No node could say (none healthy, errors, timeouts):
				// the client was told "no provider" this time.
				log.Debug("providers: no fleet node answered", zap.Duration("took", d))
			}
		},
	})
	if err != nil {
		return nil, err
	}
	all, err := withGateway(cfg.Gateway, h, relay, cfg.Trusted, reg)
	if err != nil {
		return nil, err
	}
	// The preload port's server: the same slow-client timeouts and
	// shutdown.
	s, err := preload.ListenTLS(cfg.Addr, all, log, preload.Timeouts{}, cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("http port: %w", err)
	}
	gwAddrs.listening(s.Addr())
	return s, nil
}

// poolLocator names the nodes to ask whether the fleet holds a CID: the
// policy's node first, then the other healthy connected ones.
type poolLocator struct{ *downstream.Pool }

// Candidates implements httpfront.Locator.
func (p poolLocator) Candidates(c cid.Cid) []string {
	first, ok := p.ChooseAPI(c)
	if !ok {
		return nil
	}
	out := []string{first}
	for _, n := range p.Nodes() {
		if len(out) >= maxCheckedNodes {
			break
		}
		if n.Connected && n.State != downstream.StateEjected && !slices.Contains(out, n.URL) {
			out = append(out, n.URL)
		}
	}
	return out
}
