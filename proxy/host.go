// Package proxy builds Kitsune's libp2p hosts: the front host that upstream
// peers dial under the operator's stable identity, and the back host that
// connects to the downstream Kubo fleet under an identity of its own.
package proxy

import (
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-libp2p/p2p/transport/websocket"
	ma "github.com/multiformats/go-multiaddr"
)

// UserAgent is what identify reports, so operators can tell Kitsune apart
// from the Kubo nodes behind it in their peers' logs.
const UserAgent = "kitsune/0.1.0"

// FrontConfig describes the upstream-facing host.
type FrontConfig struct {
	Key         crypto.PrivKey
	ListenAddrs []ma.Multiaddr
	// ConnsLow and ConnsHigh are the connection manager's watermarks. A
	// proxy holds many idle browser connections, so they sit well above a
	// Kubo node's defaults.
	ConnsLow, ConnsHigh int
}

// NewFront builds the upstream-facing host: TCP, QUIC-v1 and WebSocket,
// Noise and TLS, yamux. No relay, no NAT traversal, no DHT: Kitsune is a
// server with a known address, and a DHT would leak one swarm into the other.
func NewFront(cfg FrontConfig) (host.Host, error) {
	low, high := cfg.ConnsLow, cfg.ConnsHigh
	if low <= 0 {
		low = 1024
	}
	if high <= low {
		high = low * 2
	}
	cm, err := connmgr.NewConnManager(low, high, connmgr.WithGracePeriod(time.Minute))
	if err != nil {
		return nil, fmt.Errorf("front connection manager: %w", err)
	}
	h, err := libp2p.New(
		libp2p.Identity(cfg.Key),
		libp2p.ListenAddrs(cfg.ListenAddrs...),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Transport(websocket.New),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ConnectionManager(cm),
		libp2p.UserAgent(UserAgent),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		return nil, fmt.Errorf("front host: %w", err)
	}
	return h, nil
}

// NewBack builds the downstream-facing host. It listens nowhere: it dials
// every Kubo node itself, and Kubo opens its reply streams over those
// connections.
func NewBack(key crypto.PrivKey) (host.Host, error) {
	h, err := libp2p.New(
		libp2p.Identity(key),
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Transport(quic.NewTransport),
		libp2p.Transport(websocket.New),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Security(libp2ptls.ID, libp2ptls.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.UserAgent(UserAgent),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		return nil, fmt.Errorf("back host: %w", err)
	}
	return h, nil
}

// DialableAddrs returns the host's addresses with /p2p/<id> appended, as a
// client would paste them.
func DialableAddrs(h host.Host) []ma.Multiaddr {
	p2p, err := ma.NewComponent("p2p", h.ID().String())
	if err != nil {
		return nil
	}
	addrs := h.Addrs()
	out := make([]ma.Multiaddr, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.AppendComponent(p2p))
	}
	return out
}
