package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/downstream"
	"github.com/kitsune-lb/kitsune/preload"
	"github.com/kitsune-lb/kitsune/provide"
)

// provideFlags turn on announcing the fleet's content on the DHT under
// Kitsune's identity.
type provideFlags struct {
	Provide            bool          `name:"provide" env:"KITSUNE_PROVIDE" help:"Join the Amino DHT as a client on the front host and announce, under Kitsune's peer ID and announced addresses, what the fleet holds: every node's recursive pins (pin/ls over RPC, re-read every --provide-refresh) and every root a preload call pulled in (kept 24h after its last call). Uses go-libp2p-kad-dht's sweep provider, as Kubo does, reproviding every 22h; kept in memory and rebuilt from the fleet at start. Off by default."`
	Bootstrap          []string      `name:"bootstrap" env:"KITSUNE_BOOTSTRAP" sep:"," placeholder:"MULTIADDR" help:"Comma-separated DHT bootstrap peers for --provide, as multiaddrs ending in /p2p/<peer ID>. Default: the public Amino bootstrap list."`
	ProvideMaxKeys     int           `name:"provide-max-keys" env:"KITSUNE_PROVIDE_MAX_KEYS" default:"200000" help:"Most roots announced with --provide (pins first, then the most recent preloaded roots); the rest are logged and left out."`
	ProvideRefresh     time.Duration `name:"provide-refresh" env:"KITSUNE_PROVIDE_REFRESH" default:"10m" help:"How often --provide re-reads every node's pins; roots unpinned since stop being announced."`
	ProvideLANLoopback bool          `name:"provide-lan-loopback" hidden:"" help:"Keep loopback addresses in the LAN DHT (Kubo's Routing.LoopbackAddressesOnLanDHT): for tests on one machine."`
}

// provideConfig is the validated form; nil when --provide is off.
type provideConfig struct {
	DHT     provide.DHTConfig
	MaxKeys int
	Refresh time.Duration
}

func (f *provideFlags) config(front frontSettings, privateDHT bool) (*provideConfig, error) {
	if !f.Provide {
		if len(nonEmpty(f.Bootstrap)) > 0 {
			return nil, errors.New("--bootstrap needs --provide")
		}
		return nil, nil
	}
	switch {
	case privateDHT:
		return nil, errors.New("--provide and --private-dht both run a DHT on the front host; choose one")
	case f.ProvideMaxKeys <= 0:
		return nil, fmt.Errorf("--provide-max-keys must be positive, got %d", f.ProvideMaxKeys)
	case f.ProvideRefresh <= 0:
		return nil, fmt.Errorf("--provide-refresh must be positive, got %s", f.ProvideRefresh)
	}
	boot, err := parseBootstrap(nonEmpty(f.Bootstrap))
	if err != nil {
		return nil, err
	}
	if len(boot) == 0 {
		if front.Front.PSK != nil {
			return nil, errors.New("--provide with --psk-file needs --bootstrap: the public Amino peers are not in the private network")
		}
		boot = dht.GetDefaultBootstrapPeerAddrInfos()
	}
	return &provideConfig{
		DHT:     provide.DHTConfig{Bootstrap: boot, LANLoopback: f.ProvideLANLoopback},
		MaxKeys: f.ProvideMaxKeys,
		Refresh: f.ProvideRefresh,
	}, nil
}

func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// parseBootstrap reads --bootstrap: each a multiaddr with /p2p/<id>;
// several addresses of one peer merge.
func parseBootstrap(addrs []string) ([]peer.AddrInfo, error) {
	var all []ma.Multiaddr
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("--bootstrap %q: %w", s, err)
		}
		ai, err := peer.AddrInfoFromP2pAddr(a)
		if err != nil {
			return nil, fmt.Errorf("--bootstrap %q: want a multiaddr ending in /p2p/<peer ID>: %w", s, err)
		}
		if len(ai.Addrs) == 0 {
			return nil, fmt.Errorf("--bootstrap %q: no address to dial before /p2p/", s)
		}
		all = append(all, a)
	}
	return peer.AddrInfosFromP2pAddrs(all...)
}

// provider is a running --provide: the DHT and the announcer over it.
type provider struct {
	dht       *provide.DHT
	announcer *provide.Announcer
}

// startProvide joins the DHT and builds the announcer; run starts it.
// reg, when set (admin port on), gets the announced-keys gauges.
func startProvide(cfg *provideConfig, front host.Host, pool *downstream.Pool, reg prometheus.Registerer, log *zap.Logger) (*provider, error) {
	d, err := provide.StartDHT(front, cfg.DHT)
	if err != nil {
		return nil, err
	}
	a, err := provide.New(provide.Config{
		Provider: d.Provider,
		Pins:     provide.KuboPins{},
		Nodes: func() []string {
			var urls []string
			for _, n := range pool.Nodes() {
				urls = append(urls, n.URL)
			}
			return urls
		},
		MaxKeys: cfg.MaxKeys,
		Refresh: cfg.Refresh,
		Log:     log,
	})
	if err != nil {
		_ = d.Close()
		return nil, err
	}
	if reg != nil {
		err = errors.Join(
			reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "kitsune_provide_keys",
				Help: "Roots Kitsune announces on the DHT (--provide): the fleet's pins and preloaded roots.",
			}, func() float64 { n, _ := a.Announced(); return float64(n) })),
			reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "kitsune_provide_keys_truncated",
				Help: "1 when the fleet holds more roots than --provide-max-keys and some are not announced.",
			}, func() float64 {
				if _, t := a.Announced(); t {
					return 1
				}
				return 0
			})))
		if err != nil {
			_ = d.Close()
			return nil, fmt.Errorf("provide metrics: %w", err)
		}
	}
	return &provider{dht: d, announcer: a}, nil
}

func (p *provider) run(ctx context.Context) { p.announcer.Run(ctx) }

// Close implements io.Closer.
func (p *provider) Close() error { return p.dht.Close() }

var _ io.Closer = (*provider)(nil)

// preloadedRoots passes preload calls on to next (metrics) and tells the
// announcer, once it runs, about every root a call pulled into the fleet.
type preloadedRoots struct {
	next preload.Observer
	to   atomic.Pointer[provide.Announcer]
}

// CallStarted implements preload.Observer.
func (p *preloadedRoots) CallStarted(c preload.Call) {
	if p.next != nil {
		p.next.CallStarted(c)
	}
}

// CallFinished implements preload.Observer: a call the node answered to
// the end means it now holds the root.
func (p *preloadedRoots) CallFinished(r preload.CallResult) {
	if p.next != nil {
		p.next.CallFinished(r)
	}
	if a := p.to.Load(); a != nil && r.Admitted && r.Outcome == preload.OutcomeOK && r.Call.Root.Defined() {
		a.Preloaded(r.Call.Root)
	}
}
