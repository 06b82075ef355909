package bitswap

// The outbound path to clients: a reply is written as the bytes boxo's
// ToNetV1 (or ToNetV0) would write, without building the protobuf message
// that copies every block into one buffer. The small fields (length
// prefix, field tags, CID prefixes, presences) are encoded into one buffer;
// each block's bytes go to the stream as they are, still a slice of the
// node's message they arrived in (inbound.go).
//
// The stream cuts what it is given into frames: yamux sends every Write
// as frames of at most replyFrame bytes, and each frame costs a copy into
// its send queue, a Noise or TLS record and a system call. Writing the
// pieces one by one would add a small frame for each block's header and
// another for each block's tail. writeTo instead writes each block's whole
// frames straight from its buffer, ending where the block ends, and
// gathers what is left (the block's first len%frame bytes, the headers
// before them) into one frame: one small frame per block, a copy of less
// than a frame.

import (
	"encoding/binary"
	"fmt"
	"io"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	blocks "github.com/ipfs/go-block-format"
	"github.com/kitsune-lb/kitsune/proxy"
	pool "github.com/libp2p/go-buffer-pool"
	"google.golang.org/protobuf/encoding/protowire"
)

const fMessagePendingBytes = 5

// replyFrame is the most data the front host's yamux puts in one frame
// (sized so that a frame is one Noise message): a Write of a multiple of
// it is sent as whole frames.
const replyFrame = proxy.FrontFrameData

// wireMessage is a message ready to write: its pieces in order, each a
// slice of head or a block's bytes.
type wireMessage struct {
	head   []byte
	pieces [][]byte
	size   int // the bytes on the wire, length prefix included
}

// wireParts are a message's contents in the order they are written.
type wireParts struct {
	wants     []bsmsg.Entry
	full      bool
	blocks    []blocks.Block
	presences []bsmsg.BlockPresence
	pending   int32
}

func wirePartsOf(msg bsmsg.BitSwapMessage) wireParts {
	return wireParts{wants: msg.Wantlist(), full: msg.Full(), blocks: msg.Blocks(),
		presences: msg.BlockPresences(), pending: msg.PendingBytes()}
}

// encodeReply lays a message out as boxo's ToNetV1 (v1) or ToNetV0 writes
// it, byte for byte when the lists are in the same order: the same fields,
// in field-number order, zero values left out as proto3 does.
func encodeReply(m wireParts, v1 bool) (wireMessage, error) {
	wants, blks, full := m.wants, m.blocks, m.full
	var presences []bsmsg.BlockPresence
	var pending int32
	if v1 {
		presences, pending = m.presences, m.pending
	}

	// Sizes first: each submessage's length precedes it.
	wl := 0
	for _, e := range wants {
		n := entrySize(e)
		wl += 1 + protowire.SizeVarint(uint64(n)) + n
	}
	if full {
		wl += 2
	}
	size := 1 + protowire.SizeVarint(uint64(wl)) + wl
	headCap := size
	prefixes := make([][]byte, len(blks))
	for i, b := range blks {
		d := len(b.RawData())
		if v1 {
			prefixes[i] = b.Cid().Prefix().Bytes()
			n := blockSize(len(prefixes[i]), d)
			size += 1 + protowire.SizeVarint(uint64(n)) + n
			headCap += 1 + protowire.SizeVarint(uint64(n)) + n - d
		} else {
			size += 1 + protowire.SizeVarint(uint64(d)) + d
			headCap += 1 + protowire.SizeVarint(uint64(d))
		}
	}
	for _, p := range presences {
		n := presenceSize(p)
		size += 1 + protowire.SizeVarint(uint64(n)) + n
		headCap += 1 + protowire.SizeVarint(uint64(n)) + n
	}
	if pending != 0 {
		n := 1 + protowire.SizeVarint(uint64(int64(pending)))
		size += n
		headCap += n
	}
	headCap += binary.MaxVarintLen64

	h := make([]byte, 0, headCap)
	h = protowire.AppendVarint(h, uint64(size))
	w := wireMessage{size: len(h) + size, pieces: make([][]byte, 0, 2*len(blks)+1)}

	h = protowire.AppendTag(h, fMessageWantlist, protowire.BytesType)
	h = protowire.AppendVarint(h, uint64(wl))
	for _, e := range wants {
		h = protowire.AppendTag(h, fWantlistEntries, protowire.BytesType)
		h = protowire.AppendVarint(h, uint64(entrySize(e)))
		h = appendEntry(h, e)
	}
	if full {
		h = protowire.AppendTag(h, fWantlistFull, protowire.VarintType)
		h = protowire.AppendVarint(h, 1)
	}
	// start is where the piece of head not yet handed out begins.
	start, data := 0, 0
	for i, b := range blks {
		d := b.RawData()
		if v1 {
			h = protowire.AppendTag(h, fMessagePayload, protowire.BytesType)
			h = protowire.AppendVarint(h, uint64(blockSize(len(prefixes[i]), len(d))))
			h = protowire.AppendTag(h, fBlockPrefix, protowire.BytesType)
			h = protowire.AppendBytes(h, prefixes[i])
			if len(d) == 0 {
				continue // proto3 leaves an empty field out
			}
			h = protowire.AppendTag(h, fBlockData, protowire.BytesType)
		} else {
			h = protowire.AppendTag(h, fMessageBlocks, protowire.BytesType)
		}
		h = protowire.AppendVarint(h, uint64(len(d)))
		if len(d) == 0 {
			continue
		}
		w.pieces = append(w.pieces, h[start:], d)
		start, data = len(h), data+len(d)
	}
	for _, p := range presences {
		h = protowire.AppendTag(h, fMessageBlockPresences, protowire.BytesType)
		h = protowire.AppendVarint(h, uint64(presenceSize(p)))
		h = protowire.AppendTag(h, fPresenceCid, protowire.BytesType)
		h = protowire.AppendBytes(h, p.Cid.Bytes())
		if p.Type != 0 {
			h = protowire.AppendTag(h, fPresenceType, protowire.VarintType)
			h = protowire.AppendVarint(h, uint64(int64(p.Type)))
		}
	}
	if pending != 0 {
		h = protowire.AppendTag(h, fMessagePendingBytes, protowire.VarintType)
		h = protowire.AppendVarint(h, uint64(int64(pending)))
	}
	if start < len(h) {
		w.pieces = append(w.pieces, h[start:])
	}
	if len(h)+data != w.size || cap(h) != headCap {
		// The sizes above and the appends disagree: a bug, never a peer's doing.
		return wireMessage{}, fmt.Errorf("bitswap reply: encoded %d bytes, sized %d", len(h)+data, w.size)
	}
	w.head = h
	return w, nil
}

