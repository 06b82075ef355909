package bitswap

import (
	"net/netip"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	manet "github.com/multiformats/go-multiaddr/net"
	"go.uber.org/zap"
)

// Reverse sessions let the fleet fetch a DAG *from* upstream peers: the
// js-ipfs preload call. Kitsune relays one way by default; a refs call on
// the preload port opens a session that authorises its root CID for the
// node the call went to, and each block that comes back authorises its
// links, so exactly that DAG can flow downstream and nothing else.

// Limits of the reverse direction.
const (
	// maxSessions bounds open sessions; past it a refs call still runs,
	// one way only.
	maxSessions = 1024
	// maxSessionCIDs bounds the CIDs one session authorises.
	maxSessionCIDs = 1 << 18
)

// reverseSet holds the sessions and the fleet's wants they let through.
// Its methods run under the relay's lock; it writes only through out and
// learns who the caller could be only through peers.
type reverseSet struct {
	peers    upstreamPeers
	out      reverseOut
	counters *Counters

	sessions map[*session]struct{}
	auth     map[cid.Cid]map[*session]struct{}
	wants    map[cid.Cid]*rwant
}

// reverseOut is how reverse sessions talk: Kitsune's own wants to
// upstream peers, and answers to the fleet nodes that asked.
type reverseOut interface {
	wantUpstream(p peer.ID, c cid.Cid, t pb.Message_Wantlist_WantType)
	// cancelUpstream withdraws a want sent with wantUpstream, if the
	// peer is still there.
	cancelUpstream(p peer.ID, c cid.Cid)
	dontHaveNode(node peer.ID, cs []cid.Cid)
	blockNode(node peer.ID, b blocks.Block)
}

func newReverseSet(peers upstreamPeers, out reverseOut, counters *Counters) *reverseSet {
	return &reverseSet{
		peers: peers, out: out, counters: counters,
		sessions: make(map[*session]struct{}),
		auth:     make(map[cid.Cid]map[*session]struct{}),
		wants:    make(map[cid.Cid]*rwant),
	}
}

type session struct {
	root   cid.Cid
	node   peer.ID
	client netip.Addr
	cids   map[cid.Cid]struct{}
}

// rwant is one CID a fleet node wants from upstream.
type rwant struct {
	c      cid.Cid
	nodes  map[peer.ID]wanter // fleet nodes waiting for it
	asked  map[peer.ID]bool   // upstream peers asked; true once want-block went
	haves  map[peer.ID]struct{}
	dont   map[peer.ID]struct{}
	placed bool // a want-block is out
}

// BeginReverse opens a reverse session for root on node, for a preload
// call from client. The returned end closes it after grace; wants still
// open then are cancelled upstream.
func (r *Relay) BeginReverse(root cid.Cid, node peer.ID, client netip.Addr, grace time.Duration) (end func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.rev.begin(root, node, client)
	if s == nil {
		return func() {}
	}
	ended := false
	return func() {
		r.mu.Lock()
		if ended {
			r.mu.Unlock()
			return
		}
		ended = true
		r.mu.Unlock()
		if grace <= 0 {
			r.endSession(s)
			return
		}
		time.AfterFunc(grace, func() { r.endSession(s) })
	}
}

func (v *reverseSet) authorise(s *session, c cid.Cid) {
	if len(s.cids) >= maxSessionCIDs {
		return
	}
	if _, ok := s.cids[c]; ok {
		return
	}
	s.cids[c] = struct{}{}
	set := v.auth[c]
	if set == nil {
		set = make(map[*session]struct{}, 1)
		v.auth[c] = set
	}
	set[s] = struct{}{}
}

func (r *Relay) endSession(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rev.end(s)
}

// begin opens a session, or returns nil when there are too many.
func (v *reverseSet) begin(root cid.Cid, node peer.ID, client netip.Addr) *session {
	if len(v.sessions) >= maxSessions || node == "" {
		return nil
	}
	s := &session{root: root, node: node, client: client.Unmap(), cids: make(map[cid.Cid]struct{})}
	v.sessions[s] = struct{}{}
	v.authorise(s, root)
	return s
}

