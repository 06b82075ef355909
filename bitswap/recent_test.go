package bitswap

import (
	"fmt"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

// answerOpen makes every node answer every want open on it with its
// block, as a Kubo node holding the content does.
func (kit *coreKit) answerOpen(byCid map[cid.Cid]blocks.Block) {
	for node, open := range kit.fx.open {
		var bs []blocks.Block
		for c := range open {
			bs = append(bs, byCid[c])
		}
		if len(bs) > 0 {
			kit.k.fromNode(node, bs, nil, nil, kit.now)
		}
	}
}

// A flash crowd: many peers want the same blocks, some while the first
// fetch is in flight, most after its block went out, in every order. The
// fleet is asked for each block once, and every peer gets every block.
func TestCoreHotContentFetchedOnce(t *testing.T) {
	const nPeers, nBlocks = 50, 65
	kit := newCoreKit(t, Config{}, testNode(1), testNode(2))
	forwarded := map[cid.Cid]int{}
	kit.fx.onWant = func(_ peer.ID, c cid.Cid, _ int32) { forwarded[c]++ }
	byCid := map[cid.Cid]blocks.Block{}
	var order []cid.Cid
	for i := range nBlocks {
		b := blockOf(t, fmt.Sprintf("hot-%d-", i), 256<<10)
		byCid[b.Cid()] = b
		order = append(order, b.Cid())
	}
	for p := range nPeers {
		// Each peer asks in its own order, as sessions do once they
		// have the root; every third step the fleet answers what is open.
		var es []bsmsg.Entry
		for i := range order {
			es = append(es, entry(order[(i*7+p*13)%len(order)], pb.Message_Wantlist_Block, true))
		}
		for i := 0; i < len(es); i += 16 {
			kit.k.fromPeer(testPeer(p), es[i:min(i+16, len(es))], false, kit.advance(time.Millisecond))
			if (p+i)%3 == 0 {
				kit.answerOpen(byCid)
			}
		}
	}
	kit.answerOpen(byCid)
	for c, n := range forwarded {
		if n != 1 {
			t.Errorf("%s asked of the fleet %d times", c, n)
		}
	}
	if len(forwarded) != nBlocks {
		t.Errorf("%d blocks asked of the fleet, want %d", len(forwarded), nBlocks)
	}
	for p := range nPeers {
		got := map[cid.Cid]bool{}
		for _, b := range kit.fx.blocks[testPeer(p)] {
			got[b.Cid()] = true
		}
		if len(got) != nBlocks || len(kit.fx.blocks[testPeer(p)]) != nBlocks {
			t.Fatalf("peer %d got %d blocks (%d distinct), want %d", p, len(kit.fx.blocks[testPeer(p)]), len(got), nBlocks)
		}
	}
	if s := new(Stats); true {
		kit.k.stats(s)
		if s.Wants != 0 {
			t.Errorf("%d wants left in the table", s.Wants)
		}
	}
}

// The recent blocks stay within their byte budget, go once unused for
// their time, and a want after that goes to the fleet again.
func TestCoreRecentBlocksBounded(t *testing.T) {
	kit := newCoreKit(t, Config{RecentBlockBytes: 64 << 10, RecentBlockTTL: 5 * time.Second}, testNode(1))
	p := testPeer(1)
	byCid := map[cid.Cid]blocks.Block{}
	var first blocks.Block
	for i := range 40 {
		b := blockOf(t, fmt.Sprintf("r%d-", i), 4<<10)
		if first == nil {
			first = b
		}
		byCid[b.Cid()] = b
		kit.k.fromPeer(p, []bsmsg.Entry{entry(b.Cid(), pb.Message_Wantlist_Block, true)}, false, kit.advance(time.Millisecond))
		kit.answerOpen(byCid)
		if kit.k.recent.bytes > 64<<10 {
			t.Fatalf("recent blocks hold %d bytes, over the 64 KiB budget", kit.k.recent.bytes)
		}
	}
	if n := kit.k.recent.len(); n != 16 {
		t.Fatalf("%d recent blocks of 4 KiB in 64 KiB", n)
	}
	// The first block was pushed out: asked of the fleet again.
	kit.k.fromPeer(p, []bsmsg.Entry{entry(first.Cid(), pb.Message_Wantlist_Block, true)}, false, kit.now)
	if _, open := kit.fx.open[testNode(1)][first.Cid()]; !open {
		t.Fatal("a block pushed out of the recent ones was not asked of the fleet")
	}
	kit.answerOpen(byCid)
	kit.k.tick(kit.advance(4 * time.Second))
	if kit.k.recent.len() == 0 {
		t.Fatal("recent blocks dropped before their time")
	}
	kit.k.tick(kit.advance(5 * time.Second))
	if n := kit.k.recent.len(); n != 0 || kit.k.recent.bytes != 0 {
		t.Fatalf("%d recent blocks (%d bytes) left after their time", n, kit.k.recent.bytes)
	}
}

// RecentBlockBytes < 0 keeps none, even though the config is filled twice
// (by New and by newCore).
func TestCoreRecentBlocksOff(t *testing.T) {
	cfg := Config{RecentBlockBytes: -1}
	cfg.fill()
	kit := newCoreKit(t, cfg, testNode(1))
	b := blockOf(t, "off", 1000)
	for range 2 {
		kit.k.fromPeer(testPeer(1), []bsmsg.Entry{entry(b.Cid(), pb.Message_Wantlist_Block, true)}, false, kit.advance(time.Millisecond))
		if _, open := kit.fx.open[testNode(1)][b.Cid()]; !open {
			t.Fatal("want not sent to the fleet with recent blocks off")
		}
		kit.answerOpen(map[cid.Cid]blocks.Block{b.Cid(): b})
	}
	if n := kit.k.recent.len(); n != 0 {
		t.Fatalf("%d recent blocks kept with RecentBlockBytes -1", n)
	}
}

// parsedBlocks gives the first block of each of n node messages, parsed
// as inbound.go parses them, with the messages' buffers: each message
// carries nBlocks blocks of size bytes and wants entries, as a node
// sends its own wants beside its answers.
func parsedBlocks(t *testing.T, seed string, n, nBlocks, size, wants int) (firsts []blocks.Block, frames [][]byte) {
	t.Helper()
	for i := range n {
		m := bsmsg.New(false)
		var first cid.Cid
		for j := range nBlocks {
			b := blockOf(t, fmt.Sprintf("%s%d-%d-", seed, i, j), size)
			if j == 0 {
				first = b.Cid()
			}
			m.AddBlock(b)
		}
		for j := range wants {
			m.AddEntry(blockOf(t, fmt.Sprintf("%sw%d-%d-", seed, i, j), 8).Cid(), 1, pb.Message_Wantlist_Block, true)
		}
		body, err := proto.Marshal(m.ToProtoV1())
		if err != nil {
			t.Fatal(err)
		}
		frame := make([]byte, len(body)) // as readFrame reads it
		copy(frame, body)
		msg, err := parseNodeMessage(frame)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range msg.blocks {
			if b.Cid() == first {
				firsts = append(firsts, b)
			}
		}
		frames = append(frames, frame)
	}
	return firsts, frames
}

// heldBy is the memory bs keep alive: each of frames one of them lies
// in, once, and the blocks' own buffers otherwise.
func heldBy(bs []blocks.Block, frames [][]byte) int {
	held, counted := 0, map[int]bool{}
	for _, b := range bs {
		found := false
		for i, f := range frames {
			if within(b.RawData(), f) {
				found = true
				if !counted[i] {
					counted[i] = true
					held += cap(f)
				}
			}
		}
		if !found {
			held += cap(b.RawData())
		}
	}
	return held
}

// Blocks parsed in place keep their whole message buffer alive; the
// recent blocks' budget bounds those buffers, not just the blocks' own
// bytes, whatever else the messages carried.
func TestCoreRecentBlocksBoundRetainedBuffers(t *testing.T) {
	const budget, blockSize = 64 << 10, 4 << 10
	for name, shape := range map[string]struct{ blocks, wants int }{
		"four blocks a message":        {blocks: 4},
		"one block and a node's wants": {blocks: 1, wants: 150},
		"two blocks a message":         {blocks: 2},
		"one block and a few wants":    {blocks: 1, wants: 40}, // parsed in place
	} {
		t.Run(name, func(t *testing.T) {
			kit := newCoreKit(t, Config{RecentBlockBytes: budget, RecentBlockTTL: time.Minute}, testNode(1))
			// Only the first block of each message was asked for, and is kept.
			firsts, frames := parsedBlocks(t, "f", 40, shape.blocks, blockSize, shape.wants)
			for _, b := range firsts {
				kit.k.fromPeer(testPeer(1), []bsmsg.Entry{entry(b.Cid(), pb.Message_Wantlist_Block, true)}, false, kit.advance(time.Millisecond))
				kit.k.fromNode(testNode(1), []blocks.Block{b}, nil, nil, kit.now)
			}
			var kept []blocks.Block
			for _, e := range kit.k.recent.m {
				kept = append(kept, e.Value.(*recentBlock).b)
			}
			held := heldBy(kept, frames)
			if held > budget {
				t.Errorf("%d recent blocks of %d bytes hold %d bytes of buffers alive, over the %d budget", len(kept), blockSize, held, budget)
			}
			if held < budget/2 {
				t.Errorf("%d recent blocks hold %d bytes: the budget (%d) is not used", len(kept), held, budget)
			}
			// And all of it goes once unused for the time.
			kit.k.tick(kit.advance(2 * time.Minute))
			if n := kit.k.recent.len(); n != 0 || kit.k.recent.bytes != 0 {
				t.Errorf("%d recent blocks (%d bytes) left after their time", n, kit.k.recent.bytes)
			}
		})
	}
}
