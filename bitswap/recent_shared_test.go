package bitswap

import (
	"fmt"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
)

// With one upstream peer, the recent blocks keep no block whose bytes are
// a pooled node buffer: that peer was just sent it, and keeping it only
// held the buffer back from the next messages. Small blocks (in buffers
// of their own) are kept as before, and once a second peer is there the
// pooled ones are kept again, for the crowd.
func TestRecentKeepsPooledBuffersOnlyForACrowd(t *testing.T) {
	e := newEnv(t, Config{RecentBlockBytes: 8 << 20})
	var big []blocks.Block
	for i := range 6 {
		big = append(big, blockOf(t, fmt.Sprintf("recent shared %d ", i), 100<<10))
	}
	small := blockOf(t, "recent shared small ", 2<<10)
	e.addKuboLikeNode(append([]blocks.Block{small}, big...)...)

	got := func(p *rawPeer, bs ...blocks.Block) func() bool {
		return func() bool {
			for _, b := range bs {
				if _, n := p.got.block(b.Cid()); n == 0 {
					return false
				}
			}
			return true
		}
	}
	kept := func() string { return fmt.Sprintf("%d recent blocks", e.stats().RecentBlocks) }

	a := e.newRawPeer()
	a.wantBlock(big[0].Cid(), big[1].Cid(), small.Cid())
	eventually(t, 5*time.Second, func() string { return "peer a's blocks; " + kept() }, got(a, big[0], big[1], small))
	// The core keeps a block before it queues it for the peer: by now
	// every put is done.
	if n := e.stats().RecentBlocks; n != 1 {
		t.Fatalf("one peer: %d recent blocks, want 1 (the small one only)", n)
	}
	if n := e.relay.Counters().NodeBuffersNew.Load() + e.relay.Counters().NodeBuffersReused.Load(); n < 2 {
		t.Fatalf("%d pooled node buffers used: the big blocks should come in pooled buffers", n)
	}

	b := e.newRawPeer()
	b.wantBlock(big[2].Cid())
	eventually(t, 5*time.Second, func() string { return "peer b's block; " + kept() }, got(b, big[2]))
	a.wantBlock(big[3].Cid())
	eventually(t, 5*time.Second, func() string { return "peer a's second block; " + kept() }, got(a, big[3]))
	if n := e.stats().RecentBlocks; n != 3 {
		t.Fatalf("two peers: %d recent blocks, want 3 (the small one and the two big ones relayed since)", n)
	}
	// What is kept answers the other peer without the fleet.
	hits := e.relay.Counters().RecentHits.Load()
	b.wantBlock(big[3].Cid())
	eventually(t, 5*time.Second, func() string { return "peer b's block from the recent ones; " + kept() }, got(b, big[3]))
	if e.relay.Counters().RecentHits.Load() != hits+1 {
		t.Fatalf("recent hits %d, want %d", e.relay.Counters().RecentHits.Load(), hits+1)
	}
}
