package bitswap

// The inbound path from the fleet: Kitsune reads the Bitswap streams the
// nodes open to the back host itself, instead of through bsnet, and
// parses each message without copying block payloads.
//
// bsnet reads a message into a pooled buffer, lets the protobuf decoder
// copy every block out of it (an allocation and a copy per block), and
// builds a message of maps. Here the message is read into a buffer of its
// own and the blocks' bytes are slices of it: one allocation per message,
// no copy. Each block is still hashed exactly once, to compute its CID,
// as boxo's decoder does (bsmsg.NewWantlistBlock): that hash is the check
// that a node's bytes are the block that was asked for, and nothing later
// hashes it again (blocks.NewBlockWithCid only checks under u.Debug).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"sync/atomic"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
	"github.com/multiformats/go-multihash"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"
)

// nodeMessage is what one message from a node carries, as the relay uses
// it: the node's own wants (a Kubo node asks its peers for what it
// fetches), and its answers to Kitsune's. Messages from upstream peers
// are parsed into it too (front.go); full is used only there.
type nodeMessage struct {
	wants     []bsmsg.Entry
	full      bool
	blocks    []blocks.Block
	haves     []cid.Cid
	dontHaves []cid.Cid
}

// nodeMessageOf converts a message bsnet parsed.
func nodeMessageOf(m bsmsg.BitSwapMessage) nodeMessage {
	return nodeMessage{wants: m.Wantlist(), full: m.Full(), blocks: m.Blocks(), haves: m.Haves(), dontHaves: m.DontHaves()}
}

// nodeProtocols are the Bitswap protocols bsnet registers on the back
// host (its defaults: the relay's back network has no protocol prefix).
var nodeProtocols = []protocol.ID{bsnet.ProtocolBitswap, bsnet.ProtocolBitswapOneOne, bsnet.ProtocolBitswapOneZero, bsnet.ProtocolBitswapNoVers}

// serveNodeStreams takes the back host's Bitswap stream handlers over from
// bsnet, which registered them in Start; bsnet keeps sending and its
// connection events.
func (r *Relay) serveNodeStreams() {
	h := r.back.Host()
	if h == nil {
		return
	}
	for _, p := range nodeProtocols {
		h.SetStreamHandler(p, r.handleNodeStream)
	}
}

// closeTimeout bounds the close of a finished stream, as bsnet's does.
const closeTimeout = 10 * time.Second

// handleNodeStream reads one node's stream, message after message, and
// hands each to the relay; a message that does not parse resets the
// stream, as bsnet does.
func (r *Relay) handleNodeStream(s network.Stream) {
	from := s.Conn().RemotePeer()
	for {
		frame, err := readFrame(s, network.MessageSizeMax, r.frames)
		if err == nil {
			if err = r.nodeFrame(from, frame); err == nil {
				// The block just queued goes to its client first: the
				// reply writer it woke runs now, rather than after this
				// goroutine has read the node's end of stream and closed
				// it, whose close frame to the node would be written
				// first (docs/performance.md, scenario 2).
				runtime.Gosched()
				continue
			}
		}
		if errors.Is(err, io.EOF) {
			// Closed here rather than in a goroutine of its own: this one
			// has nothing left to do, and a node opens a stream for every
			// message (a new goroutine per block, its stack grown again).
			_ = s.SetReadDeadline(time.Now().Add(closeTimeout))
			_ = s.Close()
		} else {
			_ = s.Reset()
			r.counters.NodeStreamErrors.Add(1)
			r.log.Debug("bad stream from node", zap.Stringer("node", from), zap.Error(err))
		}
		return
	}
}

// nodeFrame parses one message from a node and hands it to the relay,
// then drops the reader's reference to its buffer: whoever keeps one of
// its blocks took a reference of its own meanwhile (framepool.go).
func (r *Relay) nodeFrame(from peer.ID, frame *frameBuf) error {
	defer frame.release()
	msg, err := parseNodeFrame(frame)
	if err != nil {
		return err
	}
	r.fromDownstream(from, msg)
	return nil
}

