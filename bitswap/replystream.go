package bitswap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
)

// replySender writes one reply message to a peer. send returns once the
// message is written or failed, and reads its blocks' bytes no more
// after that (their buffers may then be reused, framepool.go); our side is closed after that (after at
// most hold, the probe, if given), and done is called once, later or from
// send itself, with what the stream showed. Closing in the background
// matters: a close waits for the muxer to flush, and waiting for it before
// the next message cost a third of Kubo's throughput on loopback.
type replySender interface {
	send(ctx context.Context, to peer.ID, msg bsmsg.BitSwapMessage, hold time.Duration, done func(replyEvents))
}

// streamReplies sends each reply message on a stream of its own, as
// bsnet.SendMessage does, but keeps the stream until the receiver has
// closed its side or reset it: SendMessage returns once the bytes are
// buffered, so a message the receiver cut off was lost unseen. What each
// receiver's close means is in pace.go.
//
// It can also open the stream for a peer's next message ahead of it
// (preopen), while the writer has nothing else to do: a block then goes
// out on a stream the receiver has already accepted, without opening one
// on its path (docs/performance.md, scenario 2).
type streamReplies struct {
	host host.Host
	// ackWait bounds the wait for the receiver's close once written.
	ackWait time.Duration

	mu sync.Mutex
	// spare is the stream preopen opened, until send takes it or drop
	// resets it; stop ends its reset on the context's end.
	spare network.Stream
	stop  func() bool
}

// preopener is a replySender that can open the stream of the next
// message ahead of it (streamReplies).
type preopener interface {
	// preopen opens a stream for the next message to the peer, unless
	// one is open already.
	preopen(ctx context.Context, to peer.ID)
	// drop resets that stream, if it was not used.
	drop()
}

