// Command kitsune is a Bitswap-aware reverse proxy and load balancer for a
// fleet of Kubo nodes: clients dial one stable libp2p identity, and their
// wants are relayed to the nodes behind it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kong"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// cli is the whole command line. Flags keep the original Kitsune's short
// names (-d, -l, -w, -k) so existing deployments start unchanged; every
// flag can also come from a KITSUNE_* environment variable.
type cli struct {
	Downstream []string `short:"d" env:"KITSUNE_DOWNSTREAM" sep:"," required:"" placeholder:"ADDR" help:"Comma-separated RPC API addresses of the downstream Kubo nodes, as multiaddrs (/ip4/10.0.1.42/tcp/5001) or URLs (http://10.0.1.42:5001)."`
	Listen     []string `short:"l" env:"KITSUNE_LISTEN" sep:"," default:"/ip4/0.0.0.0/tcp/0,/ip4/0.0.0.0/udp/0/quic-v1" placeholder:"MULTIADDR" help:"Comma-separated TCP and QUIC-v1 listen multiaddrs for upstream peers (default: all interfaces, random ports)."`
	WS         []string `short:"w" env:"KITSUNE_WS" sep:"," default:"/ip4/0.0.0.0/tcp/0/ws" placeholder:"MULTIADDR" help:"Comma-separated WebSocket listen multiaddrs, with or without the trailing /ws (default: all interfaces, random port)."`
	Key        string   `short:"k" env:"KITSUNE_KEY" default:"kitsune.key" type:"path" help:"Key file holding the front host's identity; created (Ed25519, mode 0600) if missing, never overwritten. The back host's key is kept beside it as <file>.back."`

	MaxWantsPerPeer    int `env:"KITSUNE_MAX_WANTS_PER_PEER" default:"1024" help:"Wantlist entries kept per upstream peer; more are ignored."`
	MaxInflightPerNode int `env:"KITSUNE_MAX_INFLIGHT_PER_NODE" default:"960" help:"Wants outstanding on one downstream node (Kubo queues at most 1024 per peer); more wait in Kitsune."`
	MaxMessageSize     int `env:"KITSUNE_MAX_MESSAGE_SIZE" default:"4194304" help:"Largest Bitswap message accepted from an upstream peer, in bytes."`

	LogLevel string `env:"KITSUNE_LOG_LEVEL" default:"info" enum:"debug,info,warn,error" help:"Log level (debug, info, warn, error)."`
}

func main() {
	var c cli
	kong.Parse(&c,
		kong.Name("kitsune"),
		kong.Description("A Bitswap reverse proxy and load balancer: one libp2p identity in front of a fleet of Kubo nodes."),
		kong.UsageOnError(),
	)
	log, err := newLogger(c.LogLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kitsune:", err)
		os.Exit(2)
	}
	defer func() { _ = log.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := c.config()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kitsune:", err)
		os.Exit(2)
	}
	if err := run(ctx, cfg, os.Stdout, log); err != nil {
		fmt.Fprintln(os.Stderr, "kitsune:", err)
		os.Exit(1)
	}
}

func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	zc.Encoding = "console"
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.DisableStacktrace = true
	return zc.Build()
}
