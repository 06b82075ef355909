package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"time"

	mplex "github.com/libp2p/go-libp2p-mplex"
	"github.com/libp2p/go-libp2p/core/network"
	mp "github.com/libp2p/go-mplex"
)

// MplexID is the muxer deployed js-ipfs (ipfs-core 0.18 and older) offers,
// and nothing else: without it those apps cannot connect at all.
const MplexID = mplex.ID

// maxPendingResets bounds the stream resets one mplex connection may have
// queued for sending.
//
// mplex has no flow control, and what go-mplex buffers is bounded by
// itself except in one place: a stream reset is sent by a goroutine of its
// own (Stream.Reset), which waits up to two minutes (mp.ResetStreamTimeout)
// for the connection's writer. A peer that opens streams in a loop and
// never reads gets every stream over the resource manager's limit reset,
// so each 3-byte frame it sends would leave a goroutine on Kitsune until
// the writer frees up. Everything else is capped: inbound data goes
// through at most four 4 KiB buffers per connection (reserved through the
// connection's resource scope), one per stream, and a stream whose reader
// stalls the connection for 5 s is reset (mp.ReceiveTimeout); accepted
// streams count against the resource manager's stream limits; at most 16
// new streams wait to be accepted.
const maxPendingResets = 256

// mplexTransport is go-libp2p-mplex with the one unbounded queue capped:
// a connection whose peer leaves more than maxPendingResets resets unsent
// is closed. A peer reading its connection never comes near the cap; one
// that stops reading while opening streams it is not allowed is hostile.
type mplexTransport struct{}

var _ network.Multiplexer = mplexTransport{}

func (mplexTransport) NewConn(nc net.Conn, isServer bool, scope network.PeerScope) (network.MuxedConn, error) {
	g := &resetGuard{Conn: nc}
	m, err := mp.NewMultiplex(g, isServer, scope)
	if err != nil {
		return nil, err
	}
	return &guardedMplexConn{MuxedConn: mplex.NewMuxedConn(m), guard: g}, nil
}

// resetGuard sits under go-mplex on the secured connection. It counts the
// resets asked for and the reset frames written: go-mplex writes one whole
// frame per Write call, from a single writer goroutine.
type resetGuard struct {
	net.Conn

	mu sync.Mutex
	// pending is resets asked for minus reset frames written. go-mplex
	// also resets a stream on its own (a reader stalled for 5 s), at most
	// once per 5 s per connection; those frames drive pending below zero,
	// which loosens the cap by that little.
	pending int
}

// mplex frame tags for a reset, as the stream's initiator and receiver
// send them (go-mplex resetTag and resetTag-1).
const (
	resetTagInitiator = 6
	resetTagReceiver  = 5
)

func (g *resetGuard) Write(b []byte) (int, error) {
	if h, n := binary.Uvarint(b); n > 0 {
		if tag := h & 7; tag == resetTagInitiator || tag == resetTagReceiver {
			g.mu.Lock()
			g.pending--
			g.mu.Unlock()
		}
	}
	return g.Conn.Write(b)
}

// reserve counts one more reset to be sent, or reports that the cap is
// reached.
func (g *resetGuard) reserve() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pending >= maxPendingResets {
		return false
	}
	g.pending++
	return true
}

type guardedMplexConn struct {
	network.MuxedConn
	guard *resetGuard
}

func (c *guardedMplexConn) OpenStream(ctx context.Context) (network.MuxedStream, error) {
	return c.wrap(c.MuxedConn.OpenStream(ctx))
}

func (c *guardedMplexConn) AcceptStream() (network.MuxedStream, error) {
	return c.wrap(c.MuxedConn.AcceptStream())
}

func (c *guardedMplexConn) wrap(s network.MuxedStream, err error) (network.MuxedStream, error) {
	if err != nil {
		return nil, err
	}
	return &guardedMplexStream{MuxedStream: s, conn: c}, nil
}

type guardedMplexStream struct {
	network.MuxedStream
	conn *guardedMplexConn
	// rmu serialises reads: go-mplex's Read keeps the rest of a chunk
	// between calls unlocked, and drain reads from the goroutine that
	// closes or resets the stream while its reader may still be reading.
	rmu sync.Mutex
}

func (s *guardedMplexStream) Read(b []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	return s.MuxedStream.Read(b)
}

// Reset resets the stream, unless the connection already has
// maxPendingResets unsent: then the whole connection is closed, which
// ends every waiting reset at once.
func (s *guardedMplexStream) Reset() error {
	s.drain()
	if !s.conn.guard.reserve() {
		return s.conn.Close()
	}
	return s.MuxedStream.Reset()
}

// CloseRead and Close drain first, as Reset does.
func (s *guardedMplexStream) CloseRead() error {
	s.drain()
	return s.MuxedStream.CloseRead()
}

func (s *guardedMplexStream) Close() error {
	s.drain()
	return s.MuxedStream.Close()
}

// drain reads away what the peer sent on the stream that has not been
// read yet, so its buffers go back to the connection before the stream
// stops reading.
//
// go-mplex gives a connection at most four inbound 4 KiB buffers. Data
// queued for a stream holds one until the stream's Read consumes it, and
// once the stream is reset or closed for reading, Read returns at once and
// never gives it back. Four such streams and the connection's reader waits
// a minute for a buffer, then the connection dies: any peer whose stream
// Kitsune resets mid-message (the Bitswap stream guard does) would lose
// its connection. The first reads have a deadline in the past, so they
// return at once when nothing is queued, and a stream the peer sent
// nothing more on closes without waiting. Once a read found data, the peer
// is mid-message and its next chunk may still be in go-mplex's reader,
// which waits for the buffer that read freed: each further read waits up
// to drainSettle for it. Without that wait, on a loaded machine (CI, under
// -race) the chunk arrived just after the drain gave up, was queued for
// the stream as it was reset, and its buffer was lost: four such and the
// connection stopped reading (TestMplexResetStreamsFreeTheirBuffers). The
// cap bounds the work a peer still sending can cause.
func (s *guardedMplexStream) drain() {
	const maxReads, enoughIdle = 64, 16
	// The deadline first: it ends a read waiting for data, whose
	// goroutine then lets go of rmu.
	if err := s.MuxedStream.SetReadDeadline(time.Now().Add(-time.Second)); err != nil {
		return
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	var scratch [mp.BufferSize]byte
	idle, sending := 0, false
	for range maxReads {
		n, err := s.MuxedStream.Read(scratch[:])
		switch {
		case n > 0:
			idle, sending = 0, true
			if s.MuxedStream.SetReadDeadline(time.Now().Add(drainSettle)) != nil {
				return
			}
		case isTemporary(err):
			// The deadline. Waiting for a sending peer's next chunk:
			// none came. Otherwise nothing is queued now, or Go's
			// select picked the past deadline over queued data: try a
			// few times.
			if idle++; sending || idle >= enoughIdle {
				return
			}
		case err != nil:
			return // EOF, reset, already closed: nothing more to free
		}
	}
}

// drainSettle is how long drain waits for the next chunk of a peer that
// is mid-message: go-mplex's reader hands on a 4 KiB chunk in
// microseconds when the machine is idle.
const drainSettle = 20 * time.Millisecond

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *guardedMplexStream) ResetWithError(network.StreamErrorCode) error {
	return s.Reset() // mplex has no error codes
}
