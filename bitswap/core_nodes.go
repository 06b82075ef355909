package bitswap

// The core's node side: choosing a node, the queue, misses, and what the
// nodes say and do.

import (
	"math"
	"time"

	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/downstream"
)

// ---- choosing a node ----

func (k *core) getNode(id peer.ID) *node {
	n := k.nodes[id]
	if n == nil {
		n = &node{connected: true, wants: make(map[cid.Cid]*want), lastHeard: k.now, asked: newHintCache(4096)}
		k.nodes[id] = n
	}
	return n
}

func (k *core) full(id peer.ID) bool {
	n := k.nodes[id]
	return n != nil && n.outstanding >= k.cfg.MaxInFlightPerNode
}

// priority is the priority w gets downstream, set by Kitsune: to a
// Kubo node Kitsune is one peer, whose wants it serves highest priority
// first, while upstream clients count priorities as they like (boxo down
// from MaxInt32 per peer, Helia 1 for everything), so passing theirs on
// let a busy Kubo client starve a Helia one. Each peer's n-th want out
// gets MaxInt32 - n: the node interleaves the peers' wants, a peer that
// just arrived is served next, and one with a deep backlog waits its turn.
func (k *core) priority(w *want) int32 {
	var best int32 = 1
	for p := range w.wanters {
		if u := k.peers[p]; u != nil {
			best = max(best, math.MaxInt32-u.served)
			if u.served < math.MaxInt32-1 {
				u.served++
			}
		}
	}
	return best
}

// assign sends w to node id.
func (k *core) assign(w *want, id peer.ID) {
	if w.prio == 0 {
		w.prio = k.priority(w)
	}
	w.node = id
	w.sentAt, w.askedAt = k.now, k.now
	w.sentType = pb.Message_Wantlist_Have
	if w.needsBlock() {
		w.sentType = pb.Message_Wantlist_Block
	}
	n := k.getNode(id)
	if n.outstanding == 0 {
		// Silence is measured from the first want a node has to answer.
		n.lastHeard = w.sentAt
	}
	n.outstanding++
	n.wants[w.c] = w
	n.asked.put(w.c, id)
	k.fx.want(id, w.c, w.sentType, w.prio)
	k.down.Sent(id)
	k.counters.WantsForwarded.Add(1)
}

// unassign takes w off its node, reporting how it ended. cancel sends
// a cancel to the node so its ledger lets go of the want too.
func (k *core) unassign(w *want, o downstream.Outcome, cancel bool) {
	id := w.node
	if id == "" {
		return
	}
	w.node = ""
	n := k.getNode(id)
	if n.wants[w.c] == w {
		delete(n.wants, w.c)
		n.outstanding--
	}
	if cancel {
		k.fx.cancel(id, w.c)
	}
	k.down.Done(id, o, k.now.Sub(w.sentAt))
}

// dispatch sends w to a node that has not said DONT_HAVE to it, queues
// it when every such node is at its cap, and deals with a miss when there
// is no such node at all.
func (k *core) dispatch(w *want) {
	if h, ok := k.hints.get(w.c); ok && !triedBy(w, h) && !k.full(h) && k.usable(h) {
		// The node that said HAVE is the one to ask for the block.
		k.assign(w, h)
		return
	}
	if id, ok := k.pick(w, true, ""); ok {
		k.assign(w, id)
		return
	}
	if _, ok := k.pick(w, false, ""); ok {
		if w.prio == 0 {
			w.prio = k.priority(w)
		}
		k.queue.add(w)
		return
	}
	k.miss(w)
}

func (k *core) usable(id peer.ID) bool {
	n := k.nodes[id]
	return n != nil && n.up
}

