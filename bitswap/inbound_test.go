package bitswap

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"unsafe"

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

// sameNodeMessage describes how two parsed messages differ ("" when they
// do not). Order does not count: boxo's message keeps maps.
func sameNodeMessage(want, got nodeMessage) string {
	key := func(e bsmsg.Entry) string {
		return fmt.Sprintf("%s p%d t%d c%v d%v", e.Cid, e.Priority, e.WantType, e.Cancel, e.SendDontHave)
	}
	var ws, gs []string
	for _, e := range want.wants {
		ws = append(ws, key(e))
	}
	for _, e := range got.wants {
		gs = append(gs, key(e))
	}
	if d := sameSet("wants", ws, gs); d != "" {
		return d
	}
	if want.full != got.full {
		return fmt.Sprintf("full: boxo %v, Kitsune %v", want.full, got.full)
	}
	blockKey := func(bs []blocks.Block) []string {
		var out []string
		for _, b := range bs {
			out = append(out, fmt.Sprintf("%s %x", b.Cid(), b.RawData()))
		}
		return out
	}
	if d := sameSet("blocks", blockKey(want.blocks), blockKey(got.blocks)); d != "" {
		return d
	}
	cids := func(cs []cid.Cid) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.String())
		}
		return out
	}
	if d := sameSet("haves", cids(want.haves), cids(got.haves)); d != "" {
		return d
	}
	return sameSet("dont-haves", cids(want.dontHaves), cids(got.dontHaves))
}

func sameSet(what string, want, got []string) string {
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(want, got) {
		return fmt.Sprintf("%s: boxo %q, Kitsune %q", what, want, got)
	}
	return ""
}

// boxoParse is what bsnet does with a message body.
func boxoParse(body []byte) (nodeMessage, error) {
	framed := protowire.AppendVarint(nil, uint64(len(body)))
	framed = append(framed, body...)
	m, _, err := bsmsg.FromMsgReader(msgio.NewVarintReaderSize(bytes.NewReader(framed), network.MessageSizeMax))
	if err != nil {
		return nodeMessage{}, err
	}
	return nodeMessageOf(m), nil
}

// randomMessage builds a message as a node could send it: wants (some for
// the same CID, some cancels), blocks under several CID prefixes, HAVEs
// and DONT_HAVEs (some for the same CID).
func randomMessage(rng *rand.Rand, blockSize int) bsmsg.BitSwapMessage {
	m := bsmsg.New(rng.IntN(4) == 0)
	var pool []cid.Cid
	for range 1 + rng.IntN(40) {
		data := make([]byte, rng.IntN(64))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		pool = append(pool, cid.NewCidV1(cid.Raw, mustHash(data, mh.SHA2_256)))
	}
	pick := func() cid.Cid { return pool[rng.IntN(len(pool))] }
	for range rng.IntN(30) {
		switch rng.IntN(3) {
		case 0:
			m.Cancel(pick())
		default:
			m.AddEntry(pick(), rng.Int32()-rng.Int32(), pb.Message_Wantlist_WantType(rng.IntN(2)), rng.IntN(2) == 0)
		}
	}
	for range rng.IntN(5) {
		data := make([]byte, rng.IntN(blockSize+1))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		var c cid.Cid
		switch rng.IntN(3) {
		case 0:
			c = cid.NewCidV0(mustHash(data, mh.SHA2_256))
		case 1:
			c = cid.NewCidV1(cid.DagProtobuf, mustHash(data, mh.SHA2_256))
		default:
			c = cid.NewCidV1(cid.Raw, mustHash(data, mh.BLAKE3))
		}
		b, _ := blocks.NewBlockWithCid(data, c)
		m.AddBlock(b)
	}
	for range rng.IntN(30) {
		m.AddBlockPresence(pick(), pb.Message_BlockPresenceType(rng.IntN(2)))
	}
	return m
}

func mustHash(data []byte, code uint64) mh.Multihash {
	h, err := mh.Sum(data, code, -1)
	if err != nil {
		panic(err)
	}
	return h
}

