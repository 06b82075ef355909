package bitswap

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"testing"
	"time"

	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"

	"github.com/kitsune-lb/kitsune/downstream"
)

const (
	wantHave  = pb.Message_Wantlist_Have
	wantBlock = pb.Message_Wantlist_Block
)

// Three clients fetching as boxo's does fetch the same 200 blocks, spread
// over two nodes, at once: every client gets every block, the relay asks the fleet for each
// block far fewer times than the clients ask it, and nothing is left
// behind.
func TestClientsFetchSharedBlocks(t *testing.T) {
	e := newEnv(t, Config{})

	const nblocks = 200
	blks := make([]blocks.Block, nblocks)
	want := make(map[cid.Cid][]byte, nblocks)
	cids := make([]cid.Cid, nblocks)
	var onA, onB []blocks.Block
	for i := range blks {
		// Mostly larger than the 1 KiB HAVE threshold, some smaller.
		blks[i] = makeBlock(t, 200+mrand.IntN(4000))
		cids[i] = blks[i].Cid()
		want[cids[i]] = blks[i].RawData()
		if i%2 == 0 {
			onA = append(onA, blks[i])
		} else {
			onB = append(onB, blks[i])
		}
	}
	// A little latency on the nodes, as on a real network, so the clients'
	// wants for a block overlap in the relay.
	a := e.addServerNode(20*time.Millisecond, onA...)
	b := e.addServerNode(20*time.Millisecond, onB...)

	clients := []*fetcher{e.newFetcher(), e.newFetcher(), e.newFetcher()}

	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := c.fetch(ctx, cids)
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			for k, data := range want {
				if !bytes.Equal(got[k], data) {
					errs <- fmt.Errorf("client %d: wrong bytes for %s", i, k)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.Fatal(e.describe())
	}

	e.waitIdle()

	// Dedupe: compare, block by block, the want entries the relay got from
	// the clients with those the nodes got from the relay.
	var up, downTotal, worse int
	for _, c := range cids {
		u := e.upWants.wanted(c)
		d := a.wlog.wanted(c) + b.wlog.wanted(c)
		up += u
		downTotal += d
		if d >= u {
			worse++
		}
	}
	cnt := e.relay.Counters()
	t.Logf("want entries: %d from clients, %d to nodes (counters: received %d, forwarded %d); blocks forwarded at least as often as wanted: %d",
		up, downTotal, cnt.WantsReceived.Load(), cnt.WantsForwarded.Load(), worse)
	if up < len(clients)*nblocks {
		t.Errorf("the clients sent %d want entries, expected at least %d", up, len(clients)*nblocks)
	}
	// Without sharing, each client alone costs the nodes about as many
	// entries as it sends (a want-have, maybe a DONT_HAVE retry, a
	// want-block); shared three ways it is about 0.43 of them.
	if downTotal*10 > up*6 {
		t.Errorf("the nodes got %d want entries for %d from the clients: expected at most 60%%", downTotal, up)
	}
	if worse > nblocks/10 {
		t.Errorf("%d of %d blocks were forwarded at least as often as they were wanted", worse, nblocks)
	}
	if got := cnt.WantsForwarded.Load(); got*10 > cnt.WantsReceived.Load()*6 {
		t.Errorf("WantsForwarded=%d, WantsReceived=%d: expected at most 60%%", got, cnt.WantsReceived.Load())
	}
	if got := cnt.BlocksOut.Load(); got < uint64(len(clients)*nblocks) {
		t.Errorf("BlocksOut=%d, expected at least %d", got, len(clients)*nblocks)
	}
	if got := cnt.Unsolicited.Load(); got != 0 {
		t.Errorf("Unsolicited=%d from honest nodes", got)
	}
	if s := e.stats(); s.Peers != len(clients) {
		t.Errorf("Peers=%d with %d clients connected", s.Peers, len(clients))
	}

	for _, c := range clients {
		_ = c.h.Close()
	}
	eventually(t, 5*time.Second, func() string { return "Peers==0 after the clients left: " + e.describe() },
		func() bool { return e.stats().Peers == 0 })
	if !e.idle() {
		t.Errorf("wants left after the clients left: %s", e.describe())
	}
}

// The reply to each kind of want, from a raw upstream peer.
func TestWantReplies(t *testing.T) {
	e := newEnv(t, Config{})
	large := makeBlock(t, 4000)
	small := makeBlock(t, 1000)
	edge := makeBlock(t, DefaultMaxHaveBlockSize) // exactly at the limit: sent as a block
	onB := makeBlock(t, 3000)
	a := e.addServerNode(0, large, small, edge)
	b := e.addServerNode(0, onB)
	p := e.newRawPeer()
	desc := func(s string) func() string { return func() string { return s + ": " + e.describe() } }

	t.Run("want-have for a large block gets HAVE", func(t *testing.T) {
		p.want(wantHave, true, large.Cid())
		eventually(t, 5*time.Second, desc("HAVE"), func() bool { return p.got.have(large.Cid()) == 1 })
		if _, n := p.got.block(large.Cid()); n != 0 {
			t.Errorf("got the %d-byte block for a want-have", len(large.RawData()))
		}
		if n := p.got.dontHave(large.Cid()); n != 0 {
			t.Errorf("got %d DONT_HAVE for a block node A has", n)
		}
		e.waitIdle()
	})

	t.Run("want-have for a small block gets the block", func(t *testing.T) {
		for _, blk := range []blocks.Block{small, edge} {
			p.want(wantHave, true, blk.Cid())
			eventually(t, 5*time.Second, desc("small block"), func() bool { _, n := p.got.block(blk.Cid()); return n == 1 })
			if data, _ := p.got.block(blk.Cid()); !bytes.Equal(data, blk.RawData()) {
				t.Errorf("wrong bytes for %d-byte block", len(blk.RawData()))
			}
			if n := p.got.have(blk.Cid()); n != 0 {
				t.Errorf("got HAVE as well as the %d-byte block", len(blk.RawData()))
			}
		}
		e.waitIdle()
	})

	t.Run("want-block gets the block", func(t *testing.T) {
		// large was just HAVE'd by A (the relay remembers); onB is only on B.
		p.want(wantBlock, true, large.Cid(), onB.Cid())
		for _, blk := range []blocks.Block{large, onB} {
			eventually(t, 5*time.Second, desc("block"), func() bool { _, n := p.got.block(blk.Cid()); return n == 1 })
			if data, _ := p.got.block(blk.Cid()); !bytes.Equal(data, blk.RawData()) {
				t.Errorf("wrong bytes for %s", blk.Cid())
			}
		}
		e.waitIdle()
	})

	t.Run("missing block with sendDontHave gets one DONT_HAVE after both nodes", func(t *testing.T) {
		missing := missingCid(t)
		failovers := e.relay.Counters().Failovers.Load()
		dontHaves := e.relay.Counters().DontHavesOut.Load()
		asked := make(chan int, 4)
		p.got.mu.Lock()
		p.got.onDont = func(c cid.Cid) {
			if c.Equals(missing) {
				n := 0
				if a.wlog.wanted(missing) > 0 {
					n++
				}
				if b.wlog.wanted(missing) > 0 {
					n++
				}
				asked <- n
			}
		}
		p.got.mu.Unlock()
		defer func() { p.got.mu.Lock(); p.got.onDont = nil; p.got.mu.Unlock() }()

		p.want(wantBlock, true, missing)
		select {
		case n := <-asked:
			if n != 2 {
				t.Errorf("DONT_HAVE came when %d of 2 nodes had been asked", n)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no DONT_HAVE: %s", e.describe())
		}
		holds(t, 300*time.Millisecond, func() string { return fmt.Sprintf("%d DONT_HAVEs", p.got.dontHave(missing)) },
			func() bool { return p.got.dontHave(missing) == 1 })
		if got := e.relay.Counters().Failovers.Load() - failovers; got < 1 {
			t.Errorf("Failovers went up by %d, expected at least 1", got)
		}
		if got := e.relay.Counters().DontHavesOut.Load() - dontHaves; got != 1 {
			t.Errorf("DontHavesOut went up by %d, expected 1", got)
		}
		if _, n := p.got.block(missing); n != 0 || p.got.have(missing) != 0 {
			t.Errorf("got a block or HAVE for a CID no node has")
		}
		s := e.stats()
		if s.Queued != 0 || s.Outstanding[a.h.ID()] != 0 || s.Outstanding[b.h.ID()] != 0 {
			t.Errorf("a want every node refused is still queued or outstanding: %s", e.describe())
		}
		p.cancel(missing)
		e.waitIdle()
	})

	t.Run("missing block without sendDontHave gets nothing", func(t *testing.T) {
		missing := missingCid(t)
		dontHaves := e.relay.Counters().DontHavesOut.Load()
		p.want(wantBlock, false, missing)
		eventually(t, 5*time.Second, desc("both nodes asked"), func() bool {
			return a.wlog.wanted(missing) > 0 && b.wlog.wanted(missing) > 0
		})
		holds(t, 300*time.Millisecond, func() string { return "got a reply for a CID nobody has, without sendDontHave" },
			func() bool { return p.got.about(missing) == 0 })
		if got := e.relay.Counters().DontHavesOut.Load() - dontHaves; got != 0 {
			t.Errorf("DontHavesOut went up by %d", got)
		}
		p.cancel(missing)
		e.waitIdle()
	})
}

// A want-have and a want-block for one CID from two peers: the node is
// asked once, the want-have upgraded in place, and the answer fans out as
// HAVE to one peer and the block to the other.
func TestMixedWantTypesShareOneWant(t *testing.T) {
	e := newEnv(t, Config{})
	blk := makeBlock(t, 3000)
	n := e.addRawNode(blk)
	p1, p2 := e.newRawPeer(), e.newRawPeer()
	p1.want(wantHave, true, blk.Cid())
	eventually(t, 5*time.Second, func() string { return "want-have at node: " + e.describe() }, func() bool { return n.wlog.isOpen(blk.Cid()) })
	if got := n.wlog.wantType(blk.Cid()); got != wantHave {
		t.Errorf("the node was asked for %v, expected a want-have", got)
	}
	p2.wantBlock(blk.Cid())
	eventually(t, 5*time.Second, func() string { return "upgrade at node: " + e.describe() }, func() bool { return n.wlog.wantType(blk.Cid()) == wantBlock })
	if s := e.stats(); s.Wants != 1 || s.Outstanding[n.h.ID()] != 1 {
		t.Errorf("two peers' wants for one CID: %s", e.describe())
	}
	n.answerOpen()
	eventually(t, 5*time.Second, func() string { return "replies: " + e.describe() }, func() bool {
		_, k := p2.got.block(blk.Cid())
		return k == 1 && p1.got.have(blk.Cid()) == 1
	})
	if _, k := p1.got.block(blk.Cid()); k != 0 {
		t.Error("the want-have peer got the large block")
	}
	e.waitIdle()
}

// Cancels and full wantlists reach the table and the node holding the want.
func TestCancel(t *testing.T) {
	// One node that never answers, so wants stay outstanding on it.
	setup := func(t *testing.T) (*env, *rawNode) {
		e := newEnv(t, Config{})
		return e, e.addRawNode()
	}

	t.Run("one wanter", func(t *testing.T) {
		e, n := setup(t)
		p := e.newRawPeer()
		x := missingCid(t)
		p.wantBlock(x)
		eventually(t, 5*time.Second, func() string { return "want at node: " + e.describe() }, func() bool { return n.wlog.isOpen(x) })
		if s := e.stats(); s.Wants != 1 || s.Outstanding[n.h.ID()] != 1 {
			t.Fatalf("after one want: %s", e.describe())
		}
		p.cancel(x)
		e.waitIdle()
		eventually(t, 5*time.Second, func() string { return "cancel at node" }, func() bool { return n.wlog.cancelled(x) == 1 })
	})

	t.Run("two wanters", func(t *testing.T) {
		e, n := setup(t)
		p1, p2 := e.newRawPeer(), e.newRawPeer()
		y, sentinel := missingCid(t), missingCid(t)
		p1.wantBlock(y)
		p2.wantBlock(y)
		eventually(t, 5*time.Second, func() string { return "want at node: " + e.describe() }, func() bool { return n.wlog.isOpen(y) })
		p1.cancel(y)
		// p1's messages arrive in order: once its next want is at the node,
		// its cancel has been handled.
		p1.wantBlock(sentinel)
		eventually(t, 5*time.Second, func() string { return "sentinel at node: " + e.describe() }, func() bool { return n.wlog.isOpen(sentinel) })
		if s := e.stats(); s.Wants != 2 || s.Outstanding[n.h.ID()] != 2 {
			t.Errorf("after one of two wanters cancelled: %s", e.describe())
		}
		if n.wlog.cancelled(y) != 0 {
			t.Errorf("the node got a cancel while p2 still wants the block")
		}
		if n.wlog.wanted(y) != 1 {
			t.Errorf("the node was asked %d times for one CID", n.wlog.wanted(y))
		}
		p2.cancel(y)
		eventually(t, 5*time.Second, func() string { return "cancel at node: " + e.describe() }, func() bool { return n.wlog.cancelled(y) == 1 })
		if s := e.stats(); s.Wants != 1 || s.Outstanding[n.h.ID()] != 1 {
			t.Errorf("after both wanters cancelled: %s", e.describe())
		}
		p1.cancel(sentinel)
		e.waitIdle()
	})

	t.Run("full wantlist replaces", func(t *testing.T) {
		e, n := setup(t)
		p := e.newRawPeer()
		ab := missingCids(t, 2)
		c := missingCid(t)
		p.fullWantlist(ab...)
		eventually(t, 5*time.Second, func() string { return "wants at node: " + e.describe() },
			func() bool { return n.wlog.isOpen(ab[0]) && n.wlog.isOpen(ab[1]) })
		p.fullWantlist(ab[1], c)
		eventually(t, 5*time.Second, func() string { return "new want at node: " + e.describe() }, func() bool { return n.wlog.isOpen(c) })
		eventually(t, 5*time.Second, func() string { return "cancel at node: " + e.describe() }, func() bool { return n.wlog.cancelled(ab[0]) == 1 })
		if s := e.stats(); s.Wants != 2 || s.Outstanding[n.h.ID()] != 2 {
			t.Errorf("after the second full wantlist: %s", e.describe())
		}
		if n.wlog.cancelled(ab[1]) != 0 || n.wlog.wanted(ab[1]) != 1 {
			t.Errorf("a want kept by the full wantlist was cancelled or sent again")
		}
		// An empty full wantlist cancels everything.
		p.fullWantlist()
		e.waitIdle()
		eventually(t, 5*time.Second, func() string { return "cancels at node" }, func() bool {
			return n.wlog.cancelled(ab[1]) == 1 && n.wlog.cancelled(c) == 1
		})
	})
}

// A peer that leaves takes its wants with it, outstanding and queued.
func TestUpstreamDisconnect(t *testing.T) {
	e := newEnv(t, Config{MaxInFlightPerNode: 30, PeerBufferBytes: 1 << 30}) // all 100 out: not held back per peer
	n := e.addRawNode()
	p := e.newRawPeer()
	cs := missingCids(t, 100)
	p.wantBlock(cs...)
	eventually(t, 5*time.Second, func() string { return "wants in the table: " + e.describe() }, func() bool {
		s := e.stats()
		return s.Wants == 100 && s.Queued == 70 && s.Outstanding[n.h.ID()] == 30
	})
	if s := e.stats(); s.Peers != 1 {
		t.Errorf("Peers=%d with one peer that sent wants", s.Peers)
	}
	_ = p.h.Close()
	e.waitIdle()
	if s := e.stats(); s.Peers != 0 {
		t.Errorf("Peers=%d after the only peer left", s.Peers)
	}
	// Everything the node was asked for is cancelled there.
	eventually(t, 5*time.Second, func() string { return fmt.Sprintf("cancels at node, open: %d", len(n.wlog.openCids())) },
		func() bool { return len(n.wlog.openCids()) == 0 })
}

func TestLimits(t *testing.T) {
	t.Run("wants per peer", func(t *testing.T) {
		e := newEnv(t, Config{MaxWantsPerPeer: 10})
		n := e.addRawNode()
		p := e.newRawPeer()
		p.wantBlock(missingCids(t, 50)...)
		eventually(t, 5*time.Second, func() string { return "dropped wants: " + e.describe() },
			func() bool { return e.relay.Counters().DroppedWants.Load() == 40 })
		eventually(t, 5*time.Second, func() string { return "10 wants at node" }, func() bool { w, _, _, _ := n.wlog.totals(); return w == 10 })
		if s := e.stats(); s.Wants != 10 {
			t.Errorf("Wants=%d with a 10-want limit: %s", s.Wants, e.describe())
		}
		// The limit is per peer: another peer has its own.
		p2 := e.newRawPeer()
		p2.wantBlock(missingCids(t, 12)...)
		eventually(t, 5*time.Second, func() string { return "second peer's wants: " + e.describe() },
			func() bool { return e.stats().Wants == 20 && e.relay.Counters().DroppedWants.Load() == 42 })
	})

	t.Run("message size", func(t *testing.T) {
		e := newEnv(t, Config{MaxMessageSize: 2000})
		blk := makeBlock(t, 3000)
		e.addServerNode(0, blk)
		p := e.newRawPeer()
		big := missingCids(t, 100) // about 40 bytes an entry
		p.wantBlock(big...)
		eventually(t, 5*time.Second, func() string { return "dropped message: " + e.describe() },
			func() bool { return e.relay.Counters().DroppedMessages.Load() == 1 })
		if s := e.stats(); s.Wants != 0 {
			t.Errorf("an oversized message left wants: %s", e.describe())
		}
		if got := e.relay.Counters().WantsReceived.Load(); got != 0 {
			t.Errorf("WantsReceived=%d from a dropped message", got)
		}
		p.wantBlock(blk.Cid())
		eventually(t, 5*time.Second, func() string { return "block after a dropped message: " + e.describe() },
			func() bool { _, n := p.got.block(blk.Cid()); return n == 1 })
		if data, _ := p.got.block(blk.Cid()); !bytes.Equal(data, blk.RawData()) {
			t.Error("wrong bytes")
		}
		if p.got.total() != 1 {
			t.Errorf("got %d replies, expected just the block", p.got.total())
		}
		e.waitIdle()
	})
}

// With two wants allowed in flight on the only node, the rest wait in the
// relay and go out as answers come back.
func TestInFlightCapPerNode(t *testing.T) {
	e := newEnv(t, Config{MaxInFlightPerNode: 2})
	blks := make([]blocks.Block, 7)
	for i := range blks {
		blks[i] = makeBlock(t, 2000)
	}
	n := e.addRawNode(blks...)
	p := e.newRawPeer()
	for _, b := range blks {
		p.wantBlock(b.Cid())
	}
	eventually(t, 5*time.Second, func() string { return "queue: " + e.describe() }, func() bool {
		s := e.stats()
		return s.Wants == len(blks) && s.Queued == len(blks)-2 && s.Outstanding[n.h.ID()] == 2
	})
	// The relay counts a want out when it sends it; the node logs it when
	// it has read it, which on a loaded machine can come later: wait for
	// both wants to arrive, then check that no third one follows.
	eventually(t, 5*time.Second, func() string { return "the node did not get its 2 wants" },
		func() bool { w, _, _, _ := n.wlog.totals(); return w >= 2 })
	holds(t, 100*time.Millisecond, func() string { return "the node got more than 2 wants" },
		func() bool { w, _, _, _ := n.wlog.totals(); return w == 2 })

	// The node answers, late, whatever it has been asked for; each answer
	// lets queued wants out.
	deadline := time.Now().Add(10 * time.Second)
	for received := 0; received < len(blks); {
		if time.Now().After(deadline) {
			t.Fatalf("queue did not drain: %s", e.describe())
		}
		if s := e.stats(); s.Outstanding[n.h.ID()] > 2 || s.Outstanding[n.h.ID()] < 0 {
			t.Fatalf("Outstanding out of bounds: %s", e.describe())
		}
		time.Sleep(20 * time.Millisecond)
		n.answerOpen()
		received = 0
		for _, b := range blks {
			if _, k := p.got.block(b.Cid()); k > 0 {
				received++
			}
		}
	}
	e.waitIdle()
	if _, _, _, maxOpen := n.wlog.totals(); maxOpen > 2 {
		t.Errorf("the node had %d wants open at once, cap 2", maxOpen)
	}
	for _, b := range blks {
		if data, k := p.got.block(b.Cid()); k != 1 || !bytes.Equal(data, b.RawData()) {
			t.Errorf("block %s: got it %d times", b.Cid(), k)
		}
	}
}

// A node that leaves, or is ejected while still connected, hands its wants
// to the other node, and the clients still get their blocks.
func TestNodeDownMovesWants(t *testing.T) {
	for _, connected := range []bool{false, true} {
		t.Run(fmt.Sprintf("connected=%v", connected), func(t *testing.T) { testNodeDown(t, connected) })
	}
}

func testNodeDown(t *testing.T, connected bool) {
	e := newEnv(t, Config{})
	large, other, moved := makeBlock(t, 5000), makeBlock(t, 5000), makeBlock(t, 5000)
	// The frozen node comes first, so the round robin picks it first.
	frozen := e.addRawNode()
	good := e.addServerNode(0, large, other, moved)

	c := e.newFetcher()
	p := e.newRawPeer()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	got := make(chan []byte, 1)
	errc := make(chan error, 1)
	go func() {
		m, err := c.fetch(ctx, []cid.Cid{large.Cid()})
		if err != nil {
			errc <- err
			return
		}
		got <- m[large.Cid()]
	}()
	eventually(t, 5*time.Second, func() string { return "client's want at the frozen node: " + e.describe() },
		func() bool { return frozen.wlog.isOpen(large.Cid()) })
	// Round robin: this one goes to the good node, the next to the frozen.
	p.wantBlock(other.Cid())
	eventually(t, 5*time.Second, func() string { return "raw peer's first block: " + e.describe() },
		func() bool { _, n := p.got.block(other.Cid()); return n == 1 })
	p.wantBlock(moved.Cid())
	eventually(t, 5*time.Second, func() string { return "raw peer's want at the frozen node: " + e.describe() },
		func() bool { return frozen.wlog.isOpen(moved.Cid()) })

	failovers := e.relay.Counters().Failovers.Load()
	if s := e.stats(); s.Outstanding[frozen.h.ID()] != 2 {
		t.Fatalf("expected two wants outstanding on the frozen node: %s", e.describe())
	}
	if !connected {
		_ = frozen.h.Close()
	}
	e.down.setUp(frozen.h.ID(), false)
	e.relay.NodeDown(frozen.h.ID(), connected)

	select {
	case data := <-got:
		if !bytes.Equal(data, large.RawData()) {
			t.Error("wrong bytes")
		}
	case err := <-errc:
		t.Fatalf("client: %v; %s", err, e.describe())
	case <-ctx.Done():
		t.Fatalf("client never got the block: %s", e.describe())
	}
	eventually(t, 5*time.Second, func() string { return "raw peer's moved block: " + e.describe() },
		func() bool { _, n := p.got.block(moved.Cid()); return n == 1 })
	if data, _ := p.got.block(moved.Cid()); !bytes.Equal(data, moved.RawData()) {
		t.Error("wrong bytes")
	}
	if d := e.relay.Counters().Failovers.Load() - failovers; d < 2 {
		t.Errorf("Failovers went up by %d, expected 2", d)
	}
	if good.wlog.wanted(large.Cid()) == 0 || good.wlog.wanted(moved.Cid()) == 0 {
		t.Error("the good node was never asked")
	}
	if connected {
		// Still connected: its ledger still holds the wants, so they are
		// cancelled there.
		eventually(t, 5*time.Second, func() string { return "cancels at the ejected node" }, func() bool {
			return frozen.wlog.cancelled(large.Cid()) == 1 && frozen.wlog.cancelled(moved.Cid()) == 1
		})
	}
	e.waitIdle()
	if n := e.stats().Outstanding[frozen.h.ID()]; n != 0 {
		t.Errorf("the node that left still has %d outstanding: %s", n, e.describe())
	}
	if n := e.down.outcomes(frozen.h.ID(), downstream.OutcomeCancelled); n != 2 {
		t.Errorf("the node that left got %d Done(Cancelled), expected 2", n)
	}
}

// A node that has wants outstanding and says nothing for longer than its
// timeout loses them to another node, and the pool hears of the failure.
func TestSilentNodeLosesWants(t *testing.T) {
	e := newEnv(t, Config{CheckInterval: 20 * time.Millisecond})
	e.down.setTimeout(300 * time.Millisecond)
	blk := makeBlock(t, 3000)
	silent := e.addRawNode() // first in the round robin
	e.addServerNode(0, blk)
	p := e.newRawPeer()
	start := time.Now()
	p.wantBlock(blk.Cid())
	eventually(t, 5*time.Second, func() string { return "want at the silent node: " + e.describe() },
		func() bool { return silent.wlog.isOpen(blk.Cid()) })
	eventually(t, 5*time.Second, func() string { return "block via the other node: " + e.describe() },
		func() bool { _, n := p.got.block(blk.Cid()); return n == 1 })
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("the want moved after %v, before the node's 300ms timeout", d)
	}
	if n := e.relay.Counters().Timeouts.Load(); n != 1 {
		t.Errorf("Timeouts=%d, expected 1", n)
	}
	if n := e.down.outcomes(silent.h.ID(), downstream.OutcomeFailed); n != 1 {
		t.Errorf("Done(Failed) for the silent node: %d, expected 1", n)
	}
	eventually(t, 5*time.Second, func() string { return "cancel at the silent node" }, func() bool { return silent.wlog.cancelled(blk.Cid()) == 1 })
	e.waitIdle()
}

// Blocks a node sends that nobody wants, or whose bytes are not what was
// asked for, go nowhere.
func TestUnsolicitedBlocks(t *testing.T) {
	e := newEnv(t, Config{})
	n := e.addRawNode()
	p := e.newRawPeer()
	bystander := e.newRawPeer()

	x := makeBlock(t, 3000)
	bystander.wantBlock(missingCid(t))
	p.wantBlock(x.Cid())
	eventually(t, 5*time.Second, func() string { return "want at node: " + e.describe() }, func() bool { return n.wlog.isOpen(x.Cid()) })

	// A block nobody asked for.
	n.sendBlocks(makeBlock(t, 3000))
	eventually(t, 5*time.Second, func() string { return "unsolicited counted: " + e.describe() },
		func() bool { return e.relay.Counters().Unsolicited.Load() == 1 })

	// A block sent under x's CID whose bytes are something else: on the
	// wire only the CID prefix travels, so it hashes to another CID.
	forged, err := blocks.NewBlockWithCid([]byte("not the bytes you are looking for, padded out a little"), x.Cid())
	if err != nil {
		t.Fatal(err)
	}
	n.sendBlocks(forged)
	eventually(t, 5*time.Second, func() string { return "forged block counted: " + e.describe() },
		func() bool { return e.relay.Counters().Unsolicited.Load() == 2 })

	// A block from a peer on the back host that is not a fleet node.
	stranger := e.newRawNode()
	connect(t, e.back, stranger.h)
	stranger.sendBlocks(x)

	holds(t, 300*time.Millisecond, func() string { return "an upstream peer got a block it should not have" },
		func() bool { return p.got.total() == 0 && bystander.got.total() == 0 })
	if s := e.stats(); s.Wants != 2 || s.Outstanding[n.h.ID()] != 2 {
		t.Errorf("the wants should still be outstanding: %s", e.describe())
	}
	if got := e.relay.Counters().BlocksOut.Load(); got != 0 {
		t.Errorf("BlocksOut=%d", got)
	}

	// The genuine block still goes through.
	n.sendBlocks(x)
	eventually(t, 5*time.Second, func() string { return "genuine block: " + e.describe() },
		func() bool { _, k := p.got.block(x.Cid()); return k == 1 })
	if data, _ := p.got.block(x.Cid()); !bytes.Equal(data, x.RawData()) {
		t.Error("wrong bytes")
	}
	if bystander.got.total() != 0 {
		t.Error("the bystander got a block")
	}
	if got := e.relay.Counters().Unsolicited.Load(); got != 2 {
		t.Errorf("Unsolicited=%d, expected 2", got)
	}
	// Both bad blocks were held against the node that sent them.
	if got := e.down.penalties(n.h.ID()); got != 2 {
		t.Errorf("node penalised %d times for 2 blocks matching nothing it was asked, want 2", got)
	}
	if got := e.relay.Counters().BadBlocks.Load(); got != 2 {
		t.Errorf("BadBlocks=%d, expected 2", got)
	}
}

// The pool makes a node pickable before it calls NodeUp, so a want can
// reach the node in between; NodeUp must not forget it (the first version
// zeroed the node's outstanding count and reset its outbox here).
func TestNodeUpKeepsWantsAlreadyOnNode(t *testing.T) {
	e := newEnv(t, Config{})
	blk := makeBlock(t, 2000)
	n := e.newRawNode(blk)
	connect(t, e.back, n.h)
	e.down.add(n.h.ID()) // pickable, NodeUp not called yet
	p := e.newRawPeer()
	p.wantBlock(blk.Cid())
	eventually(t, 5*time.Second, func() string { return "want at node: " + e.describe() }, func() bool { return n.wlog.isOpen(blk.Cid()) })

	e.relay.NodeUp(n.h.ID())
	if got := e.stats().Outstanding[n.h.ID()]; got != 1 {
		t.Errorf("Outstanding=%d after NodeUp with one want on the node, expected 1", got)
	}
	n.answerOpen()
	eventually(t, 5*time.Second, func() string { return "block: " + e.describe() }, func() bool { _, k := p.got.block(blk.Cid()); return k == 1 })
	eventually(t, 2*time.Second, func() string { return "Outstanding back to 0: " + e.describe() }, func() bool {
		return e.stats().Wants == 0 && e.stats().Outstanding[n.h.ID()] == 0
	})
}
