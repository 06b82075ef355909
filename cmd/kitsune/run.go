package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/bitswap"
	"github.com/kitsune-lb/kitsune/downstream"
	"github.com/kitsune-lb/kitsune/geoip"
	"github.com/kitsune-lb/kitsune/preload"
	"github.com/kitsune-lb/kitsune/proxy"
)

// config is the validated form of the command line.
type config struct {
	Downstream  []string
	Listen      []ma.Multiaddr
	KeyFile     string
	BackKeyFile string
	Relay       bitswap.Config
	Pool        poolConfig
	Preload     preloadConfig
	HTTP        httpConfig
	Front       frontSettings
	Admin       adminConfig
	MDNS        bool
	GeoIP       *geoip.DB
	DHT         *proxy.PrivateDHTConfig
	Provide     *provideConfig
	NoGreet     bool
	Drain       drainPolicy
}

func (c *runCmd) config() (config, error) {
	cfg := config{
		KeyFile:     c.Key,
		BackKeyFile: c.backKeyFlags.path(c.Key),
		MDNS:        c.MDNS,
		NoGreet:     c.NoGreet,
		Relay: bitswap.Config{
			MaxWantsPerPeer:    c.MaxWantsPerPeer,
			MaxInFlightPerNode: c.MaxInflightPerNode,
			MaxMessageSize:     c.MaxMessageSize,
			RecentBlockBytes:   c.RecentBlockBytes,
			ReplyMemoryBytes:   c.ReplyMemory,
		},
	}
	for _, d := range c.Downstream {
		if d = strings.TrimSpace(d); d != "" {
			if _, err := downstream.APIURL(d); err != nil {
				return config{}, err
			}
			cfg.Downstream = append(cfg.Downstream, d)
		}
	}
	pc, err := c.poolFlags.config(&cfg.Relay)
	if err != nil {
		return config{}, err
	}
	cfg.Pool = pc
	if cfg.Preload, err = c.preloadFlags.config(); err != nil {
		return config{}, err
	}
	if cfg.HTTP, err = c.httpFlags.config(); err != nil {
		return config{}, err
	}
	if len(cfg.Downstream) == 0 && pc.DNS == nil && pc.File == "" {
		return config{}, errors.New("no downstream nodes: give -d, --downstream-dns or --downstream-file")
	}
	for _, l := range c.Listen {
		a, err := parseListen(l, false)
		if err != nil {
			return config{}, fmt.Errorf("-l %q: %w", l, err)
		}
		if a != nil {
			cfg.Listen = append(cfg.Listen, a)
		}
	}
	for _, w := range c.WS {
		a, err := parseListen(w, true)
		if err != nil {
			return config{}, fmt.Errorf("-w %q: %w", w, err)
		}
		if a != nil {
			cfg.Listen = append(cfg.Listen, a)
		}
	}
	if cfg.Front, err = c.frontFlags.config(&cfg.Listen, cfg.Preload.HTTPS || cfg.HTTP.HTTPS); err != nil {
		return config{}, err
	}
	if cfg.Front.Front.ProxyProtocol, err = c.proxyProtoFlags.config(cfg.Listen); err != nil {
		return config{}, err
	}
	if cfg.Preload.HTTPS {
		if cfg.Front.Front.TLS == nil {
			return config{}, fmt.Errorf("-p/--preload %q serves HTTPS: give --tls-cert and --tls-key", c.Preload)
		}
		cfg.Preload.TLS = cfg.Front.Front.TLS
	}
	if cfg.HTTP.HTTPS {
		if cfg.Front.Front.TLS == nil {
			return config{}, fmt.Errorf("--http %q serves HTTPS: give --tls-cert and --tls-key", c.HTTP)
		}
		cfg.HTTP.TLS = cfg.Front.Front.TLS
	}
	if cfg.Admin, err = c.adminFlags.config(); err != nil {
		return config{}, err
	}
	if cfg.GeoIP, err = c.geoipFlags.config(); err != nil {
		return config{}, err
	}
	if cfg.DHT, err = c.dhtFlags.config(cfg.Front); err != nil {
		return config{}, err
	}
	if cfg.Provide, err = c.provideFlags.config(cfg.Front, cfg.DHT != nil); err != nil {
		return config{}, err
	}
	if cfg.Drain, err = c.drainFlags.config(); err != nil {
		return config{}, err
	}
	if len(cfg.Listen) == 0 {
		return config{}, errors.New("no listen address: give -l or -w")
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"--max-wants-per-peer", c.MaxWantsPerPeer}, {"--max-inflight-per-node", c.MaxInflightPerNode}, {"--max-message-size", c.MaxMessageSize}, {"--reply-memory", c.ReplyMemory}} {
		if v.n <= 0 {
			return config{}, fmt.Errorf("%s must be positive, got %d", v.name, v.n)
		}
	}
	switch {
	case c.RecentBlockBytes < 0:
		return config{}, fmt.Errorf("--recent-block-bytes must not be negative, got %d", c.RecentBlockBytes)
	case c.RecentBlockBytes == 0:
		cfg.Relay.RecentBlockBytes = -1 // bitswap.Config: none
	}
	return cfg, nil
}

