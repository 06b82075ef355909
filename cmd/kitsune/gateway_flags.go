package main

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kitsune-lb/kitsune/gateway"
)

// gatewayFlags turn on the trustless gateway on the --http port.
type gatewayFlags struct {
	Gateway            bool          `name:"http-gateway" env:"KITSUNE_HTTP_GATEWAY" help:"Also serve a trustless gateway on the --http port: GET and HEAD /ipfs/{cid} with ?format=raw or ?format=car (or the matching Accept types), blocks fetched through the relay from the fleet and checked against their CIDs. No deserialized responses (no HTML, no directory listings), no /ipns/. Routing records then offer transport-ipfs-gateway-http."`
	GatewayMaxPerIP    int           `name:"http-gateway-max-per-ip" env:"KITSUNE_HTTP_GATEWAY_MAX_PER_IP" default:"8" help:"Concurrent gateway requests per client IP (per /64 for IPv6); more wait for a slot (see --http-gateway-queue-per-ip)."`
	GatewayQueuePerIP  int           `name:"http-gateway-queue-per-ip" env:"KITSUNE_HTTP_GATEWAY_QUEUE_PER_IP" default:"256" help:"Gateway requests per client IP that may wait for a slot, at most --http-gateway-timeout (trustless clients ask for a DAG's blocks in parallel); more get 429."`
	GatewayTimeout     time.Duration `name:"http-gateway-timeout" env:"KITSUNE_HTTP_GATEWAY_TIMEOUT" default:"30s" help:"Longest wait for a gateway response's first byte, and between two writes: 504 before the headers, a cut (invalid) stream after."`
	GatewayMaxDuration time.Duration `name:"http-gateway-max-duration" env:"KITSUNE_HTTP_GATEWAY_MAX_DURATION" default:"10m" help:"Longest gateway request in all."`
	GatewayMaxBytes    int64         `name:"http-gateway-max-bytes" env:"KITSUNE_HTTP_GATEWAY_MAX_BYTES" default:"1073741824" help:"Largest gateway response body in bytes (a CAR); a CAR reaching it is cut and made invalid."`
	GatewayPrefetch    int           `name:"http-gateway-prefetch" env:"KITSUNE_HTTP_GATEWAY_PREFETCH" default:"16" help:"Blocks a CAR request fetches ahead of the DAG walk (a node's links, depth first), so the fleet's round trips overlap; 0 turns it off. Raw block requests never fetch ahead."`
	GatewayAnnounce    []string      `name:"http-gateway-announce" env:"KITSUNE_HTTP_GATEWAY_ANNOUNCE" sep:"," placeholder:"MULTIADDR" help:"Comma-separated /http or /tls/http multiaddrs under which routing records offer the gateway (e.g. /dns4/gw.example.com/tcp/443/tls/http behind a TLS terminator). Default: the --http port at the front host's announced IPs and names, /http."`
}

// gatewayConfig is the validated form; On is false when the gateway is off.
type gatewayConfig struct {
	On          bool
	MaxPerIP    int
	QueuePerIP  int
	Timeout     time.Duration
	MaxDuration time.Duration
	MaxBytes    int64
	Prefetch    int
	Announce    []ma.Multiaddr
}

func (f *gatewayFlags) config() (gatewayConfig, error) {
	if !f.Gateway {
		return gatewayConfig{}, nil
	}
	if f.GatewayPrefetch < 0 {
		return gatewayConfig{}, fmt.Errorf("--http-gateway-prefetch must not be negative")
	}
	if f.GatewayMaxPerIP <= 0 || f.GatewayQueuePerIP <= 0 || f.GatewayTimeout <= 0 || f.GatewayMaxDuration <= 0 || f.GatewayMaxBytes <= 0 {
		return gatewayConfig{}, fmt.Errorf("--http-gateway-max-per-ip, --http-gateway-queue-per-ip, --http-gateway-timeout, --http-gateway-max-duration and --http-gateway-max-bytes must be positive")
	}
	c := gatewayConfig{On: true, MaxPerIP: f.GatewayMaxPerIP, QueuePerIP: f.GatewayQueuePerIP, Timeout: f.GatewayTimeout, MaxDuration: f.GatewayMaxDuration, MaxBytes: f.GatewayMaxBytes, Prefetch: f.GatewayPrefetch}
	if c.Prefetch == 0 {
		c.Prefetch = -1 // off (gateway.Config takes 0 as its default)
	}
	for _, s := range f.GatewayAnnounce {
		a, err := ma.NewMultiaddr(strings.TrimSpace(s))
		if err != nil {
			return gatewayConfig{}, fmt.Errorf("--http-gateway-announce %q: %w", s, err)
		}
		if _, err := a.ValueForProtocol(ma.P_HTTP); err != nil {
			return gatewayConfig{}, fmt.Errorf("--http-gateway-announce %q: not an /http or /tls/http address", s)
		}
		c.Announce = append(c.Announce, a)
	}
	return c, nil
}

