package bitswap

// The relay's core: every table and every decision of the relay, and
// nothing else. It does no I/O, starts no goroutine and has no clock of
// its own: the shell (Relay) feeds it events under its lock, each with the
// time, and it answers through effects. Its tests drive it with a fake
// clock and a recording effects sink, no sockets (core_test.go). boxo's
// peer_ledger.go and peerwantmanager.go are the model.

import (
	"cmp"
	"container/list"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/boxo/bitswap/client/wantlist"
	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/downstream"
)

// effects is what the core asks of the world. Calls come under the
// shell's lock and must not call back into the core.
type effects interface {
	// want and cancel change Kitsune's wantlist at a node.
	want(node peer.ID, c cid.Cid, t pb.Message_Wantlist_WantType, prio int32)
	cancel(node peer.ID, c cid.Cid)
	// block and presence reply to an upstream peer.
	block(to peer.ID, b blocks.Block)
	presence(to peer.ID, c cid.Cid, t pb.Message_BlockPresenceType)
	// backlogged reports whether a peer's replies waiting to be written
	// are at their budget: its blocks are then deferred.
	backlogged(to peer.ID) bool
	// queued is the memory a peer's replies waiting to be written keep
	// (heldBytes), against its budget.
	queued(to peer.ID) int
	// replyBudget is that budget now: perPeer (PeerBufferBytes), or less while
	// the replies of all peers together are at ReplyMemoryBytes
	// (replymem.go).
	replyBudget(to peer.ID, perPeer int) int
	// protect keeps a peer's connection from trimming, or stops.
	protect(p peer.ID, on bool)
	// fetch starts miss fetch id (node fetches c from its own peers),
	// whose end comes back as fetchDone; stopFetch abandons it.
	fetch(id uint64, node peer.ID, c cid.Cid)
	stopFetch(id uint64)
}

// fleet is what the core asks of the downstream pool: its choices and
// its books, no I/O.
type fleet interface {
	Pick(c cid.Cid, skip func(peer.ID) bool) (peer.ID, bool)
	Sent(node peer.ID)
	Done(node peer.ID, o downstream.Outcome, latency time.Duration)
	Timeout(node peer.ID) time.Duration
	Penalise(node peer.ID, why string)
}

// core holds the relay's tables.
type core struct {
	cfg      Config
	fx       effects
	down     fleet
	counters *Counters
	now      time.Time // of the event being handled

	wants map[cid.Cid]*want
	peers map[peer.ID]*upstream
	nodes map[peer.ID]*node
	queue wantQueue // wants waiting for a node with room
	// expiring holds the exhausted wants, oldest first (see ExhaustedTTL).
	expiring *list.List
	hints    hintCache // which node last said HAVE for a CID
	recent   recentBlocks
	fetchSeq uint64
	// picking and skip serve pick (core_nodes.go).
	picking pickArgs
	skip    func(peer.ID) bool
	// rewantScan is when the wants out were last looked at for rewants.
	rewantScan time.Time
}

func newCore(cfg Config, fx effects, down fleet, counters *Counters) *core {
	cfg.fill()
	k := &core{
		cfg: cfg, fx: fx, down: down, counters: counters,
		wants:    make(map[cid.Cid]*want),
		peers:    make(map[peer.ID]*upstream),
		nodes:    make(map[peer.ID]*node),
		expiring: list.New(),
		hints:    newHintCache(4096),
		recent:   newRecentBlocks(max(0, cfg.RecentBlockBytes), cfg.RecentBlockTTL),
	}
	k.skip = k.skipPicked
	return k
}

// ---- peer side ----

// hasPeer reports whether the core keeps a wantlist for p.
func (k *core) hasPeer(p peer.ID) bool { return k.peers[p] != nil }

