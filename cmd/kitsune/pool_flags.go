package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/kitsune-lb/kitsune/bitswap"
	"github.com/kitsune-lb/kitsune/downstream"
)

// poolFlags choose how the fleet is found, checked and balanced.
type poolFlags struct {
	DownstreamDNS  string        `name:"downstream-dns" env:"KITSUNE_DOWNSTREAM_DNS" placeholder:"HOST:PORT" help:"DNS name and RPC port whose A/AAAA records are all downstream nodes (a Kubernetes headless Service), re-resolved every --dns-interval."`
	DNSInterval    time.Duration `name:"dns-interval" env:"KITSUNE_DNS_INTERVAL" default:"30s" help:"How often --downstream-dns is re-resolved."`
	DNSServer      string        `name:"dns-server" env:"KITSUNE_DNS_SERVER" placeholder:"HOST:PORT" help:"DNS server for --downstream-dns instead of the system resolver."`
	DownstreamFile string        `name:"downstream-file" env:"KITSUNE_DOWNSTREAM_FILE" type:"path" placeholder:"PATH" help:"File listing downstream RPC addresses, one per line (# comments); re-read on SIGHUP."`

	Policy          string        `env:"KITSUNE_POLICY" default:"affinity" enum:"affinity,least-loaded,round-robin" help:"How a node is chosen per block: affinity (same block, same node, with bounded load), least-loaded (power of two choices) or round-robin."`
	AffinityEpsilon float64       `name:"affinity-epsilon" env:"KITSUNE_AFFINITY_EPSILON" default:"0.25" help:"Affinity's load bound: no node takes more than (1+epsilon) times the average wants in flight."`
	HealthInterval  time.Duration `name:"health-interval" env:"KITSUNE_HEALTH_INTERVAL" default:"5s" help:"Interval of the active health checks (RPC API, connection, libp2p ping)."`
	HealthTimeout   time.Duration `name:"health-timeout" env:"KITSUNE_HEALTH_TIMEOUT" default:"2s" help:"Timeout of one health check."`
	EjectAfter      int           `name:"eject-after" env:"KITSUNE_EJECT_AFTER" default:"3" help:"Consecutive failures (checks or timed-out wants) that eject a node."`
	EjectBase       time.Duration `name:"eject-base" env:"KITSUNE_EJECT_BASE" default:"10s" help:"Length of a first ejection; each ejection in a row doubles it."`
	EjectMax        time.Duration `name:"eject-max" env:"KITSUNE_EJECT_MAX" default:"5m" help:"Longest ejection."`
	WantTimeoutMin  time.Duration `name:"want-timeout-min" env:"KITSUNE_WANT_TIMEOUT_MIN" default:"2s" help:"Shortest time a silent node may keep a want before it moves elsewhere (the timeout follows the node's latency)."`
	WantTimeoutMax  time.Duration `name:"want-timeout-max" env:"KITSUNE_WANT_TIMEOUT_MAX" default:"10s" help:"Longest such time."`

	FetchMisses        bool          `name:"fetch-misses" env:"KITSUNE_FETCH_MISSES" default:"true" negatable:"" help:"When every node says DONT_HAVE, ask one to fetch the block from its own peers before telling the client (--no-fetch-misses to turn off)."`
	MissFetchTimeout   time.Duration `name:"miss-fetch-timeout" env:"KITSUNE_MISS_FETCH_TIMEOUT" default:"30s" help:"How long a node may take to fetch a missing block."`
	MissFetchesPerNode int           `name:"miss-fetches-per-node" env:"KITSUNE_MISS_FETCHES_PER_NODE" default:"16" help:"Missing blocks one node may be fetching at once."`
}

// poolConfig is the validated form.
type poolConfig struct {
	Options   downstream.Options
	DNS       *downstream.DNSSource
	File      string
	FileAddrs []string
}

func (f *poolFlags) config(relay *bitswap.Config) (poolConfig, error) {
	policy, ok := downstream.NewPolicy(f.Policy, f.AffinityEpsilon)
	if !ok {
		return poolConfig{}, fmt.Errorf("--policy %q: want one of %s", f.Policy, strings.Join(downstream.PolicyNames(), ", "))
	}
	if f.AffinityEpsilon < 0 {
		return poolConfig{}, fmt.Errorf("--affinity-epsilon must not be negative, got %v", f.AffinityEpsilon)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"--health-interval", f.HealthInterval}, {"--health-timeout", f.HealthTimeout},
		{"--eject-base", f.EjectBase}, {"--eject-max", f.EjectMax},
		{"--want-timeout-min", f.WantTimeoutMin}, {"--want-timeout-max", f.WantTimeoutMax},
		{"--miss-fetch-timeout", f.MissFetchTimeout}, {"--dns-interval", f.DNSInterval},
	} {
		if d.v <= 0 {
			return poolConfig{}, fmt.Errorf("%s must be positive, got %v", d.name, d.v)
		}
	}
	if f.EjectAfter <= 0 || f.MissFetchesPerNode <= 0 {
		return poolConfig{}, fmt.Errorf("--eject-after and --miss-fetches-per-node must be positive")
	}
	if f.EjectMax < f.EjectBase || f.WantTimeoutMax < f.WantTimeoutMin {
		return poolConfig{}, fmt.Errorf("a maximum is below its minimum (--eject-max/--eject-base or --want-timeout-max/--want-timeout-min)")
	}
	pc := poolConfig{Options: downstream.Options{
		Policy:         policy,
		HealthInterval: f.HealthInterval,
		HealthTimeout:  f.HealthTimeout,
		EjectAfter:     f.EjectAfter,
		EjectBase:      f.EjectBase,
		EjectMax:       f.EjectMax,
		MinTimeout:     f.WantTimeoutMin,
		MaxTimeout:     f.WantTimeoutMax,
	}}
	relay.FetchMisses = f.FetchMisses
	relay.MissFetchTimeout = f.MissFetchTimeout
	relay.MissFetchesPerNode = f.MissFetchesPerNode

	if f.DownstreamDNS != "" {
		if _, _, err := downstream.ParseDNSName(f.DownstreamDNS); err != nil {
			return poolConfig{}, fmt.Errorf("--downstream-dns: %w", err)
		}
		src, err := dnsSource(f.DownstreamDNS, f.DNSServer, f.DNSInterval)
		if err != nil {
			return poolConfig{}, err
		}
		pc.DNS = src
	}
	if f.DownstreamFile != "" {
		addrs, err := downstream.ReadMembersFile(f.DownstreamFile)
		if err != nil {
			return poolConfig{}, err
		}
		pc.File, pc.FileAddrs = f.DownstreamFile, addrs
	}
	return pc, nil
}

// dnsSource is --downstream-dns with its --dns-server; run and doctor
// share it.
func dnsSource(name, server string, interval time.Duration) (*downstream.DNSSource, error) {
	src := &downstream.DNSSource{Name: name, Interval: interval}
	if server != "" {
		if _, _, err := net.SplitHostPort(server); err != nil {
			return nil, fmt.Errorf("--dns-server %q: want host:port", server)
		}
		src.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		}}
	}
	return src, nil
}
