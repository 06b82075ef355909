package proxy

import (
	"fmt"
	"net"

	"github.com/libp2p/go-libp2p/core/network"
	libp2pyamux "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-yamux/v5"
)

// FrontFrameData is the most data one yamux frame carries on the front
// host. go-yamux's default frame (64 KiB, its 12-byte header included) is
// 17 bytes more than one Noise message holds, so Noise sent every full
// frame as two messages: two encryptions and two system calls, the second
// for 17 bytes. A frame of MaxPlaintextLength is one Noise message, and
// still four whole TLS records. Writers that align their writes to frames
// (bitswap's replies) use this size.
const FrontFrameData = noise.MaxPlaintextLength - yamuxHeader

// yamuxHeader is go-yamux's frame header.
const yamuxHeader = 12

// backStreamWindow is the receive window each stream from a node starts
// with (go-yamux's is 256 KiB). Kubo opens a stream for every message, of
// up to about 1 MiB of blocks: with the default, Kitsune sent the node a
// window update (a TLS record and a system call on both ends, and a
// resource-manager reservation here) every 128 KiB read while the window
// grew; with 1 MiB, a message needs at most two. Nodes are the operator's
// own: the memory this lets one stream hold is bounded by the resource
// manager as before.
const backStreamWindow = 1 << 20

// frontMuxer is go-libp2p's yamux with frames sized for Noise.
func frontMuxer() *yamuxMuxer {
	c := *libp2pyamux.DefaultTransport
	c.MaxMessageSize = FrontFrameData + yamuxHeader
	return (*yamuxMuxer)(&c)
}

// backMuxer is go-libp2p's yamux with a larger initial stream window.
func backMuxer() *yamuxMuxer {
	c := *libp2pyamux.DefaultTransport
	c.InitialStreamWindowSize = backStreamWindow
	return (*yamuxMuxer)(&c)
}

// yamuxMuxer is go-libp2p's yamux transport (p2p/muxer/yamux) with a
// cheaper memory span for each stream. go-libp2p's asks the connection's
// peer scope for a span (BeginSpan), and rcmgr names every span with
// fmt.Sprintf and registers it: for each stream, a stream per block
// relayed on both hosts. A lightSpan reserves in the same peer scope
// directly, so the limits checked are the same (a span's own limit is
// its owner's, and every byte it holds is also its owner's), and gives
// back what it holds when the stream ends, as a span's Done does.
type yamuxMuxer yamux.Config

var _ network.Multiplexer = (*yamuxMuxer)(nil)

func (t *yamuxMuxer) NewConn(nc net.Conn, isServer bool, scope network.PeerScope) (network.MuxedConn, error) {
	var newSpan func() (yamux.MemoryManager, error)
	if scope != nil {
		newSpan = func() (yamux.MemoryManager, error) { return &lightSpan{owner: scope}, nil }
	}
	cfg := (*yamux.Config)(t)
	var s *yamux.Session
	var err error
	if isServer {
		s, err = yamux.Server(nc, cfg, newSpan)
	} else {
		s, err = yamux.Client(nc, cfg, newSpan)
	}
	if err != nil {
		return nil, fmt.Errorf("yamux: %w", err)
	}
	return libp2pyamux.NewMuxedConn(s), nil
}