// readFrame reads one length-prefixed message into a buffer from the
// pool, which the blocks parsed from it keep, with one reference: the
// caller's. The memory is reserved in the stream's resource-manager scope
// while it is read and parsed; what the relay keeps afterwards is bounded
// by its own budgets.
func readFrame(s network.Stream, max int, pool *framePool) (*frameBuf, error) {
	length, err := binary.ReadUvarint(byteReader{s})
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF // between messages: a clean end
		}
		return nil, err
	}
	if length > uint64(max) {
		return nil, msgio.ErrMsgTooLarge
	}
	size := int(length)
	if err := s.Scope().ReserveMemory(size, network.ReservationPriorityHigh); err != nil {
		return nil, errReservation
	}
	defer s.Scope().ReleaseMemory(size)
	frame := pool.get(size)
	if _, err := io.ReadFull(s, frame.b); err != nil {
		frame.release()
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return frame, nil
}

// Field numbers of bitswap/message/pb/message.proto.
const (
	fMessageWantlist       = 1
	fMessageBlocks         = 2 // Bitswap 1.0.0
	fMessagePayload        = 3
	fMessageBlockPresences = 4

	fWantlistEntries = 1
	fWantlistFull    = 2

	fEntryBlock        = 1
	fEntryPriority     = 2
	fEntryCancel       = 3
	fEntryWantType     = 4
	fEntrySendDontHave = 5

	fBlockPrefix = 1
	fBlockData   = 2

	fPresenceCid  = 1
	fPresenceType = 2
)

// cidV0 is the prefix of a Bitswap 1.0.0 block's CID.
var cidV0 = cid.NewPrefixV0(multihash.SHA2_256)

var (
	errCidMissing  = errors.New("missing cid")
	errFieldNumber = errors.New("invalid field number")
)

// parseNodeMessage parses a Bitswap message in a buffer of its own, not
// the pool's (tests, fuzzing): see parseNodeFrame.
func parseNodeMessage(frame []byte) (nodeMessage, error) {
	return parseNodeFrame(unpooled(frame))
}

// parseNodeFrame parses a Bitswap message (the body of a frame) the way
// boxo's bsmsg.FromMsgReader does, with the same results and the same
// errors, except that a block payload over half its frame's buffer is a
// slice of it rather than a copy (see parser.block): a block keeps at
// most twice its size alive, and no two blocks share a frame. The blocks
// parsed in place hold no reference to the buffer: the caller's covers
// them until it hands the message on.
//
// As protobuf does, an unknown field, or a known one with an unexpected
// wire type, is skipped; a singular field given twice takes the last
// value; entries, blocks and presences for one CID merge as in boxo's
// message (its addEntry rules, the last block and presence win).
func parseNodeFrame(frame *frameBuf) (nodeMessage, error) {
	var (
		p         parser
		m         nodeMessage
		presences []bsmsg.BlockPresence
	)
	p.buf = frame
	err := eachField(frame.b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case fMessageWantlist:
			return eachField(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == fWantlistEntries && typ == protowire.BytesType:
					e, err := parseEntry(v)
					if err != nil {
						return err
					}
					m.wants = p.mergeEntry(m.wants, e)
				case num == fWantlistFull && typ == protowire.VarintType:
					// Each occurrence sets it, the last one wins, as in
					// protobuf (a second wantlist field merges).
					m.full = x != 0
				}
				return nil
			})
		case fMessageBlocks:
			// CIDv0: the bytes hashed with SHA-256, as blocks.NewBlock does.
			c, err := cidV0.Sum(v)
			if err != nil {
				return err
			}
			b, err := p.block(v, c)
			if err != nil {
				return err
			}
			m.blocks = p.mergeBlock(m.blocks, b)
		case fMessagePayload:
			b, err := p.payload(v)
			if err != nil {
				return err
			}
			m.blocks = p.mergeBlock(m.blocks, b)
		case fMessageBlockPresences:
			bp, err := parsePresence(v)
			if err != nil {
				return err
			}
			presences = p.mergePresence(presences, bp)
		}
		return nil
	})
	if err != nil {
		return nodeMessage{}, err
	}
	for _, bp := range presences {
		switch bp.Type {
		case pb.Message_Have:
			m.haves = append(m.haves, bp.Cid)
		case pb.Message_DontHave:
			m.dontHaves = append(m.dontHaves, bp.Cid)
		}
	}
	return m, nil
}