// withGateway serves the gateway beside next (the routing API) when it is
// on; addrs is then set, once the port is known, to the addresses routing
// records give for it.
func withGateway(cfg gatewayConfig, next http.Handler, f gateway.Fetcher, trusted []netip.Prefix, reg prometheus.Registerer) (http.Handler, error) {
	if !cfg.On {
		return next, nil
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	gw, err := gateway.New(gateway.Config{
		Fetcher:          f,
		MaxPerIP:         cfg.MaxPerIP,
		MaxWaitingPerIP:  cfg.QueuePerIP,
		RetrievalTimeout: cfg.Timeout,
		MaxDuration:      cfg.MaxDuration,
		MaxResponseBytes: cfg.MaxBytes,
		Prefetch:         cfg.Prefetch,
		TrustedProxies:   trusted,
		Registry:         reg,
	})
	if err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.Path; strings.HasPrefix(p, gateway.Prefix) || strings.HasPrefix(p, "/ipns/") {
			gw.ServeHTTP(w, r)
			return
		}
		next.ServeHTTP(w, r)
	}), nil
}

// gatewayAddrs are the gateway's announced addresses, known once the port
// is: the configured ones, or the port at each of the front host's
// announced IPs and DNS names.
type gatewayAddrs struct {
	announce []ma.Multiaddr
	front    host.Host
	tls      bool // HTTPS: /tls/http rather than /http
	bound    atomic.Pointer[net.TCPAddr]
}

// listening records the bound address.
func (g *gatewayAddrs) listening(a net.Addr) {
	if t, ok := a.(*net.TCPAddr); ok {
		g.bound.Store(t)
	}
}

// addrs implements httpfront.Self.GatewayAddrs.
func (g *gatewayAddrs) addrs() []ma.Multiaddr {
	if len(g.announce) > 0 {
		return g.announce
	}
	bound := g.bound.Load()
	if bound == nil {
		return nil
	}
	port := bound.Port
	if ip, ok := netip.AddrFromSlice(bound.IP); ok && !ip.Unmap().IsUnspecified() {
		// Bound to one address: that one only.
		if m, err := ma.NewMultiaddr(ipProto(ip.Unmap()) + ip.Unmap().String() + "/tcp/" + strconv.Itoa(port) + g.scheme()); err == nil {
			return []ma.Multiaddr{m}
		}
		return nil
	}
	seen := map[string]bool{}
	var out []ma.Multiaddr
	for _, a := range g.front.Addrs() {
		if len(a) == 0 {
			continue
		}
		first := a[0]
		switch first.Protocol().Code {
		case ma.P_IP4, ma.P_IP6, ma.P_DNS, ma.P_DNS4, ma.P_DNS6:
		default:
			continue
		}
		s := first.String()
		if seen[s] {
			continue
		}
		seen[s] = true
		m, err := ma.NewMultiaddr(s + "/tcp/" + strconv.Itoa(port) + g.scheme())
		if err == nil {
			out = append(out, m)
		}
	}
	return out
}

func ipProto(ip netip.Addr) string {
	if ip.Is4() {
		return "/ip4/"
	}
	return "/ip6/"
}

func (g *gatewayAddrs) scheme() string {
	if g.tls {
		return "/tls/http"
	}
	return "/http"
}
