package bitswap

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	mh "github.com/multiformats/go-multihash"
)

// collect reads a fetch's channel to its end.
func collect(t *testing.T, ch <-chan Result, d time.Duration) map[cid.Cid]Result {
	t.Helper()
	got := make(map[cid.Cid]Result)
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case r, ok := <-ch:
			if !ok {
				return got
			}
			if _, dup := got[r.Cid]; dup {
				t.Errorf("two results for %s", r.Cid)
			}
			got[r.Cid] = r
		case <-timer.C:
			t.Fatalf("fetch channel still open after %v (%d results)", d, len(got))
		}
	}
}

// fetchEmptied checks that nothing of a local fetch is left anywhere.
func (e *env) fetchEmptied() {
	e.t.Helper()
	e.waitIdle()
	eventually(e.t, 5*time.Second, func() string { return "no local fetch left: " + e.describe() }, func() bool {
		s := e.stats()
		return s.Local == 0 && s.Peers == 0 && s.Refused == 0
	})
}

func TestFetchThroughFleet(t *testing.T) {
	e := newEnv(t, Config{})
	var bs []blocks.Block
	var cs []cid.Cid
	for i := 0; i < 40; i++ {
		b := makeBlock(t, 1000+i*300)
		bs = append(bs, b)
		cs = append(cs, b.Cid())
	}
	// Each node holds half, so most wants fail over once.
	a := e.addServerNode(0, bs[:20]...)
	b := e.addServerNode(0, bs[20:]...)
	id := inlineCid(t, []byte("inline"))

	ch, err := e.relay.Fetch(context.Background(), append(cs, id, cs[0])...)
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, ch, 10*time.Second)
	if len(got) != len(bs)+1 {
		t.Fatalf("%d results for %d CIDs", len(got), len(bs)+1)
	}
	for _, want := range bs {
		r := got[want.Cid()]
		if r.Err != nil || r.Block == nil || !bytes.Equal(r.Block.RawData(), want.RawData()) {
			t.Fatalf("%s: err %v, block %v", want.Cid(), r.Err, r.Block != nil)
		}
	}
	if r := got[id]; r.Err != nil || string(r.Block.RawData()) != "inline" {
		t.Errorf("identity CID: %+v", r)
	}
	if got := e.relay.Counters().LocalBlocks.Load(); got != uint64(len(bs)+1) {
		t.Errorf("LocalBlocks=%d, want %d", got, len(bs)+1)
	}
	if a.wlog.wanted(bs[0].Cid()) == 0 && b.wlog.wanted(bs[0].Cid()) == 0 {
		t.Error("no node was asked")
	}
	e.fetchEmptied()
}

func inlineCid(t *testing.T, data []byte) cid.Cid {
	t.Helper()
	h, err := mh.Sum(data, mh.IDENTITY, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.Raw, h)
}

// A CID no node holds ends with ErrNotFound once every node said
// DONT_HAVE; the fetch's other CIDs are unaffected.
func TestFetchNotFound(t *testing.T) {
	e := newEnv(t, Config{})
	x := makeBlock(t, 2000)
	e.addServerNode(0, x)
	e.addServerNode(0)
	missing := missingCid(t)
	ch, err := e.relay.Fetch(context.Background(), x.Cid(), missing)
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, ch, 10*time.Second)
	if r := got[x.Cid()]; r.Err != nil || r.Block == nil {
		t.Errorf("held block: %+v", r)
	}
	if r := got[missing]; !ipld.IsNotFound(r.Err) || r.Block != nil {
		t.Errorf("missing block: %+v", r)
	}
	e.fetchEmptied()
}

// Cancelling the context cancels the wants at the node and empties every
// table, even though the node never answered.
func TestFetchCancelled(t *testing.T) {
	e := newEnv(t, Config{})
	n := e.addRawNode()
	cs := missingCids(t, 5)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := e.relay.Fetch(ctx, cs...)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string { return "wants at node: " + e.describe() }, func() bool {
		for _, c := range cs {
			if !n.wlog.isOpen(c) {
				return false
			}
		}
		return true
	})
	if s := e.stats(); s.Local != 1 || s.Peers != 1 || s.Wants != 5 {
		t.Errorf("while fetching: %s", e.describe())
	}
	cancel()
	if got := collect(t, ch, 5*time.Second); len(got) != 0 {
		t.Errorf("results after cancel: %v", got)
	}
	eventually(t, 5*time.Second, func() string { return "cancels at node" }, func() bool {
		for _, c := range cs {
			if n.wlog.cancelled(c) == 0 {
				return false
			}
		}
		return true
	})
	e.fetchEmptied()
}

// A node that answers a local want with bytes that are not the block is
// not believed (and penalised); the genuine block from another node is
// delivered.
func TestFetchForgedBlock(t *testing.T) {
	e := newEnv(t, Config{})
	x := makeBlock(t, 3000)
	bad := e.addRawNode()
	ch, err := e.relay.Fetch(context.Background(), x.Cid())
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string { return "want at node" }, func() bool { return bad.wlog.isOpen(x.Cid()) })
	forged, err := blocks.NewBlockWithCid([]byte("forged bytes under someone else's CID"), x.Cid())
	if err != nil {
		t.Fatal(err)
	}
	bad.sendBlocks(forged)
	eventually(t, 5*time.Second, func() string { return "forged block penalised: " + e.describe() },
		func() bool { return e.down.penalties(bad.h.ID()) == 1 })
	select {
	case r := <-ch:
		t.Fatalf("a result before any genuine block: %+v", r)
	default:
	}
	// The node goes silent; the want moves to a node that has the block.
	e.addServerNode(0, x)
	bad.sendDontHave(x.Cid())
	got := collect(t, ch, 10*time.Second)
	if r := got[x.Cid()]; r.Err != nil || !bytes.Equal(r.Block.RawData(), x.RawData()) {
		t.Fatalf("result %+v", r)
	}
	e.fetchEmptied()
}