// eachField calls f with each field of a protobuf message: its number,
// wire type, and its bytes (length-delimited fields) or value (varints and
// fixed-size ones).
func eachField(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		if num > protowire.MaxValidNumber {
			// ConsumeTag lets numbers up to MaxInt32 through; protobuf's
			// decoder refuses those past 2^29-1 (found by the fuzzer).
			return errFieldNumber
		}
		b = b[n:]
		var (
			v []byte
			x uint64
		)
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x32 uint32
			x32, n = protowire.ConsumeFixed32(b)
			x = uint64(x32)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

func parseEntry(b []byte) (bsmsg.Entry, error) {
	var (
		e   bsmsg.Entry
		raw []byte
	)
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == fEntryBlock && typ == protowire.BytesType:
			raw = v
		case num == fEntryPriority && typ == protowire.VarintType:
			e.Priority = int32(x)
		case num == fEntryCancel && typ == protowire.VarintType:
			e.Cancel = x != 0
		case num == fEntryWantType && typ == protowire.VarintType:
			e.WantType = pb.Message_Wantlist_WantType(int32(x))
		case num == fEntrySendDontHave && typ == protowire.VarintType:
			e.SendDontHave = x != 0
		}
		return nil
	})
	if err != nil {
		return e, err
	}
	if len(raw) == 0 {
		return e, errCidMissing
	}
	// cid.Cast copies what it keeps (the CID is a string).
	if e.Cid, err = cid.Cast(raw); err != nil {
		return e, err
	}
	return e, nil
}

// mergeEntry adds e to es, or merges it into the entry for the same CID
// by boxo's rules (message.go addEntry).
func (p *parser) mergeEntry(es []bsmsg.Entry, e bsmsg.Entry) []bsmsg.Entry {
	if i := p.wants.find(len(es), func(i int) cid.Cid { return es[i].Cid }, e.Cid); i >= 0 {
		old := &es[i]
		if old.WantType == e.WantType {
			old.Priority = e.Priority
		}
		old.Cancel = old.Cancel || e.Cancel
		old.SendDontHave = old.SendDontHave || e.SendDontHave
		if e.WantType == pb.Message_Wantlist_Block && old.WantType == pb.Message_Wantlist_Have {
			old.WantType = e.WantType
		}
		return es
	}
	p.wants.added(e.Cid, len(es))
	return append(es, e)
}

// mergeBlock adds b, replacing an earlier block with the same CID (whose
// bytes, having the same hash, are the same).
func (p *parser) mergeBlock(bs []blocks.Block, b blocks.Block) []blocks.Block {
	if i := p.blocks.find(len(bs), func(i int) cid.Cid { return bs[i].Cid() }, b.Cid()); i >= 0 {
		bs[i] = b
		return bs
	}
	p.blocks.added(b.Cid(), len(bs))
	return append(bs, b)
}

func parsePresence(b []byte) (bsmsg.BlockPresence, error) {
	var (
		bp  bsmsg.BlockPresence
		raw []byte
	)
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == fPresenceCid && typ == protowire.BytesType:
			raw = v
		case num == fPresenceType && typ == protowire.VarintType:
			bp.Type = pb.Message_BlockPresenceType(int32(x))
		}
		return nil
	})
	if err != nil {
		return bp, err
	}
	if len(raw) == 0 {
		return bp, errCidMissing
	}
	if bp.Cid, err = cid.Cast(raw); err != nil {
		return bp, err
	}
	if !bp.Cid.Defined() {
		return bp, errCidMissing
	}
	return bp, nil
}

