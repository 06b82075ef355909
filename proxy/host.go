// Package proxy builds Kitsune's libp2p hosts: the front host that upstream
// peers dial under the operator's stable identity, and the back host that
// connects to the downstream Kubo fleet under an identity of its own.
package proxy

import (
	"crypto/tls"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	relayv2 "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	libp2pwebrtc "github.com/libp2p/go-libp2p/p2p/transport/webrtc"
	"github.com/libp2p/go-libp2p/p2p/transport/websocket"
	webtransport "github.com/libp2p/go-libp2p/p2p/transport/webtransport"
	ma "github.com/multiformats/go-multiaddr"
)

// UserAgent is what identify reports, so operators can tell Kitsune apart
// from the Kubo nodes behind it in their peers' logs.
const UserAgent = "kitsune/0.1.0"

// FrontConfig describes the upstream-facing host.
type FrontConfig struct {
	Key         crypto.PrivKey
	ListenAddrs []ma.Multiaddr
	// Announce, when set, replaces the listen addresses in identify and
	// in Addrs: a public DNS name, or a TLS terminator in front
	// (/dns4/preload.example.org/tcp/443/wss). AppendAnnounce is added to
	// whichever of the two is used. A /webtransport or /webrtc-direct
	// address without /certhash gets Kitsune's certificate hashes.
	Announce, AppendAnnounce []ma.Multiaddr
	// TLS serves the /tls/ws (/wss) listeners; see LoadTLS.
	TLS *tls.Config
	// PSK puts the front host on a private network: only peers holding
	// the same key complete a connection. Only TCP and WebSocket carry it.
	PSK pnet.PSK
	// Limits are the resource manager's; zero fields take DefaultLimits'
	// values. The connection manager trims idle connections a
	// little below Limits.Conns.
	Limits Limits
	// Relay, when not nil, runs a circuit relay v2 service for upstream
	// peers that cannot be dialled directly.
	Relay *RelayConfig
	// NoMplex leaves mplex out of the muxers. By default the front host
	// offers it after yamux: deployed js-ipfs speaks nothing else, and
	// peers that know yamux keep choosing it.
	NoMplex bool
	// Bandwidth, when not nil, is told every stream's bytes (libp2p's
	// per-peer and per-protocol counters), e.g. for bytes per country.
	Bandwidth metrics.Reporter
	// ProxyProtocol, when not nil, reads PROXY protocol headers from the
	// listed balancers on the TCP and WebSocket listeners.
	ProxyProtocol *ProxyProtocol
}

// RelayConfig bounds the circuit relay v2 service. Zero fields take
// go-libp2p's defaults.
type RelayConfig struct {
	// MaxReservations is how many peers may hold a relay slot at once.
	MaxReservations int
	// MaxCircuits is how many relayed connections one peer may have open.
	MaxCircuits int
	// MaxReservationsPerIP is how many slots one IP address may hold.
	MaxReservationsPerIP int
	// Duration and Data end a relayed connection after that long or that
	// many bytes in either direction: the relay is for getting a direct
	// connection going, not for carrying content.
	Duration time.Duration
	Data     int64
}

func (r RelayConfig) resources() relayv2.Resources {
	res := relayv2.DefaultResources()
	if r.MaxReservations > 0 {
		res.MaxReservations = r.MaxReservations
	}
	if r.MaxCircuits > 0 {
		res.MaxCircuits = r.MaxCircuits
	}
	if r.MaxReservationsPerIP > 0 {
		res.MaxReservationsPerIP = r.MaxReservationsPerIP
	}
	if r.Duration > 0 {
		res.Limit.Duration = r.Duration
	}
	if r.Data > 0 {
		res.Limit.Data = r.Data
	}
	return res
}