func entrySize(e bsmsg.Entry) int {
	n := 0
	if c := e.Cid.ByteLen(); c > 0 {
		n += 1 + protowire.SizeBytes(c)
	}
	if e.Priority != 0 {
		n += 1 + protowire.SizeVarint(uint64(int64(e.Priority)))
	}
	if e.Cancel {
		n += 2
	}
	if e.WantType != 0 {
		n += 1 + protowire.SizeVarint(uint64(int64(e.WantType)))
	}
	if e.SendDontHave {
		n += 2
	}
	return n
}

func appendEntry(h []byte, e bsmsg.Entry) []byte {
	if e.Cid.ByteLen() > 0 {
		h = protowire.AppendTag(h, fEntryBlock, protowire.BytesType)
		h = protowire.AppendBytes(h, e.Cid.Bytes())
	}
	if e.Priority != 0 {
		h = protowire.AppendTag(h, fEntryPriority, protowire.VarintType)
		h = protowire.AppendVarint(h, uint64(int64(e.Priority)))
	}
	if e.Cancel {
		h = protowire.AppendTag(h, fEntryCancel, protowire.VarintType)
		h = protowire.AppendVarint(h, 1)
	}
	if e.WantType != 0 {
		h = protowire.AppendTag(h, fEntryWantType, protowire.VarintType)
		h = protowire.AppendVarint(h, uint64(int64(e.WantType)))
	}
	if e.SendDontHave {
		h = protowire.AppendTag(h, fEntrySendDontHave, protowire.VarintType)
		h = protowire.AppendVarint(h, 1)
	}
	return h
}

func blockSize(prefix, data int) int {
	n := 1 + protowire.SizeBytes(prefix)
	if data > 0 {
		n += 1 + protowire.SizeBytes(data)
	}
	return n
}

func presenceSize(p bsmsg.BlockPresence) int {
	n := 1 + protowire.SizeBytes(p.Cid.ByteLen())
	if p.Type != 0 {
		n += 1 + protowire.SizeVarint(uint64(int64(p.Type)))
	}
	return n
}

// writeTo writes the message's pieces to w in frames of frame bytes,
// copying less than a frame per block: of a block of at least a frame,
// the first len%frame bytes join the bytes before them (its header, the
// message's) in a scratch buffer, and the rest, whole frames, go straight
// to w. A block's whole frames end where the block does, so its header
// and head share the only small frame it costs; smaller pieces are
// gathered in the scratch buffer, which is written when full.
func (m wireMessage) writeTo(w io.Writer, frame int) error {
	limit := min(frame, m.size)
	buf := pool.Get(limit)
	defer pool.Put(buf)
	scratch := buf[:0]
	flush := func() error {
		if len(scratch) == 0 {
			return nil
		}
		_, err := w.Write(scratch)
		scratch = scratch[:0]
		return err
	}
	// gather copies p into the scratch buffer, writing it whenever full.
	gather := func(p []byte) error {
		for len(p) > 0 {
			n := copy(buf[len(scratch):limit], p)
			scratch = buf[:len(scratch)+n]
			p = p[n:]
			if len(scratch) == limit {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for _, p := range m.pieces {
		if len(p) < frame {
			if err := gather(p); err != nil {
				return err
			}
			continue
		}
		head := len(p) % frame
		if err := gather(p[:head]); err != nil {
			return err
		}
		if err := flush(); err != nil {
			return err
		}
		if _, err := w.Write(p[head:]); err != nil {
			return err
		}
	}
	return flush()
}