// Kitsune's parser gives what boxo's gives for every message boxo's
// encoder writes (Bitswap 1.1+ and 1.0.0 framing), duplicates included.
func TestParseNodeMessageMatchesBoxo(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		m := randomMessage(rng, 3000)
		for _, enc := range []*pb.Message{m.ToProtoV1(), m.ToProtoV0()} {
			body, err := proto.Marshal(enc)
			if err != nil {
				t.Fatal(err)
			}
			// Encoders write a wantlist once; a second one merges.
			if rng.IntN(4) == 0 {
				body = append(body, body...)
			}
			want, werr := boxoParse(body)
			got, gerr := parseNodeMessage(bytes.Clone(body))
			if (werr == nil) != (gerr == nil) {
				t.Fatalf("message %d: boxo %v, Kitsune %v", i, werr, gerr)
			}
			if d := sameNodeMessage(want, got); d != "" {
				t.Fatalf("message %d: %s", i, d)
			}
		}
	}
}

// Malformed messages fail as they do in boxo; unknown fields and known
// ones with another wire type are skipped, as protobuf does.
func TestParseNodeMessageBadInput(t *testing.T) {
	c := cid.NewCidV1(cid.Raw, mustHash([]byte("x"), mh.SHA2_256))
	tag := func(b []byte, n protowire.Number, t protowire.Type) []byte { return protowire.AppendTag(b, n, t) }
	bytesField := func(b []byte, n protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(tag(b, n, protowire.BytesType), v)
	}
	entry := bytesField(nil, fEntryBlock, c.Bytes())
	presence := protowire.AppendVarint(tag(bytesField(nil, fPresenceCid, c.Bytes()), fPresenceType, protowire.VarintType), 1)
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"empty", nil},
		{"truncated tag", []byte{0x0a}},
		{"truncated length", []byte{0x0a, 0x80}},
		{"length past the end", []byte{0x0a, 0x05, 0x01}},
		{"field number zero", []byte{0x02, 0x00}},
		{"field number past 2^29-1", append(protowire.AppendTag(nil, protowire.MaxValidNumber+1, protowire.Fixed64Type), make([]byte, 8)...)},
		{"end group at top level", protowire.AppendTag(nil, 9, protowire.EndGroupType)},
		{"entry without cid", bytesField(nil, fMessageWantlist, bytesField(nil, fWantlistEntries, protowire.AppendVarint(tag(nil, fEntryPriority, protowire.VarintType), 3)))},
		{"entry with a bad cid", bytesField(nil, fMessageWantlist, bytesField(nil, fWantlistEntries, bytesField(nil, fEntryBlock, []byte{1, 2, 3})))},
		{"good entry", bytesField(nil, fMessageWantlist, bytesField(nil, fWantlistEntries, entry))},
		{"wantlist as a varint", protowire.AppendVarint(tag(nil, fMessageWantlist, protowire.VarintType), 7)},
		{"unknown fields", protowire.AppendFixed64(tag(bytesField(bytesField(nil, 99, []byte("?")), fMessageBlockPresences, presence), 98, protowire.Fixed64Type), 1)},
		{"payload without prefix", bytesField(nil, fMessagePayload, bytesField(nil, fBlockData, []byte("x")))},
		{"payload with a bad prefix", bytesField(nil, fMessagePayload, bytesField(bytesField(nil, fBlockPrefix, []byte{1, 0x55, 0xff}), fBlockData, []byte("x")))},
		{"presence without cid", bytesField(nil, fMessageBlockPresences, protowire.AppendVarint(tag(nil, fPresenceType, protowire.VarintType), 1))},
		{"presence of an unknown type", bytesField(nil, fMessageBlockPresences, protowire.AppendVarint(tag(bytesField(nil, fPresenceCid, c.Bytes()), fPresenceType, protowire.VarintType), 5))},
		{"v0 block", bytesField(nil, fMessageBlocks, []byte("a v0 block"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, werr := boxoParse(tc.body)
			got, gerr := parseNodeMessage(bytes.Clone(tc.body))
			if (werr == nil) != (gerr == nil) {
				t.Fatalf("boxo: %v; Kitsune: %v", werr, gerr)
			}
			if d := sameNodeMessage(want, got); d != "" {
				t.Fatal(d)
			}
		})
	}
}