// fromPeer takes the wantlist entries of one message from upstream peer
// p; full says the message replaces p's wantlist.
func (k *core) fromPeer(p peer.ID, entries []bsmsg.Entry, full bool, now time.Time) {
	k.now = now
	u := k.peers[p]
	if u == nil {
		u = k.newUpstream(p)
	}
	if full {
		keep := make(map[cid.Cid]struct{}, len(entries))
		for _, e := range entries {
			if !e.Cancel {
				keep[e.Cid] = struct{}{}
			}
		}
		for c := range u.wants {
			if _, ok := keep[c]; !ok {
				k.removeWanter(p, u, c)
			}
		}
	}
	for _, e := range entries {
		if e.Cancel {
			k.removeWanter(p, u, e.Cid)
			continue
		}
		k.counters.WantsReceived.Add(1)
		if k.answerLocally(p, e) {
			continue
		}
		k.addWanter(p, u, e)
	}
	k.resume(p, u) // cancels may have made room
	k.protect(p, u)
	k.drainQueue()
}

// closeAll forgets every table and returns the wants still out at each
// node, for the shell to cancel there.
func (k *core) closeAll() map[peer.ID][]cid.Cid {
	byNode := make(map[peer.ID][]cid.Cid)
	for c, w := range k.wants {
		if w.node != "" {
			byNode[w.node] = append(byNode[w.node], c)
		}
	}
	k.wants = make(map[cid.Cid]*want)
	k.peers = make(map[peer.ID]*upstream)
	k.queue.reset()
	k.expiring.Init()
	k.recent.reset()
	return byNode
}

// stats fills in the core's part of Stats.
func (k *core) stats(s *Stats) {
	s.Wants, s.Refused, s.Peers, s.Queued = len(k.wants), k.expiring.Len(), len(k.peers), k.queue.Len()
	s.RecentBlocks = k.recent.len()
	s.Outstanding = make(map[peer.ID]int, len(k.nodes))
	for id, n := range k.nodes {
		s.Outstanding[id] = n.outstanding
	}
}

// wanter is one upstream peer's interest in a CID.
type wanter struct {
	wantType     pb.Message_Wantlist_WantType
	sendDontHave bool
	priority     int32
}

// want is one CID that at least one upstream peer wants.
type want struct {
	c       cid.Cid
	wanters map[peer.ID]wanter
	// node is the downstream node the want is outstanding on, if any, and
	// sentType what it was asked for there.
	node     peer.ID
	sentType pb.Message_Wantlist_WantType
	sentAt   time.Time
	// askedAt is when the node was last sent w (sentAt, an upgrade, or a
	// rewant): the node is asked again RewantInterval after it.
	askedAt time.Time
	// prio is the priority Kitsune gives w downstream (see priority).
	prio int32
	// tried holds the nodes that answered DONT_HAVE in this round (nil
	// until one does).
	tried map[peer.ID]struct{}
	// qi is w's index in the queue while it waits for a node with room
	// (-1 otherwise), qseq its arrival there.
	qi   int
	qseq uint64
	// exhausted is set once every node said DONT_HAVE; the want stays for
	// its wanters (as a Kubo server keeps it in its ledger) and is tried
	// again when one of them asks again or a node joins.
	exhausted bool
	// expiry is w's place in the relay's list of exhausted wants, oldest
	// first, while exhausted.
	expiry      *list.Element
	exhaustedAt time.Time
	// fetching is set while a node fetches the block for a miss; fetched
	// once that was tried in this round, so a round fetches at most once.
	fetching bool
	fetched  bool
	// fetchID names the fetch in flight, so a late end of an earlier one
	// is told apart.
	fetchID uint64
}

func (w *want) needsBlock() bool {
	for _, wr := range w.wanters {
		if wr.wantType == pb.Message_Wantlist_Block {
			return true
		}
	}
	return false
}

type upstream struct {
	wants map[cid.Cid]struct{}
	// deferred are wants not out at any node for this peer: those whose
	// block arrived while the peer's outbox was full (fetched again once it
	// drains), and new wants held back while the peer already has as many
	// out as its outbox can take (see wantsOutCap). A subset of wants.
	deferred map[cid.Cid]wanter
	// blockEst is the size the peer's next blocks are expected to keep
	// alive (heldBytes), a running average of those it was sent; 0 until
	// the first.
	blockEst   int
	blocksSent int
	// fetches and haveFetches are the peer's miss-fetch allowances, for
	// wants addressed to Kitsune and for broadcasts.
	fetches, haveFetches tokenBucket
	// exhausted are those of wants every node refused: evicted first when
	// the peer is at its cap, and not worth protecting the peer for.
	exhausted map[cid.Cid]struct{}
	protected bool
	// served counts the wants sent to nodes for this peer since it last
	// had nothing out: the basis of its wants' priority downstream.
	served int32
}