// NewFront builds the upstream-facing host: TCP, QUIC-v1, WebSocket (plain
// and TLS), WebTransport and WebRTC-direct, Noise and TLS, yamux and (for
// deployed js-ipfs, unless NoMplex) mplex. On a
// private network only TCP and WebSocket remain, and a listen address for
// any other transport is an error rather than silently dropped. No NAT
// traversal, no DHT: Kitsune is a server with a known address, and a DHT
// would leak one swarm into the other (StartPrivateDHT adds one to a
// private front host only).
func NewFront(cfg FrontConfig) (host.Host, error) {
	if err := CheckListenAddrs(cfg.ListenAddrs, len(cfg.PSK) > 0, cfg.TLS != nil); err != nil {
		return nil, fmt.Errorf("front host: %w", err)
	}
	for _, a := range slices.Concat(cfg.Announce, cfg.AppendAnnounce) {
		if _, err := a.ValueForProtocol(ma.P_P2P); err == nil {
			return nil, fmt.Errorf("front host: announce address %s: leave out /p2p/; Kitsune adds its own", a)
		}
	}
	limits := cfg.Limits.withDefaults()
	rm, err := limits.resourceManager()
	if err != nil {
		return nil, fmt.Errorf("front host: %w", err)
	}
	low, high := limits.connManagerWatermarks()
	cm, err := connmgr.NewConnManager(low, high, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("front connection manager: %w", err)
	}

	var wsOpts []any
	if cfg.TLS != nil {
		wsOpts = append(wsOpts, websocket.WithTLSConfig(cfg.TLS))
	}
	if err := cfg.ProxyProtocol.Validate(); err != nil {
		return nil, fmt.Errorf("front host: %w", err)
	}
	var tcpT, wsT any = tcp.NewTCPTransport, websocket.New
	if cfg.ProxyProtocol.enabled() {
		tcpT, wsT = proxyTCP(cfg.ProxyProtocol), proxyWS(cfg.ProxyProtocol)
	}
	opts := []libp2p.Option{
		libp2p.Identity(cfg.Key),
		libp2p.ListenAddrs(cfg.ListenAddrs...),
		libp2p.Transport(tcpT),
		libp2p.Transport(wsT, wsOpts...),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Muxer(yamux.ID, frontMuxer()),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.UserAgent(UserAgent),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}
	if !cfg.NoMplex {
		// After yamux: a listener offers its muxers in this order.
		opts = append(opts, libp2p.Muxer(MplexID, mplexTransport{}))
	}
	if len(cfg.PSK) > 0 {
		opts = append(opts, libp2p.PrivateNetwork(cfg.PSK))
	} else {
		opts = append(opts,
			libp2p.Transport(quic.NewTransport),
			libp2p.Transport(webtransport.New),
			libp2p.Transport(libp2pwebrtc.New),
		)
	}
	if len(cfg.Announce) > 0 || len(cfg.AppendAnnounce) > 0 {
		announce, extra := slices.Clone(cfg.Announce), slices.Clone(cfg.AppendAnnounce)
		opts = append(opts, libp2p.AddrsFactory(func(addrs []ma.Multiaddr) []ma.Multiaddr {
			if len(announce) > 0 {
				addrs = slices.Clone(announce)
			}
			return append(addrs, extra...)
		}))
	}
	if cfg.Bandwidth != nil {
		opts = append(opts, libp2p.BandwidthReporter(cfg.Bandwidth))
	}
	if cfg.Relay != nil {
		// go-libp2p starts the relay service only once AutoNAT finds the
		// host publicly reachable. Kitsune runs no AutoNAT: it is a server
		// whose operator says where it is reachable.
		opts = append(opts,
			libp2p.EnableRelayService(relayv2.WithResources(cfg.Relay.resources())),
			libp2p.ForceReachabilityPublic(),
		)
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("front host: %w", err)
	}
	closeWithHost(h, rm)
	return h, nil
}

// closeWithHost closes the resource manager when the host closes: go-libp2p
// closes one it made itself, not one it was given, and its background
// goroutine would outlive the host.
func closeWithHost(h host.Host, rm network.ResourceManager) {
	type doner interface{ Done() <-chan struct{} }
	if d, ok := h.Network().(doner); ok {
		go func() {
			<-d.Done()
			rm.Close()
		}()
	}
}