// miss handles a want every node said DONT_HAVE to. A Kubo node does
// not fetch a block because a peer asked for it, but the fleet usually
// reaches the wider network: so one node, chosen by the policy, is asked to
// fetch it through its RPC API, and the want is sent to that node again
// once it has the block. Only when that fails do the wanters hear DONT_HAVE.
func (k *core) miss(w *want) {
	if !k.cfg.FetchMisses || w.fetched || w.fetching || !k.chargeFetch(w) {
		k.exhaust(w)
		return
	}
	id, ok := k.down.Pick(w.c, nil)
	if !ok {
		k.exhaust(w)
		return
	}
	n := k.getNode(id)
	if n.fetches >= k.cfg.MissFetchesPerNode {
		k.exhaust(w)
		return
	}
	n.fetches++
	w.fetching, w.fetched = true, true
	k.fetchSeq++
	w.fetchID = k.fetchSeq
	k.counters.MissFetches.Add(1)
	k.fx.fetch(w.fetchID, id, w.c)
}

// stopFetch stops w's miss fetch, if one is in flight; its end is still
// reported (fetchDone) and only frees the node's slot.
func (k *core) stopFetch(w *want) {
	if w.fetching {
		w.fetching = false
		k.fx.stopFetch(w.fetchID)
	}
}

// fetchDone is the end of miss fetch id of c on node.
func (k *core) fetchDone(id uint64, node peer.ID, c cid.Cid, ok bool, now time.Time) {
	k.now = now
	if n := k.nodes[node]; n != nil && n.fetches > 0 {
		n.fetches--
	}
	w := k.wants[c]
	if w == nil || !w.fetching || w.fetchID != id {
		return // nobody waits for this fetch any more
	}
	w.fetching = false
	if !ok {
		k.exhaust(w)
		k.drainQueue()
		return
	}
	// The node has the block now: ask it first.
	k.counters.MissFetched.Add(1)
	k.hints.put(c, node)
	clear(w.tried)
	k.dispatch(w)
	k.drainQueue()
}

// chargeFetch takes a miss fetch from the allowance of a peer that
// wants w, and reports whether one had any left: the allowance of wants
// addressed to Kitsune first, the much smaller one of broadcasts only
// when no peer addressed it.
func (k *core) chargeFetch(w *want) bool {
	now := k.now
	addressed := false
	for _, wr := range w.wanters {
		addressed = addressed || wr.addressed()
	}
	for p, wr := range w.wanters {
		u := k.peers[p]
		switch {
		case u == nil:
		case wr.addressed():
			if u.fetches.take(now) {
				return true
			}
		case !addressed:
			if u.haveFetches.take(now) {
				return true
			}
		}
	}
	return false
}

// addressed tells a want meant for Kitsune from a broadcast: boxo sends
// its broadcast want-haves without asking for DONT_HAVE, and the wants it
// addresses to a peer of its session with.
func (wr wanter) addressed() bool {
	return wr.wantType == pb.Message_Wantlist_Block || wr.sendDontHave
}

// exhaust tells the wanters that asked for it that nobody has w.
// The DONT_HAVE goes out once per round: Helia drops a peer as a provider
// on its first DONT_HAVE, so it must mean "no node has it".
func (k *core) exhaust(w *want) {
	k.setExhausted(w, true)
	for p, wr := range w.wanters {
		u := k.peers[p]
		if u == nil {
			continue
		}
		if wr.sendDontHave {
			k.fx.presence(p, w.c, pb.Message_DontHave)
			k.counters.DontHavesOut.Add(1)
		}
	}
}

func triedBy(w *want, id peer.ID) bool {
	_, ok := w.tried[id]
	return ok
}

// triedOn notes that node id said DONT_HAVE to w in this round. The set
// is made on first use: most wants are answered by the first node.
func (w *want) triedOn(id peer.ID) {
	if w.tried == nil {
		w.tried = make(map[peer.ID]struct{})
	}
	w.tried[id] = struct{}{}
}

// pick asks the pool for a node for w, skipping the nodes that said
// DONT_HAVE to it in this round, and, when full is set, those at their cap
// and avoid. The skip function is a method value bound once (newCore),
// reading what it needs from k.picking: a closure made here would be
// allocated for every want dispatched.
func (k *core) pick(w *want, full bool, avoid peer.ID) (peer.ID, bool) {
	k.picking = pickArgs{w: w, full: full, avoid: avoid}
	defer func() { k.picking = pickArgs{} }()
	return k.down.Pick(w.c, k.skip)
}

// pickArgs are the arguments of the pick in progress.
type pickArgs struct {
	w     *want
	full  bool
	avoid peer.ID
}

