package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/bitswap"
	"github.com/kitsune-lb/kitsune/downstream"
	"github.com/kitsune-lb/kitsune/preload"
)

// preloadFlags configure the preload port: the js-ipfs preload call
// (POST /api/v0/refs) served over HTTP.
type preloadFlags struct {
	Preload               string        `short:"p" name:"preload" env:"KITSUNE_PRELOAD" placeholder:"[HOST:]PORT" help:"Serve the js-ipfs preload API (POST /api/v0/refs, nothing else) on this port, or host:port, or TCP multiaddr. A bare port listens on all interfaces; empty or 0 (the default) turns it off. A multiaddr ending /https (or /tls/http) serves HTTPS with --tls-cert, as js-ipfs's own preload addresses expect (/ip4/0.0.0.0/tcp/443/https)."`
	PreloadMaxPerIP       int           `name:"preload-max-per-ip" env:"KITSUNE_PRELOAD_MAX_PER_IP" default:"4" help:"Concurrent preload calls per client IP (per /64 for IPv6); more get 429."`
	PreloadTimeout        time.Duration `name:"preload-timeout" env:"KITSUNE_PRELOAD_TIMEOUT" default:"5m" help:"Longest preload call; it then ends with an X-Stream-Error (504 if the node sent nothing yet)."`
	PreloadGrace          time.Duration `name:"preload-grace" env:"KITSUNE_PRELOAD_GRACE" default:"10s" help:"How long a preload call's reverse session (the fleet fetching the DAG from the caller) stays open after the call ends."`
	PreloadTrustedProxies []string      `name:"preload-trusted-proxies" env:"KITSUNE_PRELOAD_TRUSTED_PROXIES" sep:"," placeholder:"CIDR" help:"Comma-separated IPs or CIDRs of reverse proxies whose X-Forwarded-For names the preload client; from anyone else it is ignored."`
}

// preloadConfig is the validated form; Addr is empty when preload is off.
type preloadConfig struct {
	Addr string
	// HTTPS is set by a /https or /tls/http -p address; TLS is then the
	// front host's --tls-cert configuration (set in runCmd.config).
	HTTPS          bool
	TLS            *tls.Config
	MaxPerIP       int
	Timeout        time.Duration
	Grace          time.Duration
	TrustedProxies []netip.Prefix
	// Observer hears about every call (metrics); nil when the admin port
	// is off.
	Observer preload.Observer
}

func (f *preloadFlags) config() (preloadConfig, error) {
	raw, https, err := cutHTTPS(f.Preload)
	if err != nil {
		return preloadConfig{}, fmt.Errorf("-p/--preload %q: %w", f.Preload, err)
	}
	addr, err := preloadAddr(raw)
	if err != nil {
		return preloadConfig{}, fmt.Errorf("-p/--preload %q: %w", f.Preload, err)
	}
	pc := preloadConfig{Addr: addr, HTTPS: https && addr != "", MaxPerIP: f.PreloadMaxPerIP, Timeout: f.PreloadTimeout, Grace: f.PreloadGrace}
	if f.PreloadGrace < 0 {
		return preloadConfig{}, fmt.Errorf("--preload-grace must not be negative, got %v", f.PreloadGrace)
	}
	if f.PreloadMaxPerIP <= 0 {
		return preloadConfig{}, fmt.Errorf("--preload-max-per-ip must be positive, got %d", f.PreloadMaxPerIP)
	}
	if f.PreloadTimeout <= 0 {
		return preloadConfig{}, fmt.Errorf("--preload-timeout must be positive, got %v", f.PreloadTimeout)
	}
	if pc.TrustedProxies, err = parseTrustedProxies(f.PreloadTrustedProxies); err != nil {
		return preloadConfig{}, fmt.Errorf("--preload-trusted-proxies %w", err)
	}
	return pc, nil
}