// end closes a session; wants no session covers any more are withdrawn.
func (v *reverseSet) end(s *session) {
	if _, ok := v.sessions[s]; !ok {
		return
	}
	delete(v.sessions, s)
	for c := range s.cids {
		if set := v.auth[c]; set != nil {
			delete(set, s)
			if len(set) == 0 {
				delete(v.auth, c)
			}
		}
	}
	// Wants no session covers any more are withdrawn upstream.
	for c, rw := range v.wants {
		for n := range rw.nodes {
			if v.sessionFor(n, c) == nil {
				delete(rw.nodes, n)
			}
		}
		if len(rw.nodes) == 0 {
			v.drop(rw)
			delete(v.wants, c)
		}
	}
}

// sessionForLocked returns a session that authorises node to want c.
func (v *reverseSet) sessionFor(node peer.ID, c cid.Cid) *session {
	for s := range v.auth[c] {
		if s.node == node {
			return s
		}
	}
	return nil
}

// reverseWantLocked handles a want from a fleet node for an authorised CID:
// it goes first to the upstream peers at the refs caller's address, and
// otherwise as want-have to every upstream peer, want-block to the first
// that says HAVE.
func (v *reverseSet) want(node peer.ID, e bsmsg.Entry, s *session) {
	rw := v.wants[e.Cid]
	if rw != nil {
		rw.nodes[node] = wanter{wantType: e.WantType, sendDontHave: e.SendDontHave}
		return
	}
	rw = &rwant{
		c:     e.Cid,
		nodes: map[peer.ID]wanter{node: {wantType: e.WantType, sendDontHave: e.SendDontHave}},
		asked: make(map[peer.ID]bool),
		haves: make(map[peer.ID]struct{}),
		dont:  make(map[peer.ID]struct{}),
	}
	// Only a peer the preload caller could be is asked: one connected
	// from the caller's address. Asking every upstream peer told each of
	// them which DAG the caller was adding.
	same := v.peers.PeersAt(s.client)
	if len(same) == 0 {
		v.miss(rw)
		return
	}
	for _, p := range same {
		v.out.wantUpstream(p, e.Cid, pb.Message_Wantlist_Block)
		rw.asked[p] = true
	}
	rw.placed = true
	v.wants[e.Cid] = rw
	v.counters.ReverseWants.Add(1)
}

// upstreamPeers finds the upstream peers a preload caller could be.
type upstreamPeers interface {
	// PeersAt lists the peers with a connection from addr.
	PeersAt(addr netip.Addr) []peer.ID
}

// hostPeers is upstreamPeers over the front host's connections.
type hostPeers struct{ n network.Network }

func (h hostPeers) PeersAt(addr netip.Addr) []peer.ID {
	if !addr.IsValid() {
		return nil
	}
	var out []peer.ID
	for _, p := range h.n.Peers() {
		if peerAt(h.n, p, addr) {
			out = append(out, p)
		}
	}
	return out
}

// peerAt reports whether any connection to p comes from addr.
func peerAt(n network.Network, p peer.ID, addr netip.Addr) bool {
	for _, c := range n.ConnsToPeer(p) {
		ip, err := manet.ToIP(c.RemoteMultiaddr())
		if err != nil {
			continue
		}
		if a, ok := netip.AddrFromSlice(ip); ok && a.Unmap() == addr {
			return true
		}
	}
	return false
}

// reverseMissLocked answers the fleet nodes that asked for DONT_HAVE.
func (v *reverseSet) miss(rw *rwant) {
	for n, wr := range rw.nodes {
		if wr.sendDontHave {
			v.out.dontHaveNode(n, []cid.Cid{rw.c})
		}
	}
}

// dropReverseLocked cancels rw at every upstream peer it was sent to.
func (v *reverseSet) drop(rw *rwant) {
	for p := range rw.asked {
		v.out.cancelUpstream(p, rw.c)
	}
}

