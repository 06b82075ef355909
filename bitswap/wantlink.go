package bitswap

// The links a wantOutbox writes on. To a node, Kitsune writes its
// wantlists on a long-lived stream of its own (streamLink), encoded by
// replywire's encoder: no boxo message of maps, no protobuf message, none
// of boxo's sender's metrics, on the path of every want
// (docs/performance.md, scenario 2). Reverse sessions write to upstream
// peers through boxo's sender (bsnetLink): rare, and through the front
// network's fakes in tests.

import (
	"context"
	"fmt"
	"sync"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	bsnetiface "github.com/ipfs/boxo/bitswap/network"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// wantLink writes an outbox's messages, one at a time (from its writer),
// in the order they were drained.
type wantLink interface {
	// send writes m with boxo's send timeouts, on a new stream when
	// there is none or the current one fails. An error: m is lost.
	send(ctx context.Context, m wireParts) error
	// reset drops the stream: the peer went away. Safe at any time.
	reset()
}

// Boxo's send timeouts (bsnet's sendTimeout): a message may take 2 s plus
// its size at 100 kbit/s, at least 10 s and at most 2 min.
const (
	minSendTimeout = 10 * time.Second
	maxSendTimeout = 2 * time.Minute
	sendLatency    = 2 * time.Second
	minSendRate    = 100 * 1000 / 8
)

func sendTimeout(size int) time.Duration {
	d := sendLatency + time.Duration(uint64(time.Second)*uint64(size)/minSendRate)
	return min(max(d, minSendTimeout), maxSendTimeout)
}

// streamLink writes to a node on one long-lived stream Kitsune opens on
// the back host, with the Bitswap protocols bsnet speaks, newest first.
// The node never writes on it (its answers come on streams it opens),
// and nothing reads it, as with boxo's sender.
type streamLink struct {
	h  host.Host
	to peer.ID

	mu sync.Mutex
	s  network.Stream
}

// writeFrame is how many bytes writeTo gathers into one write: a
// wantlist is far smaller, so it is one write, and one frame.
const writeFrame = 64 << 10

func (l *streamLink) current() network.Stream {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.s
}

func (l *streamLink) open(ctx context.Context) (network.Stream, error) {
	if s := l.current(); s != nil {
		return s, nil
	}
	ctx, cancel := context.WithTimeout(ctx, minSendTimeout)
	defer cancel()
	s, err := l.h.NewStream(ctx, l.to, nodeProtocols...)
	if err != nil {
		return nil, fmt.Errorf("bitswap stream to %s: %w", l.to, err)
	}
	l.mu.Lock()
	l.s = s
	l.mu.Unlock()
	return s, nil
}

// drop resets s, and forgets it if it is still the link's stream.
func (l *streamLink) drop(s network.Stream) {
	_ = s.Reset()
	l.mu.Lock()
	if l.s == s {
		l.s = nil
	}
	l.mu.Unlock()
}

func (l *streamLink) reset() {
	l.mu.Lock()
	s := l.s
	l.s = nil
	l.mu.Unlock()
	if s != nil {
		_ = s.Reset()
	}
}

func (l *streamLink) send(ctx context.Context, m wireParts) error {
	var err error
	// One more try on a new stream (boxo tries three times, 100 ms
	// apart): a stream the node reset, or one of a connection that went.
	for range 2 {
		var s network.Stream
		if s, err = l.open(ctx); err != nil {
			continue
		}
		if err = writeWants(s, m, time.Now().Add(sendTimeout(wantsSize(m)))); err == nil {
			return nil
		}
		l.drop(s)
		if ctx.Err() != nil {
			break
		}
	}
	return err
}

// wantsSize is about the size of m on the wire, for its send timeout.
func wantsSize(m wireParts) int {
	n := 64 * (len(m.wants) + len(m.presences))
	for _, b := range m.blocks {
		n += len(b.RawData())
	}
	return n
}

// writeWants writes m on s by the deadline, in the wire format of s's
// protocol.
func writeWants(s network.Stream, m wireParts, deadline time.Time) error {
	var v1 bool
	switch p := s.Protocol(); p {
	case bsnet.ProtocolBitswap, bsnet.ProtocolBitswapOneOne:
		v1 = true
	case bsnet.ProtocolBitswapOneZero, bsnet.ProtocolBitswapNoVers:
	default:
		return fmt.Errorf("bitswap stream: unexpected protocol %q", p)
	}
	w, err := encodeReply(m, v1)
	if err != nil {
		return err
	}
	_ = s.SetWriteDeadline(deadline)
	if err := w.writeTo(s, writeFrame); err != nil {
		return fmt.Errorf("bitswap stream write: %w", err)
	}
	_ = s.SetWriteDeadline(time.Time{})
	return nil
}

// bsnetLink writes through boxo's message sender on a network: the
// reverse sessions' wants to upstream peers.
type bsnetLink struct {
	net bsnetiface.BitSwapNetwork
	to  peer.ID

	mu     sync.Mutex
	sender bsnetiface.MessageSender
}

func (l *bsnetLink) reset() {
	l.mu.Lock()
	s := l.sender
	l.sender = nil
	l.mu.Unlock()
	if s != nil {
		_ = s.Reset()
	}
}

func (l *bsnetLink) send(ctx context.Context, m wireParts) error {
	msg := bsmsg.New(false)
	for _, e := range m.wants {
		if e.Cancel {
			msg.Cancel(e.Cid)
		} else {
			msg.AddEntry(e.Cid, e.Priority, e.WantType, e.SendDontHave)
		}
	}
	for _, p := range m.presences {
		msg.AddBlockPresence(p.Cid, p.Type)
	}
	for _, b := range m.blocks {
		msg.AddBlock(b)
	}
	l.mu.Lock()
	sender := l.sender
	l.mu.Unlock()
	if sender == nil {
		s, err := l.net.NewMessageSender(ctx, l.to, &bsnetiface.MessageSenderOpts{MaxRetries: 3})
		if err != nil {
			return err
		}
		l.mu.Lock()
		l.sender = s
		l.mu.Unlock()
		sender = s
	}
	if err := sender.SendMsg(ctx, msg); err != nil {
		l.mu.Lock()
		if l.sender == sender {
			l.sender = nil
		}
		l.mu.Unlock()
		_ = sender.Reset()
		return err
	}
	return nil
}
