package bitswap

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// nopLink takes nothing: the wire test drains the outbox by hand.
type nopLink struct{}

func (nopLink) send(context.Context, wireParts) error { return nil }
func (nopLink) reset()                                {}

// fillOutbox queues random operations, presences and blocks in o, as the
// relay would (the newest op per CID, a block replacing a presence).
func fillOutbox(rng *rand.Rand, o *wantOutbox) {
	var pool []cid.Cid
	for range 1 + rng.IntN(40) {
		data := make([]byte, rng.IntN(64))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		switch rng.IntN(3) {
		case 0:
			pool = append(pool, cid.NewCidV0(mustHash(data, mh.SHA2_256)))
		case 1:
			pool = append(pool, cid.NewCidV1(cid.DagProtobuf, mustHash(data, mh.SHA2_256)))
		default:
			pool = append(pool, cid.NewCidV1(cid.Raw, mustHash(data, mh.BLAKE3)))
		}
	}
	pick := func() cid.Cid { return pool[rng.IntN(len(pool))] }
	o.mu.Lock()
	defer o.mu.Unlock()
	for range rng.IntN(30) {
		if rng.IntN(3) == 0 {
			o.ops[pick()] = wantOp{cancel: true}
		} else {
			o.ops[pick()] = wantOp{wantType: pb.Message_Wantlist_WantType(rng.IntN(2)), priority: rng.Int32() - rng.Int32()}
		}
	}
	for range rng.IntN(10) {
		o.presence[pick()] = pb.Message_BlockPresenceType(rng.IntN(2))
	}
	for range rng.IntN(4) {
		data := make([]byte, rng.IntN(3000))
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		b, _ := blocks.NewBlockWithCid(data, cid.NewCidV1(cid.Raw, mustHash(data, mh.SHA2_256)))
		if rng.IntN(2) == 0 {
			o.presence[b.Cid()] = pb.Message_Have // the block wins, in boxo's message too
		}
		o.blocks = append(o.blocks, b)
	}
}

// boxoMessageOf builds the message the outbox built with boxo before it
// wrote its own: the same calls, in the same order.
func boxoMessageOf(o *wantOutbox) bsmsg.BitSwapMessage {
	o.mu.Lock()
	defer o.mu.Unlock()
	msg := bsmsg.New(false)
	for c, op := range o.ops {
		if op.cancel {
			msg.Cancel(c)
		} else {
			msg.AddEntry(c, op.priority, op.wantType, true)
		}
	}
	for c, t := range o.presence {
		msg.AddBlockPresence(c, t)
	}
	for _, b := range o.blocks {
		msg.AddBlock(b)
	}
	return msg
}

// inOrderOf sorts boxo's lists (taken from its maps) into the order of
// ours, and fails when they hold different things.
func inOrderOf(t *testing.T, ours wireParts, msg bsmsg.BitSwapMessage) wireParts {
	t.Helper()
	theirs := wirePartsOf(msg)
	sortBy := func(n int, key func(int) cid.Cid, theirs int, theirKey func(int) cid.Cid) []int {
		if n != theirs {
			t.Fatalf("%d items, boxo's message has %d", n, theirs)
		}
		idx := make([]int, n)
		for i := range n {
			j := -1
			for k := range theirs {
				if theirKey(k) == key(i) {
					j = k
				}
			}
			if j < 0 {
				t.Fatalf("%s not in boxo's message", key(i))
			}
			idx[i] = j
		}
		return idx
	}
	var out wireParts
	for _, j := range sortBy(len(ours.wants), func(i int) cid.Cid { return ours.wants[i].Cid }, len(theirs.wants), func(k int) cid.Cid { return theirs.wants[k].Cid }) {
		out.wants = append(out.wants, theirs.wants[j])
	}
	for _, j := range sortBy(len(ours.presences), func(i int) cid.Cid { return ours.presences[i].Cid }, len(theirs.presences), func(k int) cid.Cid { return theirs.presences[k].Cid }) {
		out.presences = append(out.presences, theirs.presences[j])
	}
	for _, j := range sortBy(len(ours.blocks), func(i int) cid.Cid { return ours.blocks[i].Cid() }, len(theirs.blocks), func(k int) cid.Cid { return theirs.blocks[k].Cid() }) {
		out.blocks = append(out.blocks, theirs.blocks[j])
	}
	return out
}

func wireBytes(t *testing.T, m wireParts, v1 bool) []byte {
	t.Helper()
	w, err := encodeReply(m, v1)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := w.writeTo(&buf, writeFrame); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkWantWire drains a random outbox and checks the bytes it would
// write against boxo's encoding of the message the outbox built before.
func checkWantWire(t *testing.T, rng *rand.Rand) {
	o := newWantOutboxOn("node", nopLink{}, zaptest.NewLogger(t))
	fillOutbox(rng, o)
	msg := boxoMessageOf(o)
	o.mu.Lock()
	ours := o.drainLocked()
	empty := o.emptyLocked()
	o.mu.Unlock()
	if !empty {
		t.Fatal("a small queue was not drained whole")
	}
	theirs := inOrderOf(t, ours, msg)
	for _, v1 := range []bool{true, false} {
		body, err := proto.Marshal(protoOf(theirs, v1))
		if err != nil {
			t.Fatal(err)
		}
		want := append(protowire.AppendVarint(nil, uint64(len(body))), body...)
		got := wireBytes(t, ours, v1)
		if !bytes.Equal(got, want) {
			t.Fatalf("v1=%v: %d bytes, boxo's %d; first difference at %d", v1, len(got), len(want), firstDiff(got, want))
		}
		if len(ours.wants) <= 1 && len(ours.presences) <= 1 && len(ours.blocks) <= 1 {
			// One of each: boxo's own encoder, no ordering to agree on.
			var buf bytes.Buffer
			if v1 {
				err = msg.ToNetV1(&buf)
			} else {
				err = msg.ToNetV0(&buf)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, buf.Bytes()) {
				t.Fatalf("v1=%v: differs from boxo's ToNet at %d", v1, firstDiff(got, buf.Bytes()))
			}
		}
	}
}

// The wantlists written on the relay's own stream to a node are the bytes
// boxo's sender wrote for the same queue.
func TestWantWireMatchesBoxo(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 3000 {
		checkWantWire(t, rng)
	}
}

func FuzzWantWire(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Fuzz(func(t *testing.T, s1, s2 uint64) {
		checkWantWire(t, rand.New(rand.NewPCG(s1, s2)))
	})
}
