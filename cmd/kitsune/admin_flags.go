package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/metrics"
)

// adminFlags configure what operators watch Kitsune through: the admin
// HTTP server (metrics, probes, profiler, dashboard) and the log format.
type adminFlags struct {
	Admin     string `name:"admin" env:"KITSUNE_ADMIN" default:"127.0.0.1:5080" placeholder:"[HOST:]PORT" help:"Admin HTTP address: /metrics, /healthz, /readyz, /api/status, /debug/pprof/ and the dashboard at /. host:port or a TCP multiaddr; a bare port listens on loopback only. Empty or \"off\" turns it off."`
	LogFormat string `name:"log-format" env:"KITSUNE_LOG_FORMAT" default:"console" enum:"console,json" help:"Log format: console (human-readable) or json (one object per line)."`
}

// adminConfig is the validated form; Addr is empty when the server is off.
type adminConfig struct {
	Addr string
}

func (f *adminFlags) config() (adminConfig, error) {
	s := strings.TrimSpace(f.Admin)
	if s == "" || s == "off" {
		return adminConfig{}, nil
	}
	if p, err := strconv.ParseUint(s, 10, 16); err == nil {
		return adminConfig{Addr: net.JoinHostPort("127.0.0.1", strconv.FormatUint(p, 10))}, nil
	}
	addr, err := preloadAddr(s) // host:port or a TCP multiaddr, as -p takes
	if err != nil {
		return adminConfig{}, fmt.Errorf("--admin %q: %w", f.Admin, err)
	}
	return adminConfig{Addr: addr}, nil
}

// admin is Kitsune's observability: built before the parts it watches so
// the pool and preload get it as their observer, attached and served once
// they run. A nil *admin (the server is off) does nothing.
type admin struct {
	cfg      adminConfig
	maxConns int // the front host's connection limit, for its gauge
	reg      *prometheus.Registry
	metrics  *metrics.Metrics
	log      *zap.Logger
	srv      *metrics.Server
}

// newAdmin makes the metrics and hooks them into cfg's pool and preload
// options; nil when the admin port is off.
func newAdmin(cfg *config, log *zap.Logger) *admin {
	if cfg.Admin.Addr == "" {
		return nil
	}
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg, metrics.Options{})
	if err != nil {
		panic(err) // a fresh registry refused a collector: a programming error
	}
	cfg.Pool.Options.Observer = m
	cfg.Preload.Observer = m
	return &admin{cfg: cfg.Admin, maxConns: cfg.Front.Front.Limits.Conns, reg: reg, metrics: m, log: log}
}

// start attaches the running parts and opens the admin port.
func (a *admin) start(k *kitsune, out io.Writer) error {
	if a == nil {
		return nil
	}
	a.metrics.Attach(metrics.Sources{Relay: k.relay, Pool: k.pool, Front: k.front, MaxConns: a.maxConns, Preload: k.preload != nil, Geo: k.geo.source()})
	srv, err := metrics.Listen(a.cfg.Addr, a.metrics, a.reg, a.log)
	if err != nil {
		return fmt.Errorf("admin port: %w", err)
	}
	a.srv = srv
	if ip := srv.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		a.log.Warn("the admin port is reachable from other machines: /debug/pprof and /api/status are open to whoever reaches it",
			zap.String("addr", srv.Addr().String()))
	}
	fmt.Fprintf(out, "Admin (dashboard, /metrics, /readyz) on %s\n", srv.URL())
	return nil
}

// closing makes /readyz fail at once, so load balancers stop sending
// clients while Kitsune shuts down.
func (a *admin) closing() {
	if a != nil {
		a.metrics.SetClosing()
	}
}

func (a *admin) close() {
	if a == nil || a.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = a.srv.Close(ctx)
}

// url is the admin server's base URL ("" when off), for tests.
func (a *admin) url() string {
	if a == nil {
		return ""
	}
	return a.srv.URL()
}
