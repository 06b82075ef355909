package bitswap

import (
	"fmt"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	blocks "github.com/ipfs/go-block-format"
	"github.com/libp2p/go-libp2p/core/network"
)

func TestReplyMemoryBudget(t *testing.T) {
	const perPeer = 16 << 20
	for _, tc := range []struct {
		name          string
		limit         int
		bytes, active int64
		want          int
	}{
		{"below the limit: the peer's own", 64 << 20, 63 << 20, 40, perPeer},
		{"at the limit: an equal share", 64 << 20, 64 << 20, 8, 8 << 20},
		{"the share never exceeds the peer's own", 64 << 20, 70 << 20, 2, perPeer},
		{"many peers: small shares", 64 << 20, 80 << 20, 1024, 64 << 10},
		{"no peer counted yet", 64 << 20, 64 << 20, 0, perPeer},
		{"no limit", 0, 1 << 40, 1, perPeer},
	} {
		m := newReplyMemory(tc.limit)
		m.bytes.Store(tc.bytes)
		m.active.Store(tc.active)
		if got := m.budget(perPeer); got != tc.want {
			t.Errorf("%s: budget = %d, want %d", tc.name, got, tc.want)
		}
	}
	var none *replyMemory
	if got := none.budget(perPeer); got != perPeer {
		t.Errorf("nil: budget = %d, want %d", got, perPeer)
	}
}

// A block parsed in place and queued for many peers is one buffer: it
// counts once, until the last outbox lets it go. A block copied out of
// its message counts for each holder (it is small, and the count errs on
// the safe side).
func TestReplyMemoryCountsASharedBlockOnce(t *testing.T) {
	m := newReplyMemory(1 << 20)
	raw := makeBlock(t, 300<<10).(*blocks.BasicBlock)
	shared := &frameBlock{BasicBlock: raw, buf: unpooled(make([]byte, 320<<10)), holds: 320 << 10}
	small := makeBlock(t, 1<<10)
	for range 3 {
		m.hold(shared)
		m.hold(small)
	}
	if b, _ := m.held(); b != 320<<10+3*heldBytes(small) {
		t.Fatalf("held %d bytes, want the shared block once (%d) and the small one thrice (%d)", b, 320<<10, 3*heldBytes(small))
	}
	for range 3 {
		m.drop(shared)
		m.drop(small)
	}
	if b, _ := m.held(); b != 0 || shared.outboxes.Load() != 0 {
		t.Fatalf("all let go: held %d bytes, %d outboxes on the shared block", b, shared.outboxes.Load())
	}
}

// Peers that read nothing, each wanting distinct blocks, fill their
// outboxes to their budget. Past ReplyMemoryBytes the budget is an equal
// share: what they hold together stops near the cap instead of at each
// one's PeerBufferBytes, a peer that reads still gets every block, and
// once the silent peers leave everything is let go.
func TestReplyMemoryBoundsSilentPeers(t *testing.T) {
	const (
		silent     = 6
		perSilent  = 32 // blocks of 64 KiB: 2 MiB each, 12 MiB in all
		blockSize  = 64 << 10
		replyLimit = 2 << 20
	)
	e := newEnv(t, Config{ReplyMemoryBytes: replyLimit})
	var all [][]blocks.Block
	for range silent + 1 {
		var blks []blocks.Block
		for range perSilent {
			blks = append(blks, makeBlock(t, blockSize))
		}
		e.addServerNode(0, blks...)
		all = append(all, blks)
	}
	// A receiver that accepts each reply stream and never reads it: the
	// relay's writes stop once the stream's window and the sockets are
	// full, and its blocks stay held.
	stall := func(s network.Stream) ([]bsmsg.BitSwapMessage, error) {
		<-e.ctx.Done()
		_ = s.Reset()
		return nil, nil
	}
	var quiet []*receiver
	for i := range silent {
		r := newReceiver(t, e, tcpAddr(t, e.front), stall)
		quiet = append(quiet, r)
		r.want(t, e.front.ID(), all[i])
	}
	// Each silent peer's share is a third of a MiB once the cap is
	// passed; bound what can be held: the cap, the blocks already wanted
	// when it was passed (at most another cap's worth, as the shares were
	// full), and one block per peer over its share.
	bound := 2*replyLimit + (silent+1)*heldBytes(all[0][0])*2
	most := 0
	// Settled: past the cap, and nothing more on its way from the fleet
	// (the wants of peers over their share wait, held back or deferred).
	eventually(t, 20*time.Second, func() string { return "the silent peers' outboxes at their share: " + e.describe() }, func() bool {
		s := e.stats()
		most = max(most, s.ReplyMemory)
		return most > bound || (s.ReplyMemory >= replyLimit && s.Wants == 0)
	})
	if most > bound {
		t.Fatalf("the silent peers hold %d KiB together, over %d (cap %d): %s", most>>10, bound>>10, replyLimit>>10, e.describe())
	}
	holds(t, time.Second, func() string {
		return fmt.Sprintf("the silent peers hold %d bytes, over %d: %s", e.stats().ReplyMemory, bound, e.describe())
	}, func() bool {
		s := e.stats()
		most = max(most, s.ReplyMemory)
		return s.ReplyMemory <= bound
	})

	reader := newReceiver(t, e, tcpAddr(t, e.front), readWithin(10*time.Second))
	reader.want(t, e.front.ID(), all[silent])
	reader.waitAll(t, e, perSilent, 30*time.Second)
	t.Logf("%d silent peers wanting %d MiB each held at most %d KiB together (cap %d KiB, bound %d KiB); a reader got its %d blocks meanwhile",
		silent, perSilent*blockSize>>20, most>>10, replyLimit>>10, bound>>10, perSilent)

	for _, r := range quiet {
		if err := r.h.Close(); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 20*time.Second, func() string { return "everything let go: " + e.describe() }, func() bool {
		s := e.stats()
		return s.ReplyMemory == 0 && s.ReplyHolders == 0 && s.ReplyBytes == 0
	})
}
