// Command kitsune is a Bitswap-aware reverse proxy and load balancer for a
// fleet of Kubo nodes: clients dial one stable libp2p identity, and their
// wants are relayed to the nodes behind it.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kong"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// cli is the whole command line: running the proxy is the default
// command, so the original Kitsune's invocation (kitsune -d ... -k ...)
// works unchanged.
type cli struct {
	Run     runCmd     `cmd:"" help:"Run Kitsune (the default command)."`
	Key     keyCmd     `cmd:"" help:"Import an existing node's identity into a key file, or show a key file's peer ID."`
	Peering peeringCmd `cmd:"" help:"Print Kitsune as a Kubo Peering.Peers entry (JSON for 'ipfs config --json Peering.Peers')."`
	Doctor  doctorCmd  `cmd:"" help:"Check that the fleet's Kubo nodes are set up as Kitsune needs (one row per check per node, with the ipfs config command that fixes it). Reads only; exits 1 when a check fails."`

	Docs docsCmd `cmd:"" hidden:"" help:"Generate reference documents from the flags (make docs)."`
}

// runCmd holds the flags of the proxy itself, one embedded group per part
// so each part's flags live beside the code that reads them. Flags keep the
// original Kitsune's short names (-d, -l, -w, -k); every flag can also come
// from a KITSUNE_* environment variable.
type runCmd struct {
	Downstream []string `short:"d" group:"fleet" env:"KITSUNE_DOWNSTREAM" sep:"," placeholder:"ADDR" help:"Comma-separated RPC API addresses of the downstream Kubo nodes, as multiaddrs (/ip4/10.0.1.42/tcp/5001) or URLs (http://10.0.1.42:5001). Required unless --downstream-dns or --downstream-file gives the fleet."`
	Listen     []string `short:"l" group:"front" env:"KITSUNE_LISTEN" sep:"," default:"/ip4/0.0.0.0/tcp/0,/ip4/0.0.0.0/udp/0/quic-v1" placeholder:"MULTIADDR" help:"Comma-separated TCP and QUIC-v1 listen multiaddrs for upstream peers (default: all interfaces, random ports)."`
	WS         []string `short:"w" group:"front" env:"KITSUNE_WS" sep:"," default:"/ip4/0.0.0.0/tcp/0/ws" placeholder:"MULTIADDR" help:"Comma-separated WebSocket listen multiaddrs, with or without the trailing /ws (default: all interfaces, random port)."`
	Key        string   `short:"k" group:"front" env:"KITSUNE_KEY" default:"kitsune.key" type:"path" help:"Key file holding the front host's identity; created (Ed25519, mode 0600) if missing, never overwritten. The back host's key is kept beside it as <file>.back."`

	relayFlags `embed:"" group:"relay"`
	frontFlags `embed:"" group:"front"`
	poolFlags  `embed:"" group:"fleet"`

	preloadFlags `embed:"" group:"preload"`
	httpFlags    `embed:"" group:"http"`
	adminFlags   `embed:"" group:"admin"`
	mdnsFlags    `embed:"" group:"front"`
	geoipFlags   `embed:"" group:"admin"`
	dhtFlags     `embed:"" group:"front"`
	provideFlags `embed:"" group:"front"`
	greetFlags   `embed:"" group:"front"`
	drainFlags   `embed:"" group:"admin"`

	proxyProtoFlags `embed:"" group:"front"`
	backKeyFlags    `embed:"" group:"front"`

	LogLevel string `group:"admin" env:"KITSUNE_LOG_LEVEL" default:"info" enum:"debug,info,warn,error" help:"Log level (debug, info, warn, error)."`
}

// relayFlags are the Bitswap relay's limits.
type relayFlags struct {
	MaxWantsPerPeer    int `env:"KITSUNE_MAX_WANTS_PER_PEER" default:"1024" help:"Wantlist entries kept per upstream peer; more are ignored."`
	MaxInflightPerNode int `env:"KITSUNE_MAX_INFLIGHT_PER_NODE" default:"960" help:"Wants outstanding on one downstream node (Kubo queues at most 1024 per peer); more wait in Kitsune."`
	MaxMessageSize     int `env:"KITSUNE_MAX_MESSAGE_SIZE" default:"4194304" help:"Largest Bitswap message accepted from an upstream peer, in bytes."`
	RecentBlockBytes   int `env:"KITSUNE_RECENT_BLOCK_BYTES" default:"33554432" help:"Memory for blocks kept after they were relayed (the buffers they keep alive), so the same wants from other peers moments later (a flash crowd on the same content) are answered without asking the fleet again; each goes 10s after its last use. 0 keeps none."`
	ReplyMemory        int `env:"KITSUNE_REPLY_MEMORY" default:"1073741824" help:"Memory the blocks waiting to be sent to upstream peers may keep alive together, each block counted once however many peers it goes to. Each peer may hold 16 MiB; past this cap each gets an equal share of it, so peers that read nothing cannot exhaust the machine's memory (watch kitsune_relay_reply_memory_bytes)."`
}

func main() {
	var c cli
	parser, err := newParser(&c,
		// Kong exits 80 on a usage error; keep the Unix convention of 2.
		kong.Exit(func(code int) {
			if code == 80 {
				code = 2
			}
			os.Exit(code)
		}),
	)
	if err != nil {
		panic(err) // the cli struct itself is malformed: a programming error
	}
	kctx, err := parser.Parse(withDefaultCommand(os.Args[1:], parser.Model.Children))
	parser.FatalIfErrorf(err)
	if err := kctx.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "kitsune:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// newParser builds the command line model; the docs command and its
// staleness test read the same model the binary parses with.
func newParser(c *cli, opts ...kong.Option) (*kong.Kong, error) {
	return kong.New(c, append([]kong.Option{
		kong.Name("kitsune"),
		kong.Description("A Bitswap reverse proxy and load balancer: one libp2p identity in front of a fleet of Kubo nodes. Without a command, runs the proxy: kitsune -d ADDR[,ADDR...] [flags]."),
		kong.UsageOnError(),
		kong.ExplicitGroups(flagGroups()),
	}, opts...)...)
}

// withDefaultCommand puts "run" in front of arguments that name no command,
// so `kitsune -d ...` and `kitsune --help` behave as `kitsune run ...` and
// show the proxy's flags, as the original single-command Kitsune did.
func withDefaultCommand(args []string, cmds []*kong.Node) []string {
	if len(args) > 0 {
		for _, c := range cmds {
			if args[0] == c.Name {
				return args
			}
		}
	}
	return append([]string{"run"}, args...)
}

// usageError marks bad input on the command line (exit status 2) as
// opposed to a failure while running (exit status 1).
type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// Run is the default command.
func (r *runCmd) Run() error {
	log, err := newLogger(r.LogLevel, r.LogFormat)
	if err != nil {
		return usageError{err}
	}
	defer func() { _ = log.Sync() }()
	cfg, err := r.config()
	if err != nil {
		return usageError{err}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return run(ctx, cfg, os.Stdout, log)
}

func newLogger(level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(lvl)
	if format == "" {
		format = "console"
	}
	zc.Encoding = format // console or json; kong checked the value
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.DisableStacktrace = true
	return zc.Build()
}
