package bitswap

// The inbound path from upstream peers: Kitsune reads the Bitswap streams
// peers open to the front host itself, as it reads the nodes' (inbound.go),
// instead of through bsnet's read loop.
//
// Why: a client fetching small blocks one after another sends a message
// per want and one per cancel. Through bsnet each was copied out of the
// stream guard's buffer into msgio's, decoded by protobuf into a message
// of its own, and built again into boxo's message of maps; a quarter of
// Kitsune's own time per block in scenario 2 (docs/performance.md). Here
// the guard's buffer is parsed in place by the nodes' parser (the same
// results as boxo's decoder, checked by TestParseNodeMessageMatchesBoxo and
// the fuzzers). A message carrying blocks or presences (only a reverse
// session's answers, see reverse.go) still goes through boxo's decoder,
// as before: it is rare, and the reverse sessions take boxo's message.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"
)

// serveFrontStreams takes the front host's Bitswap stream handlers over
// from bsnet, which registered them in Start (its defaults: the front
// network has no protocol prefix); bsnet keeps sending, and Stop removes
// these handlers as it did its own.
func (r *Relay) serveFrontStreams() {
	h := r.front.Host()
	if h == nil {
		return
	}
	for _, p := range nodeProtocols {
		h.SetStreamHandler(p, r.handleFrontStream)
	}
}

// handleFrontStream reads an upstream peer's stream, message after
// message, through the stream guard (guard.go), as bsnet did: a message
// that does not parse resets the stream, a clean end closes it.
func (r *Relay) handleFrontStream(s network.Stream) {
	g, ok := s.(*guardedStream)
	if !ok {
		// A front host not wrapped by GuardStreams (tests): guarded here.
		g = &guardedStream{Stream: s, max: network.MessageSizeMax}
	}
	from := s.Conn().RemotePeer()
	for {
		body, err := g.nextBody()
		if err == nil {
			err = r.fromUpstreamFrame(from, body)
			g.done()
			if err == nil {
				continue
			}
		}
		if errors.Is(err, io.EOF) {
			// Closed here: this goroutine has nothing left to do (bsnet
			// closed in one more).
			_ = s.SetReadDeadline(time.Now().Add(closeTimeout))
			_ = s.Close()
		} else {
			_ = g.Reset()
			r.log.Debug("bad stream from upstream", zap.Stringer("peer", from), zap.Error(err))
		}
		return
	}
}

// fromUpstreamFrame parses one message body from upstream peer p and
// hands it on; a malformed one is an error, and nothing is handed on.
func (r *Relay) fromUpstreamFrame(p peer.ID, body []byte) error {
	if carriesReplies(body) {
		// boxo's decoder wants the message framed.
		framed := protowire.AppendVarint(make([]byte, 0, len(body)+binary.MaxVarintLen64), uint64(len(body)))
		msg, _, err := bsmsg.FromNet(bytes.NewReader(append(framed, body...)))
		if err != nil {
			return err
		}
		r.fromUpstream(p, msg)
		return nil
	}
	m, err := parseNodeMessage(body)
	if err != nil {
		return err
	}
	size := 0
	for i := range m.wants {
		size += entrySize(m.wants[i]) // what boxo's Size counts for it
	}
	if r.oversized(p, size) {
		return nil
	}
	r.upstreamWants(p, m.wants, m.full, nil)
	return nil
}

// carriesReplies reports whether a message body has a block (either
// framing) or a presence field at its top level. A body that does not
// parse says no: the parser then gives the error.
func carriesReplies(b []byte) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		if num == fMessageBlocks || num == fMessagePayload || num == fMessageBlockPresences {
			return true
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return false
		}
		b = b[n:]
	}
	return false
}
