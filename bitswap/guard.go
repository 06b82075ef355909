package bitswap

import (
	"encoding/binary"
	"errors"
	"io"
	"sync"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
)

// GuardStreams wraps the front host for bsnet.NewFromIpfsHost, so that the
// Bitswap stream handlers bsnet registers read each message only as fast
// as its bytes arrive.
//
// bsnet reads a stream with msgio, which allocates a buffer of the length a
// message announces before reading any of it: a peer that opens streams and
// writes a 4 MiB length prefix on each, and nothing more, made Kitsune hold
// 4 MiB per stream (1024 streams a peer by default, 4 GiB) for a few bytes
// sent. Through the wrapper, a message is buffered as it arrives, the
// memory is reserved in the stream's resource-manager scope (so the
// per-peer and per-protocol memory limits bound it), and only a complete
// message is handed on. A stream that announces more than
// network.MessageSizeMax, or would take more memory than its limits
// allow, is reset; the peer's other streams and connection stay.
func GuardStreams(h host.Host) host.Host { return guardHost{h} }

type guardHost struct{ host.Host }

func (g guardHost) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	g.Host.SetStreamHandler(pid, guardHandler(handler))
}

func (g guardHost) SetStreamHandlerMatch(pid protocol.ID, m func(protocol.ID) bool, handler network.StreamHandler) {
	g.Host.SetStreamHandlerMatch(pid, m, guardHandler(handler))
}

func guardHandler(h network.StreamHandler) network.StreamHandler {
	return func(s network.Stream) {
		h(&guardedStream{Stream: s, max: network.MessageSizeMax})
	}
}

// readChunk is the first allocation for a message body, enough for a
// usual wantlist; the buffer doubles from there as bytes arrive.
const readChunk = 4 << 10

// errReservation is returned when the resource manager refuses the memory
// for a message.
var errReservation = errors.New("bitswap: no memory for this message within the peer's limits")

// guardedStream reads one length-prefixed message ahead of its reader and
// serves it, prefix included, once it is complete.
type guardedStream struct {
	network.Stream
	max int

	frame []byte // the message being served: varint prefix and body
	off   int

	mu       sync.Mutex
	reserved int
}

func (g *guardedStream) Read(p []byte) (int, error) {
	if g.off >= len(g.frame) {
		if err := g.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, g.frame[g.off:])
	g.off += n
	if g.off == len(g.frame) {
		// The reader copied the message into a buffer of its own.
		g.done()
	}
	return n, nil
}

// nextBody reads the next message whole and returns its body (without
// the length prefix), for a reader that parses it in place
// (handleFrontStream); done releases it.
func (g *guardedStream) nextBody() ([]byte, error) {
	if err := g.next(); err != nil {
		return nil, err
	}
	_, n := binary.Uvarint(g.frame)
	return g.frame[n:], nil
}

// done releases the message nextBody returned: what the relay keeps of
// it (CIDs) is copied.
func (g *guardedStream) done() {
	g.frame, g.off = nil, 0
	g.release()
}

// next reads the next message whole.
func (g *guardedStream) next() error {
	length, err := binary.ReadUvarint(byteReader{g.Stream})
	if err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF // between messages: a clean end
		}
		return err
	}
	if length > uint64(g.max) {
		return msgio.ErrMsgTooLarge
	}
	size := int(length)
	hdr := binary.AppendUvarint(make([]byte, 0, binary.MaxVarintLen64), length)
	if size == 0 {
		g.frame = hdr
		return nil
	}
	buf := make([]byte, 0, len(hdr)+min(size, readChunk))
	if err := g.reserve(cap(buf)); err != nil {
		return err
	}
	buf = append(buf, hdr...)
	want := len(hdr) + size
	for len(buf) < want {
		if len(buf) == cap(buf) {
			grown := min(want, 2*cap(buf))
			if err := g.reserve(grown - cap(buf)); err != nil {
				return err
			}
			nb := make([]byte, len(buf), grown)
			copy(nb, buf)
			buf = nb
		}
		n, err := g.Stream.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil && len(buf) < want {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			g.release()
			return err
		}
	}
	g.frame = buf
	return nil
}

func (g *guardedStream) reserve(n int) error {
	if err := g.Stream.Scope().ReserveMemory(n, network.ReservationPriorityHigh); err != nil {
		g.release()
		return errReservation
	}
	g.mu.Lock()
	g.reserved += n
	g.mu.Unlock()
	return nil
}

func (g *guardedStream) release() {
	g.mu.Lock()
	n := g.reserved
	g.reserved = 0
	g.mu.Unlock()
	if n > 0 {
		g.Stream.Scope().ReleaseMemory(n)
	}
}

func (g *guardedStream) Close() error {
	g.release()
	return g.Stream.Close()
}

func (g *guardedStream) Reset() error {
	g.release()
	return g.Stream.Reset()
}

type byteReader struct{ r io.Reader }

func (b byteReader) ReadByte() (byte, error) {
	var one [1]byte
	_, err := io.ReadFull(b.r, one[:])
	return one[0], err
}