// skipPicked is k.skip: whether the pick in progress passes node id over.
func (k *core) skipPicked(id peer.ID) bool {
	a := k.picking
	return triedBy(a.w, id) || (a.full && (k.full(id) || id == a.avoid))
}

// setExhausted marks w as refused by every node, or no longer, in
// every table that keeps track (the wanters', the expiry list), and
// updates the wanters' protection.
func (k *core) setExhausted(w *want, on bool) {
	if w.exhausted == on {
		return
	}
	w.exhausted = on
	if on {
		w.exhaustedAt = k.now
		w.expiry = k.expiring.PushBack(w)
	} else if w.expiry != nil {
		k.expiring.Remove(w.expiry)
		w.expiry = nil
	}
	for p := range w.wanters {
		if u := k.peers[p]; u != nil {
			if on {
				u.exhausted[w.c] = struct{}{}
			} else {
				delete(u.exhausted, w.c)
			}
			k.protect(p, u)
		}
	}
}

// expire drops the wants every node refused longer than
// ExhaustedTTL ago, as if their wanters had cancelled them.
func (k *core) expire(now time.Time) {
	for e := k.expiring.Front(); e != nil; e = k.expiring.Front() {
		w := e.Value.(*want)
		if now.Sub(w.exhaustedAt) < k.cfg.ExhaustedTTL {
			return
		}
		for p := range w.wanters {
			if u := k.peers[p]; u != nil {
				delete(u.wants, w.c)
				delete(u.deferred, w.c)
				delete(u.exhausted, w.c)
				k.protect(p, u)
			}
		}
		clear(w.wanters)
		k.dropWant(w) // takes it off the list
	}
}

// drainQueue moves queued wants to nodes that have room again. It
// goes through the whole queue once rather than stopping at the first want
// that queues again: that one may wait for a busy node while the wants
// behind it could go to an idle one now. Wants go out highest priority
// first (see wantQueue).
func (k *core) drainQueue() {
	var held []*want // queued again: back in once the pass is over
	for n := k.queue.Len(); n > 0 && k.room(); n-- {
		w := k.queue.next()
		k.dispatch(w)
		if w.qi >= 0 {
			k.queue.remove(w)
			held = append(held, w)
		}
	}
	for _, w := range held {
		k.queue.requeue(w)
	}
}

// room reports whether a node the pool would offer can take another
// want. It follows Pick: while any node is up only those count, and when
// every node is ejected Pick still offers the connected ones, so they do
// (without this the queue froze once the whole fleet was ejected). It is
// an upper bound: a want it lets through may queue again.
func (k *core) room() bool {
	anyUp := false
	for _, n := range k.nodes {
		if n.up {
			anyUp = true
			if n.outstanding < k.cfg.MaxInFlightPerNode {
				return true
			}
		}
	}
	if anyUp {
		return false
	}
	for _, n := range k.nodes {
		if n.connected && n.outstanding < k.cfg.MaxInFlightPerNode {
			return true
		}
	}
	return false
}

// ---- node side ----

// heard notes that node from sent something: a node that answers is
// slow, not dead.
func (k *core) heard(from peer.ID, now time.Time) {
	k.now = now
	k.getNode(from).lastHeard = now
}

// fromNode takes the answers in a message from a node: blocks (whose CIDs
// bsmsg computed from their bytes, so a block matches a want only if its
// bytes do), HAVEs and DONT_HAVEs.
func (k *core) fromNode(from peer.ID, bs []blocks.Block, haves, dontHaves []cid.Cid, now time.Time) {
	k.now = now
	n := k.getNode(from)
	n.lastHeard = now
	for _, b := range bs {
		k.counters.BlocksIn.Add(1)
		k.counters.BytesIn.Add(uint64(len(b.RawData())))
		w := k.wants[b.Cid()]
		if w == nil {
			k.counters.Unsolicited.Add(1)
			if _, late := n.asked.get(b.Cid()); !late {
				// Not a late answer: the node sent bytes that hash to
				// nothing it was asked for (a corrupt blockstore, or a
				// hostile node). Dropped, and held against the node.
				k.counters.BadBlocks.Add(1)
				k.down.Penalise(from, "sent a block matching no want")
			}
			continue
		}
		k.deliverBlock(w, b, from)
	}
	for _, c := range haves {
		w := k.wants[c]
		if w == nil || w.node != from {
			continue
		}
		k.hints.put(c, from)
		k.deliverHave(w, from)
	}
	for _, c := range dontHaves {
		w := k.wants[c]
		if w == nil || w.node != from {
			continue
		}
		// Kubo keeps a want it answered DONT_HAVE to; cancel it so it does
		// not take one of the node's queue slots for nothing.
		k.unassign(w, downstream.OutcomeDontHave, true)
		w.triedOn(from)
		k.counters.Failovers.Add(1)
		k.dispatch(w)
	}
	k.drainQueue()
}