func (v *reverseSet) cancel(node peer.ID, c cid.Cid) {
	rw := v.wants[c]
	if rw == nil {
		return
	}
	delete(rw.nodes, node)
	if len(rw.nodes) == 0 {
		v.drop(rw)
		delete(v.wants, c)
	}
}

// fromUpstreamReplies handles blocks and presences an upstream peer sent in
// answer to reverse wants; anything else from upstream is ignored.
func (v *reverseSet) replies(p peer.ID, msg bsmsg.BitSwapMessage, links map[cid.Cid][]cid.Cid) {
	for _, b := range msg.Blocks() {
		rw := v.wants[b.Cid()]
		if rw == nil {
			continue
		}
		v.block(rw, b, links[b.Cid()])
	}
	for _, c := range msg.Haves() {
		rw := v.wants[c]
		if rw == nil {
			continue
		}
		if _, ok := rw.asked[p]; !ok {
			continue
		}
		rw.haves[p] = struct{}{}
		if !rw.placed {
			rw.placed = true
			rw.asked[p] = true
			v.out.wantUpstream(p, c, pb.Message_Wantlist_Block)
		}
	}
	for _, c := range msg.DontHaves() {
		rw := v.wants[c]
		if rw == nil {
			continue
		}
		if _, ok := rw.asked[p]; !ok {
			continue
		}
		rw.dont[p] = struct{}{}
		delete(rw.haves, p)
		v.retry(rw, p)
	}
}

// reverseRetryLocked moves a want-block off peer p that cannot serve it,
// to another peer that said HAVE, or gives up when every peer asked said
// DONT_HAVE.
func (v *reverseSet) retry(rw *rwant, p peer.ID) {
	if rw.asked[p] {
		rw.placed = false
		for q := range rw.haves {
			rw.placed = true
			rw.asked[q] = true
			v.out.wantUpstream(q, rw.c, pb.Message_Wantlist_Block)
			break
		}
	}
	if len(rw.dont) < len(rw.asked) {
		return
	}
	v.miss(rw)
	v.drop(rw)
	delete(v.wants, rw.c)
}

// reverseBlockLocked delivers a block from upstream to the fleet nodes that
// want it and authorises its links in their sessions. Its CID was computed
// from its bytes when the message was parsed, so it is the block wanted.
func (v *reverseSet) block(rw *rwant, b blocks.Block, links []cid.Cid) {
	for n := range rw.nodes {
		v.out.blockNode(n, b)
		v.counters.ReverseBlocks.Add(1)
		v.counters.ReverseBytes.Add(uint64(len(b.RawData())))
		if s := v.sessionFor(n, rw.c); s != nil {
			for _, l := range links {
				v.authorise(s, l)
			}
		}
	}
	for p, block := range rw.asked {
		// Cancel where it was asked and not just answered with it.
		if !block || len(rw.asked) > 1 {
			v.out.cancelUpstream(p, rw.c)
		}
	}
	delete(v.wants, rw.c)
}

// reverseLinks decodes the links of the blocks from upstream that a
// reverse session waits for, without the relay's lock held while decoding.
func (r *Relay) reverseLinks(bs []blocks.Block) map[cid.Cid][]cid.Cid {
	if len(bs) == 0 {
		return nil
	}
	r.mu.Lock()
	var wanted []blocks.Block
	for _, b := range bs {
		if r.rev.wants[b.Cid()] != nil {
			wanted = append(wanted, b)
		}
	}
	r.mu.Unlock()
	if len(wanted) == 0 {
		return nil
	}
	out := make(map[cid.Cid][]cid.Cid, len(wanted))
	for _, b := range wanted {
		links, err := Links(b.Cid(), b.RawData())
		if err != nil {
			r.log.Debug("reverse block links", zap.Error(err))
		}
		out[b.Cid()] = links
	}
	return out
}

// reversePeerGoneLocked forgets an upstream peer that disconnected.
func (v *reverseSet) peerGone(p peer.ID) {
	for _, rw := range v.wants {
		if _, ok := rw.asked[p]; !ok {
			continue
		}
		rw.dont[p] = struct{}{}
		delete(rw.haves, p)
		v.retry(rw, p)
	}
}