type node struct {
	outstanding int
	up          bool
	// connected is false once the pool said the connection is gone; an
	// ejected node stays connected, and Pick may still offer it.
	connected bool
	out       *wantOutbox
	// wants are those outstanding here, for failover without a scan of
	// the whole table.
	wants map[cid.Cid]*want
	// lastHeard is when the node last sent anything: a node that answers
	// is slow, not dead, and its wants are left alone.
	lastHeard time.Time
	fetches   int
	// asked remembers the CIDs recently sent to the node, so a late block
	// (after a cancel or failover) is told apart from a block whose bytes
	// match nothing Kitsune asked for.
	asked hintCache
}

// protect keeps an upstream peer safe from the connection manager
// exactly while some want of its is being worked on: trimming it would
// throw that work away. Wants every node refused do not count.
func (k *core) protect(p peer.ID, u *upstream) {
	switch busy := len(u.wants) > len(u.exhausted); {
	case busy && !u.protected:
		k.fx.protect(p, true)
	case !busy && u.protected:
		k.fx.protect(p, false)
		u.served = 0 // idle: its next wants come first again
	default:
		return
	}
	u.protected = !u.protected
}

// answerLocally answers a want no fleet node would (see local.go)
// and reports whether it did; such wants never enter the table.
func (k *core) answerLocally(p peer.ID, e bsmsg.Entry) bool {
	switch classify(e.Cid) {
	case refuse:
		k.counters.RefusedWants.Add(1)
		if e.SendDontHave {
			k.fx.presence(p, e.Cid, pb.Message_DontHave)
			k.counters.DontHavesOut.Add(1)
		}
		return true
	case inline:
		b, ok := identityBlock(e.Cid)
		if !ok {
			return true // a multihash that does not parse: nothing to answer
		}
		k.counters.InlineBlocks.Add(1)
		if e.WantType == pb.Message_Wantlist_Block || len(b.RawData()) <= k.cfg.MaxHaveBlockSize {
			k.fx.block(p, b)
		} else {
			k.fx.presence(p, e.Cid, pb.Message_Have)
			k.counters.HavesOut.Add(1)
		}
		return true
	}
	return false
}

func (k *core) newUpstream(p peer.ID) *upstream {
	u := &upstream{wants: make(map[cid.Cid]struct{}), deferred: make(map[cid.Cid]wanter), exhausted: make(map[cid.Cid]struct{}),
		fetches:     newTokenBucket(k.cfg.MissFetchRate, k.cfg.MissFetchBurst, k.now),
		haveFetches: newTokenBucket(k.cfg.MissFetchRate/16, max(1, k.cfg.MissFetchBurst/16), k.now)}
	k.peers[p] = u
	return u
}

// resumeDeferred fetches again the blocks a slow peer's full outbox made
// Kitsune set aside, once it drained.
func (k *core) resumeDeferred(p peer.ID, now time.Time) {
	k.now = now
	u := k.peers[p]
	if u == nil {
		return
	}
	k.resume(p, u)
	k.drainQueue()
}

// Why hold wants back: a client that wants a whole level of a DAG at
// once (a boxo session, `refs -r`, a pin: 256 blocks of 256 KiB, 64 MiB)
// had every want sent to the fleet at once, and every block past its
// 16 MiB outbox that arrived before the outbox drained was dropped and
// fetched again. One client on loopback: 7653 blocks from the node for
// 5668 sent on, a third of Kitsune's and the node's work for nothing
// (kitsune-bench -scenarios 1 -profile). So a new want-block goes to the
// fleet only while the peer's wants out there, at the size of its
// blocks so far, fit the room left in its outbox; the others wait in deferred, in the
// peer's priority order, and go out as its blocks arrive (resume).
// Joining a want another peer already has out costs nothing and is never
// held back.