// parseListen reads one listen multiaddr. The original Kitsune took -w
// without the trailing /ws, so it is added when missing.
func parseListen(s string, ws bool) (ma.Multiaddr, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return nil, err
	}
	if ws {
		if _, err := a.ValueForProtocol(ma.P_WS); err != nil {
			if _, err := a.ValueForProtocol(ma.P_WSS); err != nil {
				a = a.Encapsulate(ma.StringCast("/ws"))
			}
		}
	}
	return a, nil
}

// kitsune is a running instance: what tests reach into.
type kitsune struct {
	front, back host.Host
	pool        *downstream.Pool
	relay       *bitswap.Relay
	stop        func()
	done        chan struct{}
	preload     *preload.Server
	http        *preload.Server // the HTTP front (/routing/v1); nil when off
	admin       *admin
	geo         *geo      // nil without --geoip-db
	provide     *provider // nil without --provide
	// reload re-reads the --downstream-file (on SIGHUP).
	reload func() error
}

// start builds and starts every part. The caller stops it with stop() and
// waits on done.
func start(ctx context.Context, cfg config, out io.Writer, log *zap.Logger) (*kitsune, error) {
	frontKey, created, err := proxy.LoadOrCreateKey(cfg.KeyFile)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("created key file", zap.String("path", cfg.KeyFile))
	}
	backKey, _, err := proxy.LoadOrCreateKey(cfg.BackKeyFile)
	if err != nil {
		return nil, err
	}
	geo := newGeo(cfg.GeoIP)
	fc := cfg.Front.frontConfig(frontKey, cfg.Listen)
	fc.Bandwidth = geo.reporter()
	front, err := proxy.NewFront(fc)
	if err != nil {
		return nil, err
	}
	back, err := proxy.NewBack(proxy.BackConfig{Key: backKey, PSK: cfg.Front.BackPSK})
	if err != nil {
		front.Close()
		return nil, err
	}
	adm := newAdmin(&cfg, log.Named("admin")) // before the pool: it observes it
	pool := downstream.New(back, log.Named("downstream"), cfg.Pool.Options)
	err = pool.SetMembers("flags", cfg.Downstream)
	if err == nil && cfg.Pool.File != "" {
		err = pool.SetMembers("file", cfg.Pool.FileAddrs)
	}
	if err != nil {
		front.Close()
		back.Close()
		return nil, err
	}
	relay := bitswap.New(cfg.Relay, bsnet.NewFromIpfsHost(bitswap.GuardStreams(front)), bsnet.NewFromIpfsHost(back), pool, log.Named("relay"))
	greeter, err := newGreeter(cfg.NoGreet, front, pool, log.Named("greet"))
	if err != nil {
		front.Close()
		back.Close()
		return nil, err
	}
	pool.SetListener(fleetListener{relay, greeter})
	roots := &preloadedRoots{next: cfg.Preload.Observer}
	if cfg.Provide != nil {
		cfg.Preload.Observer = roots
	}
	pre, err := startPreload(cfg.Preload, pool, reverseSessions{relay, cfg.Preload.Grace}, log.Named("preload"))
	if err != nil {
		front.Close()
		back.Close()
		return nil, err
	}

	var reg prometheus.Registerer
	if adm != nil {
		reg = adm.reg
	}
	if err := greetMetrics(reg, greeter); err != nil {
		_ = pre.Close(context.Background())
		front.Close()
		back.Close()
		return nil, err
	}
	web, err := startHTTP(cfg.HTTP, front, back.ID(), pool, relay, reg, log.Named("http"))
	if err != nil {
		_ = pre.Close(context.Background())
		front.Close()
		back.Close()
		return nil, err
	}

	var lan io.Closer = nopCloser{}
	if cfg.MDNS {
		if lan, err = proxy.StartMDNS(front, log.Named("mdns")); err != nil {
			_ = pre.Close(context.Background())
			_ = web.Close(context.Background())
			front.Close()
			back.Close()
			return nil, err
		}
	}

	var privDHT io.Closer = nopCloser{}
	if cfg.DHT != nil {
		if privDHT, err = proxy.StartPrivateDHT(front, *cfg.DHT); err != nil {
			_ = lan.Close()
			front.Close()
			back.Close()
			return nil, err
		}
	}

	var prov *provider
	if cfg.Provide != nil {
		if prov, err = startProvide(cfg.Provide, front, pool, reg, log.Named("provide")); err != nil {
			_ = privDHT.Close()
			_ = lan.Close()
			front.Close()
			back.Close()
			return nil, err
		}
		roots.to.Store(prov.announcer)
	}

	runCtx, cancel := context.WithCancel(ctx)
	relay.Start(runCtx)
	k := &kitsune{front: front, back: back, pool: pool, relay: relay, preload: pre, http: web, geo: geo, provide: prov, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pool.Run(runCtx)
	}()
	if geo != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			geo.run(runCtx, front, log.Named("geoip"))
		}()
	}
	if prov != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prov.run(runCtx)
		}()
	}
	if greeter != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			greeter.Run(runCtx)
		}()
	}
	if cfg.Pool.DNS != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg.Pool.DNS.Watch(runCtx, pool, log.Named("downstream"))
		}()
	}
	k.reload = func() error {
		if cfg.Pool.File == "" {
			return nil
		}
		addrs, err := downstream.ReadMembersFile(cfg.Pool.File)
		if err != nil {
			return err
		}
		return pool.SetMembers("file", addrs)
	}

	fmt.Fprintf(out, "Kitsune peer ID %s\n", front.ID())
	fmt.Fprintf(out, "Back host peer ID %s (add it to the Kubo nodes' Peering.Peers and Swarm.ResourceMgr.Allowlist)\n", back.ID())
	cfg.Front.printAddrs(out, front)
	if cfg.MDNS {
		fmt.Fprintln(out, "Announcing on the local network by mDNS")
	}
	if cfg.DHT != nil {
		what := "peer records only"
		if cfg.DHT.AllRecords {
			what = "peer, provider and value records"
		}
		fmt.Fprintf(out, "Private DHT server on the upstream side (%s)\n", what)
	}
	if prov != nil {
		fmt.Fprintf(out, "Providing the fleet's content on the DHT as %s (%d bootstrap peers)\n", front.ID(), len(cfg.Provide.DHT.Bootstrap))
	}
	if pre != nil {
		fmt.Fprintf(out, "Preload API (POST /api/v0/refs) on %s\n", pre.URL())
	}
	if web != nil {
		fmt.Fprintf(out, "Delegated routing (/routing/v1) on %s\n", web.URL())
	}

	var once sync.Once
	k.stop = func() {
		once.Do(func() {
			go func() {
				defer close(k.done)
				k.admin.closing() // /readyz fails from now on
				pctx, pcancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = pre.Close(pctx) // running refs calls end with an X-Stream-Error
				_ = web.Close(pctx)
				pcancel()
				// Cancel downstream wants while the connections are still up.
				cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Second)
				if err := relay.Close(cctx); err != nil {
					log.Debug("cancelling downstream wants", zap.Error(err))
				}
				ccancel()
				cancel()
				_ = lan.Close()
				_ = privDHT.Close()
				if prov != nil {
					_ = prov.Close()
				}
				front.Close()
				wg.Wait()
				back.Close()
				k.admin.close()
			}()
		})
	}
	k.admin = adm
	if err := adm.start(k, out); err != nil {
		k.stop()
		<-k.done
		return nil, err
	}
	return k, nil
}

