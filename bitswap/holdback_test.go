package bitswap

import (
	"fmt"
	"testing"
	"time"

	"github.com/ipfs/boxo/bitswap/client/wantlist"
	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// budgetFx is recFx with an outbox per peer that fills with the blocks
// sent to it and is backlogged at its budget, as replyOutbox is.
type budgetFx struct {
	*recFx
	budget  int
	blocksQ map[peer.ID][]blocks.Block
	bytes   map[peer.ID]int
}

func (f *budgetFx) block(to peer.ID, b blocks.Block) {
	f.recFx.block(to, b)
	f.blocksQ[to] = append(f.blocksQ[to], b)
	f.bytes[to] += heldBytes(b)
}

func (f *budgetFx) backlogged(to peer.ID) bool             { return f.bytes[to] >= f.budget }
func (f *budgetFx) queued(to peer.ID) int                  { return f.bytes[to] }
func (f *budgetFx) replyBudget(_ peer.ID, perPeer int) int { return perPeer }

// drain writes n of to's queued blocks and reports whether the outbox
// went under half its budget (when replyOutbox calls drained).
func (f *budgetFx) drain(to peer.ID, n int) bool {
	was := f.bytes[to] >= f.budget/2
	for ; n > 0 && len(f.blocksQ[to]) > 0; n-- {
		f.bytes[to] -= heldBytes(f.blocksQ[to][0])
		f.blocksQ[to] = f.blocksQ[to][1:]
	}
	return was && f.bytes[to] < f.budget/2
}

// A peer that wants far more than its outbox holds, from a fast node,
// gets every block once and the node sends each once: its wants go out
// as room frees, most urgent first, instead of all at once with the
// blocks past the budget dropped and fetched again (7653 blocks from the
// node for 5668 relayed in kitsune-bench's scenario 1 before).
func TestHeldBackWantsFetchedOnce(t *testing.T) {
	const size, n = 4 << 10, 64
	for _, drainPerRound := range []int{1, 3, 16} {
		t.Run(fmt.Sprintf("drain %d per round", drainPerRound), func(t *testing.T) {
			n1 := testNode(1)
			cfg := Config{PeerBufferBytes: 16 * size}
			kit := newCoreKit(t, cfg, n1)
			fx := &budgetFx{recFx: kit.fx, budget: cfg.PeerBufferBytes, blocksQ: map[peer.ID][]blocks.Block{}, bytes: map[peer.ID]int{}}
			kit.k.fx = fx
			p := testPeer(1)
			byCid := make(map[cid.Cid]blocks.Block, n)
			var es []bsmsg.Entry
			for i := range n {
				b := blockOf(t, fmt.Sprintf("held-%d-", i), size)
				byCid[b.Cid()] = b
				es = append(es, bsmsg.Entry{Entry: wantlist.Entry{Cid: b.Cid(), Priority: int32(n - i), WantType: pb.Message_Wantlist_Block}})
			}
			kit.k.fromPeer(p, es, false, kit.now)
			// The first out is the most urgent, alone: with no block seen
			// yet, the peer's blocks are taken to be 256 KiB, more than
			// its 64 KiB outbox holds.
			for i, e := range es {
				if _, out := kit.fx.open[n1][e.Cid]; out != (i == 0) {
					t.Fatalf("want %d (priority %d) at the node: %v", i, e.Priority, out)
				}
			}
			fromNode, peak := 0, 0
			for round := 0; round < 10*n && len(kit.fx.blocks[p]) < n; round++ {
				open := kit.fx.open[n1]
				peak = max(peak, len(open))
				var bs []blocks.Block
				for c := range open {
					bs = append(bs, byCid[c])
					delete(open, c) // Kubo forgets a want once it sent the block
				}
				fromNode += len(bs)
				kit.k.fromNode(n1, bs, nil, nil, kit.advance(time.Millisecond))
				if fx.drain(p, drainPerRound) {
					kit.k.resumeDeferred(p, kit.now)
				}
				kit.k.tick(kit.advance(time.Millisecond))
			}
			got := make(map[cid.Cid]int)
			for _, b := range kit.fx.blocks[p] {
				got[b.Cid()]++
			}
			for c := range byCid {
				if got[c] != 1 {
					t.Errorf("block %s sent to the peer %d times, want once", c, got[c])
				}
			}
			if fromNode != n {
				t.Errorf("the node sent %d blocks for %d wanted: some were dropped and fetched again", fromNode, n)
			}
			if peak > 16 {
				t.Errorf("up to %d of the peer's wants out at the node at once, its outbox holds 16 blocks", peak)
			}
			if u := kit.k.peers[p]; len(u.deferred) != 0 || len(u.wants) != 0 {
				t.Errorf("after every block: %d wants, %d deferred", len(u.wants), len(u.deferred))
			}
		})
	}
}

// A want held back and then cancelled is never sent; one held when its
// peer leaves goes with the peer.
func TestHeldBackWantsCancelled(t *testing.T) {
	n1 := testNode(1)
	// Room for 8 blocks of the size assumed before the first arrives.
	const minWantsOut = 8
	kit := newCoreKit(t, Config{PeerBufferBytes: minWantsOut * defaultBlockEst}, n1)
	p := testPeer(1)
	var cs []cid.Cid
	var es []bsmsg.Entry
	for i := range 20 {
		c := blockOf(t, fmt.Sprintf("cancel-%d-", i), 64).Cid()
		cs = append(cs, c)
		es = append(es, bsmsg.Entry{Entry: wantlist.Entry{Cid: c, Priority: int32(100 - i), WantType: pb.Message_Wantlist_Block}})
	}
	kit.k.fromPeer(p, es, false, kit.now)
	if got := len(kit.fx.open[n1]); got != minWantsOut {
		t.Fatalf("%d wants at the node, want %d (the rest held back)", got, minWantsOut)
	}
	u := kit.k.peers[p]
	if len(u.deferred) != 20-minWantsOut {
		t.Fatalf("%d held back, want %d", len(u.deferred), 20-minWantsOut)
	}
	var cancels []bsmsg.Entry
	for _, c := range cs[minWantsOut:] {
		cancels = append(cancels, cancelEntry(c))
	}
	kit.k.fromPeer(p, cancels, false, kit.advance(time.Millisecond))
	kit.k.tick(kit.advance(time.Second))
	if len(u.deferred) != 0 || len(u.wants) != minWantsOut {
		t.Errorf("after the cancels: %d wants, %d deferred", len(u.wants), len(u.deferred))
	}
	for _, c := range cs[minWantsOut:] {
		if _, ok := kit.fx.open[n1][c]; ok {
			t.Errorf("cancelled held want %s sent to the node", c)
		}
	}
	// Held again, then the peer leaves.
	kit.k.fromPeer(p, es[minWantsOut:], false, kit.advance(time.Millisecond))
	if len(u.deferred) != 20-minWantsOut {
		t.Fatalf("%d held back again, want %d", len(u.deferred), 20-minWantsOut)
	}
	kit.k.peerGone(p, kit.advance(time.Millisecond))
	if kit.k.peers[p] != nil || len(kit.fx.open[n1]) != 0 {
		t.Errorf("after the peer left: peer kept %v, %d wants at the node", kit.k.peers[p] != nil, len(kit.fx.open[n1]))
	}
}