// BackConfig describes the downstream-facing host.
type BackConfig struct {
	Key crypto.PrivKey
	// PSK puts the back host on the fleet's private network; it then
	// dials the nodes over TCP and WebSocket only.
	PSK pnet.PSK
}

// NewBack builds the downstream-facing host. It listens nowhere: it dials
// every Kubo node itself, and Kubo opens its reply streams over those
// connections.
func NewBack(cfg BackConfig) (host.Host, error) {
	// Not go-libp2p's resource manager: its accounting of every stream
	// was paid once per block relayed, and the back host's peers are the
	// operator's own nodes (fleetrm.go).
	h, err := newBackHost(cfg, newFleetResources(defaultFleetLimits))
	if err != nil {
		return nil, err
	}
	negotiateWithoutDeadline(h)
	return h, nil
}

// newBackHost is the back host as go-libp2p makes it, with rm.
func newBackHost(cfg BackConfig, rm network.ResourceManager) (host.Host, error) {
	opts := []libp2p.Option{
		libp2p.Identity(cfg.Key),
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(websocket.New),
		// TLS 1.3 first: the dialer's order decides, and Kitsune dials
		// every node. Its AES-GCM runs on the CPU's AES instructions,
		// where Noise's ChaCha20-Poly1305 was the largest single cost of
		// relaying a block (decrypting everything the fleet sends; see
		// docs/performance.md). Both ends gain: Kubo encrypts with it
		// too. Noise stays for a node that offers nothing else.
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, backMuxer()),
		libp2p.ResourceManager(rm),
		libp2p.UserAgent(UserAgent),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}
	if len(cfg.PSK) > 0 {
		opts = append(opts, libp2p.PrivateNetwork(cfg.PSK))
	} else {
		opts = append(opts, libp2p.Transport(quic.NewTransport))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("back host: %w", err)
	}
	return h, nil
}

// negotiateWithoutDeadline takes over how the back host starts a stream a
// node opened. go-libp2p's host arms a deadline (10 s) on the stream
// while its protocol is negotiated and disarms it afterwards: two timers
// set and stopped for every stream, so for every block a node sends. The
// deadline guards against a peer that opens streams and never names a
// protocol; the back host's peers are the fleet, their streams capped per
// node (fleetrm.go), and the message that follows the protocol's name
// (Kubo sends both in one write) is read without a deadline anyway
// (bitswap's handleNodeStream), as go-libp2p's host would too. The rest is
// what go-libp2p's host does: negotiate, account the protocol, hand over.
func negotiateWithoutDeadline(h host.Host) {
	mux := h.Mux()
	h.Network().SetStreamHandler(func(s network.Stream) {
		proto, handle, err := mux.Negotiate(s)
		if err != nil {
			_ = s.ResetWithError(network.StreamProtocolNegotiationFailed)
			return
		}
		if err := s.SetProtocol(proto); err != nil {
			_ = s.ResetWithError(network.StreamResourceLimitExceeded)
			return
		}
		handle(proto, s)
	})
}

// DialableAddrs returns the host's addresses with /p2p/<id> appended, as a
// client would paste them. With announce addresses these are the announced
// ones.
func DialableAddrs(h host.Host) []ma.Multiaddr {
	return withP2P(h, h.Addrs())
}

// ListenAddrs returns the addresses the host actually listens on (wildcards
// resolved to interface addresses, certificate hashes included) with
// /p2p/<id>, whatever it announces.
func ListenAddrs(h host.Host) []ma.Multiaddr {
	if a, ok := h.(interface{ AllAddrs() []ma.Multiaddr }); ok {
		return withP2P(h, a.AllAddrs())
	}
	return withP2P(h, h.Network().ListenAddresses())
}

func withP2P(h host.Host, addrs []ma.Multiaddr) []ma.Multiaddr {
	p2p, err := ma.NewComponent("p2p", h.ID().String())
	if err != nil {
		return nil
	}
	out := make([]ma.Multiaddr, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.AppendComponent(p2p))
	}
	return out
}
