package bitswap

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-msgio"
	mh "github.com/multiformats/go-multihash"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// protoOf builds the protobuf message boxo's ToProtoV1/ToProtoV0 builds,
// with the lists in the order given (boxo takes them from maps).
func protoOf(m wireParts, v1 bool) *pb.Message {
	out := &pb.Message{Wantlist: &pb.Message_Wantlist{Full: m.full}}
	for _, e := range m.wants {
		out.Wantlist.Entries = append(out.Wantlist.Entries, e.ToPB())
	}
	for _, b := range m.blocks {
		if v1 {
			out.Payload = append(out.Payload, &pb.Message_Block{Data: b.RawData(), Prefix: b.Cid().Prefix().Bytes()})
		} else {
			out.Blocks = append(out.Blocks, b.RawData())
		}
	}
	if v1 {
		for _, p := range m.presences {
			out.BlockPresences = append(out.BlockPresences, &pb.Message_BlockPresence{Cid: p.Cid.Bytes(), Type: p.Type})
		}
		out.PendingBytes = m.pending
	}
	return out
}

// writesRecorder keeps each Write it is given.
type writesRecorder struct{ writes [][]byte }

func (w *writesRecorder) Write(b []byte) (int, error) {
	w.writes = append(w.writes, bytes.Clone(b))
	return len(b), nil
}

