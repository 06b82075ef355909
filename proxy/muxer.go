package proxy

import (
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
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
func frontMuxer() *yamux.Transport {
	c := *yamux.DefaultTransport
	c.MaxMessageSize = FrontFrameData + yamuxHeader
	return &c
}

// backMuxer is go-libp2p's yamux with a larger initial stream window.
func backMuxer() *yamux.Transport {
	c := *yamux.DefaultTransport
	c.InitialStreamWindowSize = backStreamWindow
	return &c
}