// defaultBlockEst is the size assumed for a peer's blocks before its
// first arrives: Kubo's default chunk.
const defaultBlockEst = 256 << 10

// wantsOutCap is how many wants p may have out at the fleet: as many
// blocks as the room left in its outbox holds, and at least one when the
// outbox is empty (a block larger than the budget still goes). With
// nothing out and a part-full outbox, the room comes back as it drains
// (resume from resumeDeferred and tick).
func (k *core) wantsOutCap(p peer.ID, u *upstream) int {
	est := u.blockEst
	if u.blocksSent < trustBlockEst {
		// A DAG's first block (its root) is small and its leaves large:
		// an average over a few says nothing yet.
		est = max(est, defaultBlockEst)
	}
	queued := k.fx.queued(p)
	n := (k.fx.replyBudget(p, k.cfg.PeerBufferBytes) - queued) / est
	if n < 1 && queued == 0 {
		n = 1
	}
	return n
}

// wantsOut is how many of u's wants are out at the fleet (or waiting
// for a node's slot): all but the deferred and those every node refused.
func wantsOut(u *upstream) int {
	return max(0, len(u.wants)-len(u.deferred)-len(u.exhausted))
}

// trustBlockEst is how many blocks a peer is sent before their average
// size stands for its next ones.
const trustBlockEst = 16

// sent records a block of size held bytes on its way to u.
func (u *upstream) sent(held int) {
	u.blocksSent++
	if u.blockEst <= 0 {
		u.blockEst = held
		return
	}
	u.blockEst += (held - u.blockEst) / 4
}

// resume sends p's deferred wants on, most urgent first, while it has
// room for them and its outbox is not full.
func (k *core) resume(p peer.ID, u *upstream) {
	// Checked before sorting too: at every block and tick, most calls
	// find no room.
	if len(u.deferred) == 0 || k.fx.backlogged(p) || wantsOut(u) >= k.wantsOutCap(p, u) {
		return
	}
	type held struct {
		c  cid.Cid
		wr wanter
	}
	hs := make([]held, 0, len(u.deferred))
	for c, wr := range u.deferred {
		if _, still := u.wants[c]; !still {
			delete(u.deferred, c) // cancelled meanwhile
			continue
		}
		hs = append(hs, held{c, wr})
	}
	slices.SortFunc(hs, func(a, b held) int {
		if a.wr.priority != b.wr.priority {
			return cmp.Compare(b.wr.priority, a.wr.priority)
		}
		return strings.Compare(a.c.KeyString(), b.c.KeyString())
	})
	for _, h := range hs {
		if k.fx.backlogged(p) || wantsOut(u) >= k.wantsOutCap(p, u) {
			return
		}
		delete(u.deferred, h.c)
		e := bsmsg.Entry{Entry: wantlist.Entry{Cid: h.c, Priority: h.wr.priority, WantType: h.wr.wantType}, SendDontHave: h.wr.sendDontHave}
		delete(u.wants, h.c)
		k.addWanter(p, u, e)
	}
}

