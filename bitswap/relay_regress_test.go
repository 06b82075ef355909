package bitswap

// Tests that fail against the relay as it stands; each names the defect.

import (
	"testing"
	"time"
)

// When a peer leaves, its queued wants must not be sent to a node just
// because its outstanding ones freed the node's slots: they are about to be
// dropped too. The relay drains the queue after each removal, so the node
// gets wants (or, when the outbox merges them, bare cancels) for CIDs
// nobody wants any more.
func TestUpstreamDisconnectSendsNothingNew(t *testing.T) {
	e := newEnv(t, Config{MaxInFlightPerNode: 30, PeerBufferBytes: 1 << 30}) // all 100 out: not held back per peer
	n := e.addRawNode()
	p := e.newRawPeer()
	p.wantBlock(missingCids(t, 100)...)
	eventually(t, 5*time.Second, func() string { return "wants in the table: " + e.describe() }, func() bool {
		s := e.stats()
		return s.Wants == 100 && s.Queued == 70 && s.Outstanding[n.h.ID()] == 30
	})
	eventually(t, 5*time.Second, func() string { return "30 wants at node" }, func() bool { w, _, _, _ := n.wlog.totals(); return w == 30 })
	_ = p.h.Close()
	e.waitIdle()
	eventually(t, 5*time.Second, func() string { return "cancels at node" }, func() bool { return len(n.wlog.openCids()) == 0 })
	time.Sleep(50 * time.Millisecond) // let any stray message arrive
	wants, cancels, distinct, _ := n.wlog.totals()
	if fwd := e.relay.Counters().WantsForwarded.Load(); fwd != 30 {
		t.Errorf("WantsForwarded=%d: the leaving peer's queued wants were dispatched after it left", fwd)
	}
	if wants != 30 || cancels != 30 || distinct != 30 {
		t.Errorf("the node got %d wants for %d CIDs and %d cancels; expected 30 wants and their 30 cancels", wants, distinct, cancels)
	}
}

// The same happens when a full wantlist drops wants: the queued ones it
// drops must not go to a node on the way out.
func TestFullWantlistSendsNothingNew(t *testing.T) {
	e := newEnv(t, Config{MaxInFlightPerNode: 5})
	n := e.addRawNode()
	p := e.newRawPeer()
	p.fullWantlist(missingCids(t, 20)...)
	eventually(t, 5*time.Second, func() string { return "wants in the table: " + e.describe() }, func() bool {
		s := e.stats()
		return s.Wants == 20 && s.Queued == 15 && s.Outstanding[n.h.ID()] == 5
	})
	keep := missingCid(t)
	p.fullWantlist(keep)
	eventually(t, 5*time.Second, func() string { return "the new want at node: " + e.describe() }, func() bool { return n.wlog.isOpen(keep) })
	eventually(t, 5*time.Second, func() string { return "cancels at node" }, func() bool { return len(n.wlog.openCids()) == 1 })
	time.Sleep(50 * time.Millisecond)
	if s := e.stats(); s.Wants != 1 || s.Queued != 0 || s.Outstanding[n.h.ID()] != 1 {
		t.Errorf("after the full wantlist replaced 20 wants with 1: %s", e.describe())
	}
	wants, cancels, _, _ := n.wlog.totals()
	if fwd := e.relay.Counters().WantsForwarded.Load(); fwd != 6 {
		t.Errorf("WantsForwarded=%d, expected 6 (5 before, 1 after)", fwd)
	}
	if wants != 6 || cancels != 5 {
		t.Errorf("the node got %d wants and %d cancels; expected 6 wants and 5 cancels", wants, cancels)
	}
}

// A queued want that only a busy node can take must not hold back queued
// wants an idle node could take. drainQueueLocked stops at the first want
// that queues again, so every want at the head of the queue that waits for
// the busy node holds back the rest; only the silence sweep, once per
// CheckInterval, rotates one of them to the back. With k such wants ahead,
// a want for the idle node waits about k ticks (here about 2 s) while the
// idle node has nothing to do.
func TestQueueHeadDoesNotBlockIdleNode(t *testing.T) {
	const k = 20
	e := newEnv(t, Config{MaxInFlightPerNode: k})
	busy := e.addRawNode() // never answers (and is not silent long enough to time out)
	idle := e.addRawNode()
	p := e.newRawPeer()

	// Fill both nodes: round robin gives each k.
	p.wantBlock(missingCids(t, 2*k)...)
	eventually(t, 5*time.Second, func() string { return "both nodes full: " + e.describe() }, func() bool {
		return len(busy.wlog.openCids()) == k && len(idle.wlog.openCids()) == k
	})
	// k more wait in the queue.
	p.wantBlock(missingCids(t, k)...)
	eventually(t, 5*time.Second, func() string { return "k queued: " + e.describe() }, func() bool { return e.stats().Queued == k })
	// The idle node has none of its first k: they queue again, for the busy
	// node only, and the k queued take the idle node's slots.
	idle.sendDontHave(idle.wlog.openCids()...)
	eventually(t, 5*time.Second, func() string { return "the queued k at the idle node: " + e.describe() }, func() bool {
		return len(idle.wlog.openCids()) == k && e.stats().Queued == k
	})
	// w queues behind the k that wait for the busy node.
	w := missingCid(t)
	p.wantBlock(w)
	eventually(t, 5*time.Second, func() string { return "w queued: " + e.describe() }, func() bool { return e.stats().Queued == k+1 })
	// The idle node has none of its second k either, and is free: w could
	// go to it at once.
	idle.sendDontHave(idle.wlog.openCids()...)
	start := time.Now()
	eventually(t, 5*time.Second, func() string { return "w at the idle node: " + e.describe() }, func() bool { return idle.wlog.isOpen(w) })
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("w waited %v in the queue while the idle node had %d free slots", d, k)
	}
}
