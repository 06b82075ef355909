package bitswap

import (
	"net/netip"
	"testing"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// fakePeers is upstreamPeers over a fixed table.
type fakePeers map[netip.Addr][]peer.ID

func (f fakePeers) PeersAt(a netip.Addr) []peer.ID { return f[a] }

// recReverse records what reverse sessions send.
type recReverse struct {
	wants   map[peer.ID]map[cid.Cid]pb.Message_Wantlist_WantType
	cancels map[peer.ID][]cid.Cid
	dont    map[peer.ID][]cid.Cid
	blocks  map[peer.ID][]cid.Cid
}

func newRecReverse() *recReverse {
	return &recReverse{wants: make(map[peer.ID]map[cid.Cid]pb.Message_Wantlist_WantType),
		cancels: make(map[peer.ID][]cid.Cid), dont: make(map[peer.ID][]cid.Cid), blocks: make(map[peer.ID][]cid.Cid)}
}

func (r *recReverse) wantUpstream(p peer.ID, c cid.Cid, t pb.Message_Wantlist_WantType) {
	if r.wants[p] == nil {
		r.wants[p] = make(map[cid.Cid]pb.Message_Wantlist_WantType)
	}
	r.wants[p][c] = t
}
func (r *recReverse) cancelUpstream(p peer.ID, c cid.Cid)  { r.cancels[p] = append(r.cancels[p], c) }
func (r *recReverse) dontHaveNode(n peer.ID, cs []cid.Cid) { r.dont[n] = append(r.dont[n], cs...) }
func (r *recReverse) blockNode(n peer.ID, b blocks.Block)  { r.blocks[n] = append(r.blocks[n], b.Cid()) }

// A reverse session without a network: the root goes to the peer at the
// caller's address only, its block authorises its links, a link with no
// peer at the address is refused, and ending the session empties every
// table.
func TestReverseSetFollowsTheCallersDAG(t *testing.T) {
	caller := netip.MustParseAddr("203.0.113.5")
	at, elsewhere := testPeer(1), testPeer(2)
	node := testNode(1)
	root, child := blockOf(t, "root", 100), blockOf(t, "child", 100)
	out := newRecReverse()
	v := newReverseSet(fakePeers{caller: {at}, netip.MustParseAddr("198.51.100.9"): {elsewhere}}, out, new(Counters))

	s := v.begin(root.Cid(), node, caller)
	if v.sessionFor(node, child.Cid()) != nil {
		t.Fatal("a link authorised before its parent arrived")
	}
	v.want(node, entry(root.Cid(), pb.Message_Wantlist_Block, true), v.sessionFor(node, root.Cid()))
	if out.wants[at][root.Cid()] != pb.Message_Wantlist_Block || len(out.wants[elsewhere]) != 0 {
		t.Fatalf("root asked of %v; only the peer at the caller's address should be", out.wants)
	}
	msg := bsmsg.New(false)
	msg.AddBlock(root)
	v.replies(at, msg, map[cid.Cid][]cid.Cid{root.Cid(): {child.Cid()}})
	if len(out.blocks[node]) != 1 || v.sessionFor(node, child.Cid()) == nil {
		t.Fatalf("root not relayed (%v) or its link not authorised", out.blocks[node])
	}
	// The caller left: nobody at its address any more.
	v.peers = fakePeers{}
	v.want(node, entry(child.Cid(), pb.Message_Wantlist_Block, true), v.sessionFor(node, child.Cid()))
	if len(out.dont[node]) != 1 || out.dont[node][0] != child.Cid() || len(out.wants[elsewhere]) != 0 {
		t.Fatalf("child: DONT_HAVEs %v, wants %v", out.dont[node], out.wants)
	}
	v.end(s)
	if len(v.sessions) != 0 || len(v.auth) != 0 || len(v.wants) != 0 {
		t.Fatalf("tables left: %d sessions, %d authorised, %d wants", len(v.sessions), len(v.auth), len(v.wants))
	}
}