func (k *core) deliverBlock(w *want, b blocks.Block, from peer.ID) {
	k.recent.put(b, k.now)
	small := len(b.RawData()) <= k.cfg.MaxHaveBlockSize
	for p, wr := range w.wanters {
		u := k.peers[p]
		if u == nil {
			continue
		}
		if wr.wantType == pb.Message_Wantlist_Block || small {
			if k.fx.backlogged(p) {
				// Keep the want, drop the bytes: fetched again on drain.
				u.deferred[w.c] = wr
				k.counters.Deferred.Add(1)
				continue
			}
			k.fx.block(p, b)
			u.sent(heldBytes(b))
		} else {
			k.fx.presence(p, w.c, pb.Message_Have)
			k.counters.HavesOut.Add(1)
		}
		delete(u.wants, w.c)
		delete(u.deferred, w.c)
		delete(u.exhausted, w.c)
		k.protect(p, u)
	}
	defer k.resumeWanters(w)
	delete(k.wants, w.c)
	k.setExhausted(w, false)
	k.queue.remove(w)
	k.stopFetch(w)
	// Kubo drops a want from its ledger once it sent the block; a want
	// still open on another node (a late block after a failover) is
	// cancelled there.
	if w.node == from {
		k.unassign(w, downstream.OutcomeBlock, false)
	} else if w.node != "" {
		k.unassign(w, downstream.OutcomeCancelled, true)
	}
}

// deliverHave answers the want-have wanters. Want-block wanters stay:
// their block is on its way from the same node, or is asked for next.
func (k *core) deliverHave(w *want, from peer.ID) {
	for p, wr := range w.wanters {
		if wr.wantType != pb.Message_Wantlist_Have {
			continue
		}
		if u := k.peers[p]; u != nil {
			k.fx.presence(p, w.c, pb.Message_Have)
			k.counters.HavesOut.Add(1)
			delete(u.wants, w.c)
			delete(u.deferred, w.c)
			delete(u.exhausted, w.c)
			k.protect(p, u)
		}
		delete(w.wanters, p)
	}
	if len(w.wanters) > 0 {
		if w.sentType == pb.Message_Wantlist_Have {
			w.sentType = pb.Message_Wantlist_Block
			w.askedAt = k.now
			k.fx.want(from, w.c, w.sentType, w.prio)
			k.counters.WantsForwarded.Add(1)
		}
		return
	}
	// Kubo drops a want-have from its ledger once answered; the cancel
	// makes sure, at the cost of a few bytes.
	k.unassign(w, downstream.OutcomeHave, true)
	delete(k.wants, w.c)
}

// nodeUp: a node joined, came back, or was re-admitted.
func (k *core) nodeUp(id peer.ID, now time.Time) {
	k.now = now
	n := k.getNode(id)
	n.up, n.connected = true, true
	n.lastHeard = k.now
	// Wants nobody had may be on the new node: each is asked there, and
	// only there (no new round on the others, no new miss fetch).
	// A snapshot: a want may be refused again while this runs.
	var retry []*want
	for e := k.expiring.Front(); e != nil; e = e.Next() {
		if w := e.Value.(*want); !triedBy(w, id) {
			retry = append(retry, w)
		}
	}
	for _, w := range retry {
		k.setExhausted(w, false)
		k.dispatch(w)
	}
	k.drainQueue()
}