// within reports whether b lies inside frame's memory.
func within(b, frame []byte) bool {
	if len(b) == 0 {
		return false
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(frame)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	return p >= start && p < start+uintptr(len(frame))
}

// A large block's bytes are the frame's, not a copy; small blocks beside
// it are copied, so keeping one of them does not keep the whole frame.
func TestParseNodeMessageKeepsLargePayloadsInPlace(t *testing.T) {
	m := bsmsg.New(false)
	big := bytes.Repeat([]byte("k"), 256<<10)
	small := []byte("a small block")
	for _, data := range [][]byte{big, small} {
		b, _ := blocks.NewBlockWithCid(data, cid.NewCidV1(cid.Raw, mustHash(data, mh.SHA2_256)))
		m.AddBlock(b)
	}
	body, err := proto.Marshal(m.ToProtoV1())
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseNodeMessage(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.blocks) != 2 {
		t.Fatalf("%d blocks", len(got.blocks))
	}
	for _, b := range got.blocks {
		in := within(b.RawData(), body)
		switch large := len(b.RawData()) == len(big); {
		case large && !in:
			t.Error("the 256 KiB block was copied out of the frame")
		case !large && in:
			t.Error("the small block keeps the 256 KiB frame alive")
		}
	}
}

// benchBodies are a message as Kubo sends a large block (one 256 KiB
// block), and as it batches small ones (16 blocks of 1 KiB).
func benchBodies(b *testing.B) map[string][]byte {
	out := map[string][]byte{}
	for name, sizes := range map[string][]int{"1x256KiB": {256 << 10}, "16x1KiB": slices.Repeat([]int{1 << 10}, 16)} {
		m := bsmsg.New(false)
		for i, n := range sizes {
			data := bytes.Repeat([]byte{byte(i)}, n)
			data[0] = byte(i >> 8)
			blk, _ := blocks.NewBlockWithCid(data, cid.NewCidV0(mustHash(data, mh.SHA2_256)))
			m.AddBlock(blk)
		}
		body, err := proto.Marshal(m.ToProtoV1())
		if err != nil {
			b.Fatal(err)
		}
		out[name] = body
	}
	return out
}

// go test -run '^$' -bench ParseNodeMessage -benchmem ./bitswap
func BenchmarkParseNodeMessage(b *testing.B) {
	for name, body := range benchBodies(b) {
		b.Run("boxo/"+name, func(b *testing.B) {
			framed := protowire.AppendVarint(nil, uint64(len(body)))
			framed = append(framed, body...)
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				// bsnet's path: msgio's pooled buffer, then the decoder.
				if _, _, err := bsmsg.FromMsgReader(msgio.NewVarintReaderSize(bytes.NewReader(framed), network.MessageSizeMax)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("kitsune/"+name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				// The frame buffer readFrame allocates for each message.
				frame := make([]byte, len(body))
				copy(frame, body)
				if _, err := parseNodeMessage(frame); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Kitsune's parser and boxo's agree on any bytes: both fail, or both give
// the same message. (FuzzRelayMessages checks this too, through a whole
// relay; this one runs thousands of times faster.)
// go test -run '^$' -fuzz FuzzParseNodeMessage ./bitswap
func FuzzParseNodeMessage(f *testing.F) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 20 {
		body, err := proto.Marshal(randomMessage(rng, 300).ToProtoV1())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		want, werr := boxoParse(body)
		got, gerr := parseNodeMessage(bytes.Clone(body))
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("boxo: %v; Kitsune: %v", werr, gerr)
		}
		if d := sameNodeMessage(want, got); d != "" {
			t.Fatal(d)
		}
	})
}
