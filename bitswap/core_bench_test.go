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
)

// nopFx is an effects sink that keeps nothing, so a benchmark counts the
// core's own allocations.
type nopFx struct{}

func (nopFx) want(peer.ID, cid.Cid, pb.Message_Wantlist_WantType, int32) {}
func (nopFx) cancel(peer.ID, cid.Cid)                                    {}
func (nopFx) block(peer.ID, blocks.Block)                                {}
func (nopFx) presence(peer.ID, cid.Cid, pb.Message_BlockPresenceType)    {}
func (nopFx) backlogged(peer.ID) bool                                    { return false }
func (nopFx) queued(peer.ID) int                                         { return 0 }
func (nopFx) replyBudget(_ peer.ID, perPeer int) int                     { return perPeer }
func (nopFx) protect(peer.ID, bool)                                      {}
func (nopFx) fetch(uint64, peer.ID, cid.Cid)                             {}
func (nopFx) stopFetch(uint64)                                           {}

// One want-block from a peer, sent to a node, answered by its block: the
// core's work per relayed block.
// go test -run '^$' -bench CoreWantToBlock -benchmem ./bitswap
func BenchmarkCoreWantToBlock(b *testing.B) {
	down := newStaticDown()
	n1, n2 := testNode(1), testNode(2)
	down.add(n1)
	down.add(n2)
	k := newCore(Config{}, nopFx{}, down, new(Counters))
	now := time.Unix(1_700_000_000, 0)
	k.nodeUp(n1, now)
	k.nodeUp(n2, now)
	p := testPeer(1)
	const n = 4096
	bs := make([]blocks.Block, n)
	es := make([]bsmsg.Entry, n)
	for i := range bs {
		bs[i] = blockOf(b, fmt.Sprint(i), 64)
		es[i] = entry(bs[i].Cid(), pb.Message_Wantlist_Block, true)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		j := i % n
		k.fromPeer(p, es[j:j+1], false, now)
		node := k.wants[bs[j].Cid()].node
		k.fromNode(node, bs[j:j+1], nil, nil, now)
		i++
	}
}