// cutHTTPS strips the scheme from a -p multiaddr: /https or /tls/http
// (HTTPS) or /http (plain), the way js-ipfs writes preload addresses.
// Anything else is returned as it is, for preloadAddr.
func cutHTTPS(s string) (rest string, https bool, err error) {
	s = strings.TrimSpace(s)
	if !strings.HasPrefix(s, "/") {
		return s, false, nil
	}
	m, err := ma.NewMultiaddr(s)
	if err != nil {
		return "", false, err
	}
	n := len(m)
	switch {
	case n >= 1 && m[n-1].Code() == ma.P_HTTPS:
		return m[:n-1].String(), true, nil
	case n >= 2 && m[n-1].Code() == ma.P_HTTP && m[n-2].Code() == ma.P_TLS:
		return m[:n-2].String(), true, nil
	case n >= 1 && m[n-1].Code() == ma.P_HTTP:
		return m[:n-1].String(), false, nil
	}
	return s, false, nil
}

// parseTrustedProxies reads IPs and CIDRs (an IP is its own /32 or /128);
// empty entries are skipped.
func parseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%q: want an IP or CIDR", s)
			}
			a = a.Unmap()
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// preloadAddr turns the -p value into a listen address. The original
// Kitsune took a port; host:port and /ip4|ip6/…/tcp/… multiaddrs pick an
// interface. Port 0 with a host picks a free port (tests use it).
func preloadAddr(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return "", nil
	}
	if strings.HasPrefix(s, "/") {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			return "", err
		}
		a, err := manet.ToNetAddr(m)
		if err != nil {
			return "", err
		}
		if _, ok := a.(*net.TCPAddr); !ok {
			return "", errors.New("want a TCP multiaddr")
		}
		return a.String(), nil
	}
	if p, err := strconv.ParseUint(s, 10, 16); err == nil {
		return ":" + strconv.FormatUint(p, 10), nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", errors.New("want a port, host:port or a TCP multiaddr")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("bad port %q", port)
	}
	return net.JoinHostPort(host, port), nil
}

// startPreload starts the preload port when it is configured; a nil
// Server (preload off) is safe to Close. sessions may be nil until the
// relay opens reverse sessions.
func startPreload(cfg preloadConfig, pool *downstream.Pool, sessions preload.Sessions, log *zap.Logger) (*preload.Server, error) {
	if cfg.Addr == "" {
		return nil, nil
	}
	h, err := preload.New(preload.Config{
		Chooser:        poolChooser{pool},
		Sessions:       sessions,
		MaxPerIP:       cfg.MaxPerIP,
		Timeout:        cfg.Timeout,
		TrustedProxies: cfg.TrustedProxies,
		Log:            log,
		Observer:       cfg.Observer,
	})
	if err != nil {
		return nil, err
	}
	s, err := preload.ListenTLS(cfg.Addr, h, log, preload.Timeouts{}, cfg.TLS)
	if err != nil {
		return nil, fmt.Errorf("preload port: %w", err)
	}
	return s, nil
}

// poolChooser gives preload the pool's choice (Pool.ChooseAPI, the
// selection policy over healthy nodes) and the peer ID behind each URL, so
// reverse sessions know which node's wants they authorise.
type poolChooser struct{ *downstream.Pool }

// PeerOf implements preload.PeerLookup.
func (p poolChooser) PeerOf(url string) (peer.ID, bool) {
	for _, n := range p.Nodes() {
		if n.URL == url && n.ID != "" {
			return n.ID, true
		}
	}
	return "", false
}

// reverseSessions opens a relay reverse session for each preload call, so
// the node the call went to can fetch the DAG from the caller through
// Kitsune.
type reverseSessions struct {
	relay *bitswap.Relay
	grace time.Duration
}

// Begin implements preload.Sessions.
func (r reverseSessions) Begin(call preload.Call) func() {
	return r.relay.BeginReverse(call.Root, call.Node.Peer, call.Client, r.grace)
}

var (
	_ preload.Sessions   = reverseSessions{}
	_ preload.Chooser    = poolChooser{}
	_ preload.PeerLookup = poolChooser{}
)