// nodeDown: the node's wants move elsewhere
// at once. When the connection is gone its ledger went with it; when the
// node was only ejected, its wants are cancelled there.
func (k *core) nodeDown(id peer.ID, connected bool, now time.Time) {
	k.now = now
	n := k.nodes[id]
	if n == nil {
		return
	}
	n.up, n.connected = false, connected
	moved := make([]*want, 0, len(n.wants))
	for _, w := range n.wants {
		moved = append(moved, w)
	}
	for _, w := range moved {
		k.unassign(w, downstream.OutcomeCancelled, connected)
		k.counters.Failovers.Add(1)
		k.dispatch(w)
	}
	k.hints.forget(id)
	if !connected && n.outstanding == 0 && n.fetches == 0 {
		// A node that left for good should not keep an entry; one that
		// comes back gets a fresh one.
		delete(k.nodes, id)
	}
	k.drainQueue()
}

// tick moves wants off nodes that stopped answering. A node that
// has wants outstanding and has sent nothing for longer than its timeout
// (derived from its own latency) is treated as failing: each of its wants
// that waited that long goes to another node when there is one, and the
// pool counts the failure towards ejection. A node that keeps sending is
// only busy, and is left alone: Kubo answers every want, so silence with
// work outstanding is the sign of trouble.
// It also expires the wants every node refused long ago.
func (k *core) tick(now time.Time) {
	k.now = now
	k.expire(now)
	k.recent.expire(now)
	for id, n := range k.nodes {
		if n.outstanding == 0 {
			continue
		}
		timeout := k.down.Timeout(id)
		if now.Sub(n.lastHeard) < timeout {
			continue
		}
		var late []*want
		for _, w := range n.wants {
			if now.Sub(w.sentAt) >= timeout {
				late = append(late, w)
			}
		}
		if len(late) == 0 {
			continue
		}
		// Look again one timeout from now, not at every tick.
		n.lastHeard = now
		// One silence is one failure, however many wants it held up: a
		// node stalled once (a GC pause, a slow disk) with a few wants out
		// used to count a failure per want and was ejected at once. The
		// first want moved reports it; the others are only cancelled.
		outcome := downstream.OutcomeFailed
		for _, w := range late {
			alt, ok := k.pick(w, true, id)
			if !ok {
				continue // nowhere better: keep waiting on this node
			}
			k.unassign(w, outcome, true)
			outcome = downstream.OutcomeCancelled
			w.triedOn(id)
			k.counters.Failovers.Add(1)
			k.counters.Timeouts.Add(1)
			k.assign(w, alt)
		}
	}
	k.rewant(now)
	// Wants held back go out as the peer's blocks arrive (deliverBlock);
	// this catches the rest (a cancel, a DONT_HAVE freeing room).
	for p, u := range k.peers {
		k.resume(p, u)
	}
	k.drainQueue()
}

// resumeWanters lets w's wanters send on wants held back, now that w's
// block freed room for them.
func (k *core) resumeWanters(w *want) {
	for p := range w.wanters {
		if u := k.peers[p]; u != nil {
			k.resume(p, u)
		}
	}
}

// rewant sends again the wants that have waited on their node for
// RewantInterval since it was last asked. Kubo answers every want (block
// or DONT_HAVE), but a want can be lost on the way there (a failed send),
// or its answer on the way back (Kubo drops the want from its ledger once
// it tried to send the block, whether or not the stream got through). The
// node stays heard through its answers to other wants, so the silence
// check above never moves the want, and with one node there is nowhere
// to move it: without this, its wanter waited for ever (a boxo client
// asks again every 30 s, but a want Kitsune already has out was not sent
// again). Scanned four times per interval, not at every tick.
func (k *core) rewant(now time.Time) {
	every := k.cfg.RewantInterval
	if now.Sub(k.rewantScan) < every/4 {
		return
	}
	k.rewantScan = now
	for id, n := range k.nodes {
		if !n.connected {
			continue
		}
		for _, w := range n.wants {
			if now.Sub(w.askedAt) < every {
				continue
			}
			w.askedAt = now
			n.asked.put(w.c, id)
			k.fx.want(id, w.c, w.sentType, w.prio)
			k.counters.Rewants.Add(1)
		}
	}
}