// run starts Kitsune and blocks until ctx ends.
func run(ctx context.Context, cfg config, out io.Writer, log *zap.Logger) error {
	// The parts run until stop, not until ctx ends: they must keep
	// serving while draining after the signal that ended ctx.
	k, err := start(context.WithoutCancel(ctx), cfg, out, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-hup:
			if err := k.reload(); err != nil {
				// A bad file changes nothing: the fleet stays as it was.
				log.Error("reloading the downstream file", zap.Error(err))
			} else {
				log.Info("reloaded the downstream file")
			}
		}
	}
	// A second SIGINT or SIGTERM cuts the drain short.
	again := make(chan os.Signal, 1)
	signal.Notify(again, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(again)
	dctx, dcancel := context.WithCancel(context.Background())
	defer dcancel()
	go func() {
		select {
		case <-again:
			dcancel()
		case <-dctx.Done():
		}
	}()
	k.drain(dctx, cfg.Drain, log)
	dcancel()
	log.Info("shutting down")
	k.stop()
	select {
	case <-k.done:
	case <-time.After(5 * time.Second):
		return errors.New("shutdown took longer than 5s")
	}
	return nil
}

// drain fails /readyz, then serves the wants and replies in flight until p
// says stop.
func (k *kitsune) drain(ctx context.Context, p drainPolicy, log *zap.Logger) {
	k.admin.closing() // the balancer stops sending new connections
	inFlight := func() int { return k.relay.Stats().InFlight() }
	if p.Timeout <= 0 {
		return
	}
	log.Info("draining: /readyz reports not ready; serving the wants and replies in flight",
		zap.Int("in_flight", inFlight()), zap.Duration("drain_timeout", p.Timeout))
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	began := time.Now()
	o, n := drain(ctx, p, time.Now, tick.C, inFlight)
	log.Info("drained", zap.Stringer("outcome", o), zap.Int("in_flight", n), zap.Duration("took", time.Since(began)))
}

// frontInfo is the front host's address info, for tests.
func (k *kitsune) frontInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: k.front.ID(), Addrs: k.front.Addrs()}
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