// A node that goes down mid-fetch loses its wants to another node, as a
// Bitswap client's would.
func TestFetchNodeDownFailsOver(t *testing.T) {
	e := newEnv(t, Config{})
	var bs []blocks.Block
	var cs []cid.Cid
	for i := 0; i < 10; i++ {
		b := makeBlock(t, 5000)
		bs = append(bs, b)
		cs = append(cs, b.Cid())
	}
	first := e.addRawNode(bs...)
	ch, err := e.relay.Fetch(context.Background(), cs...)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string { return "wants at first node" }, func() bool { return len(first.wlog.openCids()) == len(cs) })
	first.sendBlocks(bs[:3]...)
	second := e.addServerNode(0, bs...)
	e.down.setUp(first.h.ID(), false)
	e.relay.NodeDown(first.h.ID(), true)
	got := collect(t, ch, 10*time.Second)
	for _, b := range bs {
		if r := got[b.Cid()]; r.Err != nil || !bytes.Equal(r.Block.RawData(), b.RawData()) {
			t.Fatalf("%s: %+v", b.Cid(), r)
		}
	}
	if second.wlog.wanted(bs[9].Cid()) == 0 {
		t.Error("the second node was never asked")
	}
	e.fetchEmptied()
}

// A reader slower than the fleet holds at most about the buffer budget:
// further wants wait in Kitsune (or their blocks are set aside and
// fetched again) until it caught up.
func TestFetchSlowReader(t *testing.T) {
	e := newEnv(t, Config{PeerBufferBytes: 20000})
	var bs []blocks.Block
	var cs []cid.Cid
	for i := 0; i < 30; i++ {
		b := makeBlock(t, 4000)
		bs = append(bs, b)
		cs = append(cs, b.Cid())
	}
	e.addServerNode(0, bs...)
	ch, err := e.relay.Fetch(context.Background(), cs...)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string { return "wants held back or blocks deferred: " + e.describe() },
		func() bool { c := e.relay.Counters(); return c.Deferred.Load()+c.HeldWants.Load() > 0 })
	got := collect(t, ch, 20*time.Second)
	if len(got) != len(bs) {
		t.Fatalf("%d of %d", len(got), len(bs))
	}
	for _, b := range bs {
		if r := got[b.Cid()]; r.Err != nil || !bytes.Equal(r.Block.RawData(), b.RawData()) {
			t.Fatalf("%s: %+v", b.Cid(), r)
		}
	}
	e.fetchEmptied()
}

// Bad calls are refused with nothing changed; Close ends open fetches.
func TestFetchLimitsAndClose(t *testing.T) {
	e := newEnv(t, Config{MaxWantsPerPeer: 4})
	e.addRawNode()
	if _, err := e.relay.Fetch(context.Background(), missingCids(t, 5)...); err == nil {
		t.Error("5 CIDs with a cap of 4 accepted")
	}
	if _, err := e.relay.Fetch(context.Background(), cid.Undef); err == nil {
		t.Error("an undefined CID accepted")
	}
	if s := e.stats(); s.Local != 0 || s.Wants != 0 {
		t.Errorf("refused calls left state: %s", e.describe())
	}
	ch, err := e.relay.Fetch(context.Background(), missingCids(t, 2)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := e.relay.Close(ctx); err != nil {
		t.Logf("close: %v", err)
	}
	if got := collect(t, ch, 5*time.Second); len(got) != 0 {
		t.Errorf("results after close: %v", got)
	}
	if _, err := e.relay.Fetch(context.Background(), missingCid(t)); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Fetch after Close: %v", err)
	}
	if s := e.stats(); s.Local != 0 || s.Wants != 0 || s.Peers != 0 {
		t.Errorf("after close: %s", e.describe())
	}
}

// The fetch checks every block against its CID itself, whatever the core
// hands it.
func TestLocalFetchVerifiesBlocks(t *testing.T) {
	x := makeBlock(t, 100)
	l := &localFetch{pending: map[cid.Cid]struct{}{x.Cid(): {}}, budget: 1 << 20, wake: make(chan struct{}, 1)}
	forged, err := blocks.NewBlockWithCid([]byte("other bytes"), x.Cid())
	if err != nil {
		t.Fatal(err)
	}
	if l.block(forged) {
		t.Error("forged block taken")
	}
	if len(l.queue) != 0 || len(l.pending) != 1 {
		t.Fatalf("forged block accepted: queue %d pending %d", len(l.queue), len(l.pending))
	}
	l.block(x)
	if len(l.queue) != 1 || len(l.pending) != 0 || l.bytes != 100 {
		t.Fatalf("genuine block: queue %d pending %d bytes %d", len(l.queue), len(l.pending), l.bytes)
	}
	l.block(x) // a second copy is not queued twice
	if len(l.queue) != 1 {
		t.Fatal("duplicate queued")
	}
}