func (r *streamReplies) preopen(ctx context.Context, to peer.ID) {
	r.mu.Lock()
	open := r.spare != nil
	r.mu.Unlock()
	if open {
		return
	}
	s, err := r.host.NewStream(network.WithNoDial(ctx, "bitswap reply"), to, replyProtocols()...)
	if err != nil {
		return // send opens one itself, and sees the error
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.spare != nil {
		_ = s.Reset() // a concurrent preopen won
		return
	}
	r.spare = s
	// The peer leaving (or the relay closing) resets it.
	r.stop = context.AfterFunc(ctx, r.drop)
}

func (r *streamReplies) drop() {
	r.mu.Lock()
	s, stop := r.spare, r.stop
	r.spare, r.stop = nil, nil
	r.mu.Unlock()
	if s != nil {
		stop()
		_ = s.Reset()
	}
}

// take returns the spare stream, if there is one, for send to use.
func (r *streamReplies) take() network.Stream {
	r.mu.Lock()
	s, stop := r.spare, r.stop
	r.spare, r.stop = nil, nil
	r.mu.Unlock()
	if s != nil {
		stop()
	}
	return s
}

// replyProtocols are the Bitswap protocols a reply may go out on, newest
// first, as bsnet offers them.
func replyProtocols() []protocol.ID {
	return []protocol.ID{bsnet.ProtocolBitswap, bsnet.ProtocolBitswapOneOne, bsnet.ProtocolBitswapOneZero, bsnet.ProtocolBitswapNoVers}
}

// writeTimeout is boxo's sendTimeout: 2 s plus the message at 100 kbit/s,
// between 10 s and 2 min.
func writeTimeout(size int) time.Duration {
	t := 2*time.Second + time.Duration(int64(size)*int64(time.Second)/(100_000/8))
	return min(2*time.Minute, max(10*time.Second, t))
}

// streamEnd is how the receiver's side of a stream ended.
type streamEnd struct {
	at  time.Time
	err error
}

func (r *streamReplies) send(ctx context.Context, to peer.ID, msg bsmsg.BitSwapMessage, hold time.Duration, done func(replyEvents)) {
	var ev replyEvents
	s := r.take()
	if s == nil {
		// Replies go over the peer's connection or not at all: a peer
		// that left is forgotten, and its outbox with it.
		var err error
		if s, err = r.host.NewStream(network.WithNoDial(ctx, "bitswap reply"), to, replyProtocols()...); err != nil {
			ev.writeErr = err
			done(ev)
			return
		}
	}
	ev.opened = time.Now()
	deadline := ev.opened.Add(writeTimeout(msg.Size()))
	_ = s.SetReadDeadline(deadline.Add(r.ackWait))
	// The peer leaving (or the relay closing) ends the wait at once.
	stop := context.AfterFunc(ctx, func() { _ = s.Reset() })

	_ = s.SetWriteDeadline(deadline)
	if err := writeReply(s, msg); err != nil {
		stop()
		_ = s.Reset()
		ev.writeErr = err
		done(ev)
		return
	}
	ev.wrote = time.Now()
	// The rest waits on the receiver, not on the next message: the
	// close, the probe and the wait for the receiver's end run on their
	// own, as bsnet closes its streams.
	go func() {
		defer stop()
		ev.held = hold > 0
		ev.closed, ev.ended, ev.endErr, ev.writeErr = r.finish(s, to, hold)
		var ne net.Error
		ev.timedOut = errors.As(ev.endErr, &ne) && ne.Timeout()
		if ev.writeErr != nil || (ev.endErr != nil && !ev.timedOut) {
			_ = s.Reset()
		} else {
			// A receiver still reading past the bound is not cut off:
			// closing our read side sends nothing.
			_ = s.Close()
		}
		done(ev)
	}()
}

// finish closes our side of a written reply stream (after the probe's
// wait, when hold is set) and reads until the receiver's side ends. It
// returns when our side closed (zero if it did not), when and how the
// receiver's ended, and an error closing ours.
func (r *streamReplies) finish(s network.Stream, to peer.ID, hold time.Duration) (closed, ended time.Time, endErr, closeErr error) {
	if hold <= 0 {
		// No probe: close, then read to the receiver's end in this
		// goroutine, not in one more per reply. A receiver that closed
		// before us is then seen ending after our close (delivered, not
		// closed early): the same judgement of the link (pace.go
		// observe), and the probe alone tells the kinds apart.
		if err := s.CloseWrite(); err != nil {
			return closed, ended, nil, err
		}
		closed = time.Now()
		_ = s.SetReadDeadline(closed.Add(r.ackWait))
		_, err := io.Copy(io.Discard, s)
		return closed, time.Now(), err, nil
	}
	end := make(chan streamEnd, 1)
	go func() {
		// Receivers send nothing back; whatever one does is discarded.
		_, err := io.Copy(io.Discard, s)
		end <- streamEnd{time.Now(), err}
	}()
	// The probe: a receiver that closes before we do is Helia.
	t := time.NewTimer(probeWait(r.host.Peerstore().LatencyEWMA(to), hold))
	defer t.Stop()
	select {
	case e := <-end:
		if e.err != nil {
			return closed, e.at, e.err, nil
		}
		if err := s.CloseWrite(); err != nil {
			return closed, e.at, nil, err
		}
		return time.Now(), e.at, nil, nil
	case <-t.C:
	}
	if err := s.CloseWrite(); err != nil {
		return closed, ended, nil, err
	}
	closed = time.Now()
	// From here the wait is bounded by ackWait.
	_ = s.SetReadDeadline(closed.Add(r.ackWait))
	e := <-end
	return closed, e.at, e.err, nil
}

// writeReply writes msg in the format of the stream's protocol, as bsnet
// does (replies to 1.1.0 peers carry presences too, as boxo's do), but
// without copying its blocks (replywire.go).
func writeReply(s network.Stream, msg bsmsg.BitSwapMessage) error {
	var v1 bool
	switch s.Protocol() {
	case bsnet.ProtocolBitswap, bsnet.ProtocolBitswapOneOne:
		v1 = true
	case bsnet.ProtocolBitswapOneZero, bsnet.ProtocolBitswapNoVers:
	default:
		return fmt.Errorf("bitswap reply: unexpected protocol %q", s.Protocol())
	}
	w, err := encodeReply(wirePartsOf(msg), v1)
	if err != nil {
		return err
	}
	return w.writeTo(s, replyFrame)
}
