package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// The floor is the cheapest thing that can stand where Kitsune stands: a
// libp2p host that terminates the client's connection (it must, to present
// one identity in front of several nodes) and splices each stream onto a
// stream of the same protocol to the node, bytes copied both ways, no
// parsing. Bitswap replies travel on streams the responder opens, so the
// forwarder keeps one back host per client: streams the node opens to that
// back host are spliced onto new streams to the client. Same transport
// (TCP), security (Noise) and muxer (yamux) on both legs as the direct
// path. What it costs over direct is the floor any terminating proxy pays
// on this machine; Kitsune's overhead is compared against it.

// forwarderEnv makes a benchmark binary (the command, or the test binary
// through TestMain) run as the forwarder process instead: its value is the
// JSON forwarderConfig. A process of its own, as Kitsune is, so both are
// measured the same way.
const forwarderEnv = "KITSUNE_BENCH_FORWARDER"

// bitswapProtocols are the protocols the forwarder splices: every Bitswap
// version boxo and Kubo speak.
var bitswapProtocols = []protocol.ID{"/ipfs/bitswap/1.2.0", "/ipfs/bitswap/1.1.0", "/ipfs/bitswap/1.0.0", "/ipfs/bitswap"}

type forwarderConfig struct {
	Listen string `json:"listen"`
	// Targets are the nodes' p2p multiaddrs; clients are assigned to them
	// round robin in the order they open their first stream.
	Targets []peer.AddrInfo `json:"targets"`
	// CPUProfile, when set, is where the forwarder writes a CPU profile of
	// its whole life (see Profile): the floor's side of a comparison.
	CPUProfile string `json:"cpu_profile,omitempty"`
}

// MaybeRunForwarder runs the floor forwarder and exits when the process
// was started as one; otherwise it returns at once. Call it first thing in
// main and in TestMain.
func MaybeRunForwarder() {
	raw, ok := os.LookupEnv(forwarderEnv)
	if !ok {
		return
	}
	if err := runForwarder(raw); err != nil {
		fmt.Fprintln(os.Stderr, "forwarder:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runForwarder(raw string) error {
	var cfg forwarderConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return fmt.Errorf("%s: %w", forwarderEnv, err)
	}
	if len(cfg.Targets) == 0 {
		return fmt.Errorf("%s: no targets", forwarderEnv)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cfg.CPUProfile != "" {
		out, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer out.Close()
		if err := pprof.StartCPUProfile(out); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	f, err := newForwarder(cfg)
	if err != nil {
		return err
	}
	defer f.close()
	for _, a := range f.front.Addrs() {
		fmt.Printf("forwarder %s/p2p/%s\n", a, f.front.ID())
	}
	fmt.Println("forwarder ready")
	<-ctx.Done()
	return nil
}

type forwarder struct {
	front   host.Host
	targets []peer.AddrInfo

	mu    sync.Mutex
	next  int
	links map[peer.ID]*backLink
}

// backLink is one client's connection to its node, under an identity of
// its own.
type backLink struct {
	f      *forwarder
	client peer.ID
	target peer.AddrInfo

	once sync.Once
	h    host.Host
	err  error
}

func newForwarder(cfg forwarderConfig) (*forwarder, error) {
	front, err := plainHost(cfg.Listen)
	if err != nil {
		return nil, err
	}
	f := &forwarder{front: front, targets: cfg.Targets, links: map[peer.ID]*backLink{}}
	for _, p := range bitswapProtocols {
		front.SetStreamHandler(p, f.fromClient)
	}
	front.Network().Notify(&network.NotifyBundle{DisconnectedF: func(n network.Network, c network.Conn) {
		p := c.RemotePeer()
		go func() {
			if n.Connectedness(p) == network.Connected {
				return
			}
			f.mu.Lock()
			l := f.links[p]
			delete(f.links, p)
			f.mu.Unlock()
			if l != nil {
				l.close()
			}
		}()
	}})
	return f, nil
}

func (f *forwarder) close() {
	f.mu.Lock()
	links := f.links
	f.links = map[peer.ID]*backLink{}
	f.mu.Unlock()
	for _, l := range links {
		l.close()
	}
	_ = f.front.Close()
}

func (f *forwarder) link(client peer.ID) *backLink {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.links[client]
	if l == nil {
		l = &backLink{f: f, client: client, target: f.targets[f.next%len(f.targets)]}
		f.next++
		f.links[client] = l
	}
	return l
}

// backHost dials the client's node on first use; its stream handlers are
// set before the dial, so identify tells the node it speaks Bitswap.
func (l *backLink) backHost(ctx context.Context) (host.Host, error) {
	l.once.Do(func() {
		h, err := plainHost()
		if err != nil {
			l.err = err
			return
		}
		for _, p := range bitswapProtocols {
			h.SetStreamHandler(p, l.fromTarget)
		}
		if err := h.Connect(ctx, l.target); err != nil {
			_ = h.Close()
			l.err = err
			return
		}
		l.h = h
	})
	return l.h, l.err
}

func (l *backLink) close() {
	l.once.Do(func() { l.err = fmt.Errorf("closed") })
	if l.h != nil {
		_ = l.h.Close()
	}
}

func (f *forwarder) fromClient(s network.Stream) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l := f.link(s.Conn().RemotePeer())
	h, err := l.backHost(ctx)
	if err != nil {
		_ = s.Reset()
		return
	}
	out, err := h.NewStream(ctx, l.target.ID, s.Protocol())
	if err != nil {
		_ = s.Reset()
		return
	}
	splice(s, out)
}

func (l *backLink) fromTarget(s network.Stream) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The client listens nowhere: reply over its connection or not at all.
	out, err := l.f.front.NewStream(network.WithNoDial(ctx, "reply on the client's connection"), l.client, s.Protocol())
	if err != nil {
		_ = s.Reset()
		return
	}
	splice(s, out)
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// splice copies both ways until both sides have finished writing; an error
// on either side resets both.
func splice(a, b network.Stream) {
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src network.Stream) {
		defer wg.Done()
		buf := copyBufs.Get().(*[]byte)
		defer copyBufs.Put(buf)
		if _, err := io.CopyBuffer(dst, src, *buf); err != nil {
			_ = dst.Reset()
			_ = src.Reset()
			return
		}
		_ = dst.CloseWrite()
	}
	go half(a, b)
	go half(b, a)
	wg.Wait()
	_ = a.Close()
	_ = b.Close()
}