func (p *parser) mergePresence(ps []bsmsg.BlockPresence, bp bsmsg.BlockPresence) []bsmsg.BlockPresence {
	if i := p.presences.find(len(ps), func(i int) cid.Cid { return ps[i].Cid }, bp.Cid); i >= 0 {
		ps[i].Type = bp.Type
		return ps
	}
	p.presences.added(bp.Cid, len(ps))
	return append(ps, bp)
}

// parser holds what the parts of one message share: the frame's buffer,
// and where each CID's entry, block and presence went.
type parser struct {
	buf                      *frameBuf
	wants, blocks, presences cidIndex
}

// cidIndex finds the element for a CID in a list that only grows: a scan
// while the list is short, a map once it is not (a node's wantlist can
// hold a thousand entries).
type cidIndex struct{ m map[cid.Cid]int }

const cidIndexScan = 16

func (x *cidIndex) find(n int, at func(int) cid.Cid, c cid.Cid) int {
	if x.m == nil {
		if n <= cidIndexScan {
			for i := range n {
				if at(i) == c {
					return i
				}
			}
			return -1
		}
		x.m = make(map[cid.Cid]int, 2*n)
		for i := range n {
			x.m[at(i)] = i
		}
	}
	if i, ok := x.m[c]; ok {
		return i
	}
	return -1
}

// added notes that c is at index i.
func (x *cidIndex) added(c cid.Cid, i int) {
	if x.m != nil {
		x.m[c] = i
	}
}

// payload parses a Bitswap 1.1+ block: its CID prefix and its bytes,
// hashed once here to give the block its CID.
func (p *parser) payload(b []byte) (blocks.Block, error) {
	var prefix, data []byte
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		switch {
		case num == fBlockPrefix && typ == protowire.BytesType:
			prefix = v
		case num == fBlockData && typ == protowire.BytesType:
			data = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	pref, err := cid.PrefixFromBytes(prefix)
	if err != nil {
		return nil, err
	}
	c, err := pref.Sum(data)
	if err != nil {
		return nil, err
	}
	return p.block(data, c)
}

// block is the block with CID c and bytes data, a slice of the frame: in
// place if it is over half the frame's buffer (its capacity: a pooled
// buffer can be a little larger than the message), so that it keeps at
// most twice its size alive and is the only block that keeps this
// buffer; copied otherwise. Kubo sends a block of 256 KiB (its default chunk) alone in
// a message, with at most a few presences beside it: kept in place.
// Smaller blocks come several to a message of about 16 KiB (boxo's
// engine fills a message up to that) and are copied, as bsnet copies
// every block.
func (p *parser) block(data []byte, c cid.Cid) (blocks.Block, error) {
	if 2*len(data) <= cap(p.buf.b) {
		return blocks.NewBlockWithCid(bytes.Clone(data), c)
	}
	b, err := blocks.NewBlockWithCid(data, c)
	if err != nil {
		return nil, err
	}
	return &frameBlock{BasicBlock: b, buf: p.buf, holds: cap(p.buf.b)}, nil
}

// frameBlock is a block whose bytes are a slice of the buffer its node
// message was read into: it keeps the whole buffer alive, and a holder
// that keeps the block holds a reference to the buffer (framepool.go).
type frameBlock struct {
	*blocks.BasicBlock
	buf   *frameBuf
	holds int // the buffer's size
	// outboxes is how many reply outboxes hold the block (replyMemory
	// counts its bytes once).
	outboxes atomic.Int32
}

// heldBytes is the memory a block keeps alive: its frame buffer's size
// for a block parsed in place, its own buffer's capacity otherwise. The
// budgets on what the relay keeps (recent blocks, a peer's replies)
// count this.
func heldBytes(b blocks.Block) int {
	if fb, ok := b.(*frameBlock); ok {
		return fb.holds
	}
	return cap(b.RawData())
}