// checkReply encodes m both ways and checks the bytes, boxo's reading of
// them, and the writes frameWriter made.
func checkReply(t *testing.T, m wireParts, v1 bool, frame int) {
	t.Helper()
	body, err := proto.Marshal(protoOf(m, v1))
	if err != nil {
		t.Fatal(err)
	}
	want := protowire.AppendVarint(nil, uint64(len(body)))
	want = append(want, body...)

	w, err := encodeReply(m, v1)
	if err != nil {
		t.Fatal(err)
	}
	var rec writesRecorder
	if err := w.writeTo(&rec, frame); err != nil {
		t.Fatal(err)
	}
	got := bytes.Join(rec.writes, nil)
	if !bytes.Equal(got, want) {
		t.Fatalf("v1=%v: wrote %d bytes, protobuf gives %d; first difference at %d", v1, len(got), len(want), firstDiff(got, want))
	}
	if w.size != len(want) {
		t.Fatalf("size %d, wrote %d", w.size, len(want))
	}

	// Every write is whole frames or at most one; beyond what one big
	// write would take, no more than a small frame per piece of a frame
	// or more (a block; with tiny frames, headers too) and one for what
	// follows the last (presences).
	frames := 0
	for _, b := range rec.writes {
		if len(b) > frame && len(b)%frame != 0 {
			t.Fatalf("a write of %d bytes is not whole frames of %d", len(b), frame)
		}
		frames += (len(b) + frame - 1) / frame
	}
	big := 0
	for _, p := range w.pieces {
		if len(p) >= frame {
			big++
		}
	}
	if least := (len(want) + frame - 1) / frame; frames > least+big+1 {
		t.Fatalf("%d frames for %d bytes in %d pieces of a frame or more (frame %d)", frames, len(want), big, frame)
	}

	// boxo reads back what it would have read from its own encoding.
	msg, _, err := bsmsg.FromMsgReader(msgio.NewVarintReaderSize(bytes.NewReader(got), network.MessageSizeMax))
	if err != nil {
		t.Fatalf("boxo cannot read the reply: %v", err)
	}
	if d := sameWire(m, wirePartsOf(msg), v1); d != "" {
		t.Fatal(d)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// sameWire compares what a reply carried with what was read back.
func sameWire(sent, read wireParts, v1 bool) string {
	if !v1 {
		// Bitswap 1.0.0 carries no CIDs with its blocks: the receiver
		// takes each for a CIDv0 one, as it would from boxo (so equal
		// bytes are one block).
		var sb, rb []string
		seen := map[string]bool{}
		for _, b := range sent.blocks {
			if !seen[string(b.RawData())] {
				sb = append(sb, string(b.RawData()))
			}
			seen[string(b.RawData())] = true
		}
		for _, b := range read.blocks {
			rb = append(rb, string(b.RawData()))
		}
		if d := sameSet("v0 blocks", sb, rb); d != "" {
			return d
		}
		sent.blocks, read.blocks = nil, nil
	}
	if d := sameNodeMessage(nodeMessage{wants: sent.wants, blocks: sent.blocks}, nodeMessage{wants: read.wants, blocks: read.blocks}); d != "" {
		return d
	}
	if sent.full != read.full {
		return fmt.Sprintf("full %v, read %v", sent.full, read.full)
	}
	if !v1 {
		if len(read.presences) != 0 || read.pending != 0 {
			return "a 1.0.0 reply carried presences"
		}
		return ""
	}
	if sent.pending != read.pending {
		return fmt.Sprintf("pending bytes %d, read %d", sent.pending, read.pending)
	}
	// Presences for the same CID: the last one counts, as in boxo's map.
	last := map[cid.Cid]pb.Message_BlockPresenceType{}
	for _, p := range sent.presences {
		last[p.Cid] = p.Type
	}
	// and a block's presence gives way to the block.
	for _, b := range sent.blocks {
		delete(last, b.Cid())
	}
	if len(read.presences) != len(last) {
		return fmt.Sprintf("%d presences, read %d", len(last), len(read.presences))
	}
	for _, p := range read.presences {
		if t, ok := last[p.Cid]; !ok || t != p.Type {
			return fmt.Sprintf("presence %s %v, sent %v", p.Cid, p.Type, t)
		}
	}
	return ""
}

// randomParts takes a random message's lists (randomMessage) and adds
// what it leaves out: empty blocks, duplicate presences, pending bytes.
func randomParts(rng *rand.Rand, blockSize int) wireParts {
	m := wirePartsOf(randomMessage(rng, blockSize))
	if rng.IntN(8) == 0 {
		b, _ := blocks.NewBlockWithCid(nil, cid.NewCidV1(cid.Raw, mustHash(nil, mh.SHA2_256)))
		m.blocks = append(m.blocks, b)
	}
	if len(m.presences) > 0 && rng.IntN(4) == 0 {
		m.presences = append(m.presences, bsmsg.BlockPresence{Cid: m.presences[0].Cid, Type: 1 - m.presences[0].Type})
	}
	switch rng.IntN(4) {
	case 0:
		m.pending = rng.Int32()
	case 1:
		m.pending = -rng.Int32()
	}
	return m
}

// The encoder writes, byte for byte, what protobuf marshals for boxo's
// message with the same lists, and boxo reads it back, under both
// versions and for frames of any size.
func TestReplyWireMatchesBoxo(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 2000 {
		m := randomParts(rng, 3000)
		frame := 1 + rng.IntN(4000)
		for _, v1 := range []bool{true, false} {
			t.Run(fmt.Sprintf("%d/v1=%v/frame=%d", i, v1, frame), func(t *testing.T) { checkReply(t, m, v1, frame) })
		}
	}
}

// A message of one block and nothing else is exactly boxo's ToNetV1 output
// (no map order to differ), and large blocks go out as whole frames
// straight from the block's buffer.
func TestReplyWireBlocksUncopied(t *testing.T) {
	data := bytes.Repeat([]byte("kitsune "), 256<<10/8)
	b, err := blocks.NewBlockWithCid(data, cid.NewCidV1(cid.Raw, mustHash(data, mh.SHA2_256)))
	if err != nil {
		t.Fatal(err)
	}
	msg := bsmsg.New(false)
	msg.AddBlock(b)
	var boxo bytes.Buffer
	if err := msg.ToNetV1(&boxo); err != nil {
		t.Fatal(err)
	}
	w, err := encodeReply(wirePartsOf(msg), true)
	if err != nil {
		t.Fatal(err)
	}
	var rec writesRecorder
	aliased := 0
	if err := w.writeTo(writerFunc(func(p []byte) (int, error) {
		if len(p) > 0 && &p[0] == &data[len(data)%replyFrame] {
			aliased += len(p)
		}
		return rec.Write(p)
	}), replyFrame); err != nil {
		t.Fatal(err)
	}
	if got := bytes.Join(rec.writes, nil); !bytes.Equal(got, boxo.Bytes()) {
		t.Fatalf("differs from ToNetV1 at byte %d", firstDiff(got, boxo.Bytes()))
	}
	// The header with the block's first len%frame bytes, then the
	// block's whole frames from its own buffer.
	if len(rec.writes) != 2 || aliased != len(data)-len(data)%replyFrame {
		sizes := []int{}
		for _, w := range rec.writes {
			sizes = append(sizes, len(w))
		}
		t.Fatalf("writes %v, %d bytes from the block's buffer", sizes, aliased)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// FuzzReplyWire checks random messages from the fuzzer's seeds.
func FuzzReplyWire(f *testing.F) {
	f.Add(uint64(1), uint64(2), uint16(100))
	f.Add(uint64(7), uint64(0), uint16(1))
	f.Fuzz(func(t *testing.T, s1, s2 uint64, frame uint16) {
		rng := rand.New(rand.NewPCG(s1, s2))
		m := randomParts(rng, 5000)
		checkReply(t, m, s1%2 == 0, 1+int(frame))
	})
}