func (k *core) addWanter(p peer.ID, u *upstream, e bsmsg.Entry) {
	if _, had := u.wants[e.Cid]; !had && len(u.wants) >= k.cfg.MaxWantsPerPeer {
		// At the cap, a want every node refused makes room first, as
		// boxo's server does in handleOverflow; with none, the new want
		// is refused, and told so when it asked.
		// Either way a want is dropped, and counted.
		k.counters.DroppedWants.Add(1)
		evicted := false
		for c := range u.exhausted {
			k.removeWanter(p, u, c)
			evicted = true
			break
		}
		if !evicted {
			if e.SendDontHave {
				k.fx.presence(p, e.Cid, pb.Message_DontHave)
				k.counters.DontHavesOut.Add(1)
			}
			return
		}
	}
	u.wants[e.Cid] = struct{}{}
	wr := wanter{wantType: e.WantType, sendDontHave: e.SendDontHave, priority: e.Priority}
	if prev, held := u.deferred[e.Cid]; held {
		// Asked again while held back or set aside: it keeps waiting for
		// room (resume), as what it asks for now.
		if prev.wantType == pb.Message_Wantlist_Block {
			wr.wantType = prev.wantType
		}
		u.deferred[e.Cid] = wr
		return
	}

	w := k.wants[e.Cid]
	if w == nil {
		if k.fromRecent(p, u, e.Cid, wr) {
			return
		}
		// Out at the fleet for u: its wants but the deferred and this one.
		if wr.wantType == pb.Message_Wantlist_Block && wantsOut(u)-1 >= k.wantsOutCap(p, u) {
			u.deferred[e.Cid] = wr
			k.counters.HeldWants.Add(1)
			return
		}
		w = &want{c: e.Cid, wanters: map[peer.ID]wanter{p: wr}, qi: -1}
		k.wants[e.Cid] = w
		if k.queue.Len() > 0 {
			// Others are waiting for room: the newcomer waits with them,
			// in priority order, rather than take a slot a cancel in the
			// same message just freed.
			w.prio = k.priority(w)
			k.queue.add(w)
			return
		}
		k.dispatch(w)
		return
	}
	if prev, ok := w.wanters[p]; ok && prev.wantType == pb.Message_Wantlist_Block {
		// A want-have does not take back a want-block still open.
		wr.wantType = prev.wantType
	}
	w.wanters[p] = wr
	switch {
	case w.exhausted:
		// Asked again after every node said DONT_HAVE: the content may have
		// arrived since, so start a new round.
		k.newRound(w)
	case w.node != "" && w.sentType == pb.Message_Wantlist_Have && wr.wantType == pb.Message_Wantlist_Block:
		// Upgrade on the node that has the want already.
		w.sentType = pb.Message_Wantlist_Block
		w.askedAt = k.now
		k.fx.want(w.node, w.c, w.sentType, w.prio)
		k.counters.WantsForwarded.Add(1)
	}
}

// fromRecent answers p's new want for c from the blocks relayed lately,
// and reports whether it did (see recentBlocks). A peer whose outbox is
// full has the want set aside, as deliverBlock does.
func (k *core) fromRecent(p peer.ID, u *upstream, c cid.Cid, wr wanter) bool {
	b, ok := k.recent.get(c, k.now)
	if !ok {
		return false
	}
	k.counters.RecentHits.Add(1)
	if wr.wantType == pb.Message_Wantlist_Block || len(b.RawData()) <= k.cfg.MaxHaveBlockSize {
		if k.fx.backlogged(p) {
			u.deferred[c] = wr
			k.counters.Deferred.Add(1)
			return true
		}
		k.fx.block(p, b)
		u.sent(heldBytes(b))
	} else {
		k.fx.presence(p, c, pb.Message_Have)
		k.counters.HavesOut.Add(1)
	}
	delete(u.wants, c)
	delete(u.deferred, c)
	delete(u.exhausted, c)
	return true
}

// newRound forgets which nodes said DONT_HAVE and tries again.
func (k *core) newRound(w *want) {
	k.setExhausted(w, false)
	w.fetched = false
	clear(w.tried)
	k.dispatch(w)
}

func (k *core) removeWanter(p peer.ID, u *upstream, c cid.Cid) {
	delete(u.wants, c)
	delete(u.deferred, c)
	delete(u.exhausted, c)
	w := k.wants[c]
	if w == nil {
		return
	}
	delete(w.wanters, p)
	if len(w.wanters) == 0 {
		k.dropWant(w)
	}
}

// dropWant forgets a want nobody waits for any more, cancelling it on
// the node that has it.
func (k *core) dropWant(w *want) {
	delete(k.wants, w.c)
	k.setExhausted(w, false)
	k.queue.remove(w)
	k.stopFetch(w)
	// The caller drains the queue once it has dropped all it drops: doing
	// it here would hand freed slots to wants about to be dropped too.
	if w.node != "" {
		k.unassign(w, downstream.OutcomeCancelled, true)
	}
}

func (k *core) peerGone(p peer.ID, now time.Time) {
	k.now = now
	u := k.peers[p]
	if u == nil {
		return
	}
	delete(k.peers, p)
	for c := range u.wants {
		k.removeWanter(p, u, c)
	}
	if u.protected {
		k.fx.protect(p, false)
	}
	k.drainQueue()
}
