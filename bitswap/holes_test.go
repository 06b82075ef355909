package bitswap

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
	"go.uber.org/zap/zaptest"

	"github.com/kitsune-lb/kitsune/downstream"
)

// Tests of the protocol holes of issue 11, each named after the behaviour.

func identityCid(t *testing.T) (cid.Cid, []byte) {
	t.Helper()
	data := make([]byte, 32)
	_, _ = rand.Read(data)
	h, err := mh.Sum(data, mh.IDENTITY, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.Raw, h), data
}

// oversizedCid has a 200-byte SHAKE-256 digest: 205 bytes, over the 168 a
// Kubo node accepts.
func oversizedCid(t *testing.T) cid.Cid {
	t.Helper()
	digest := make([]byte, 200)
	_, _ = rand.Read(digest)
	h, err := mh.Encode(digest, mh.SHAKE_256)
	if err != nil {
		t.Fatal(err)
	}
	c := cid.NewCidV1(cid.Raw, h)
	if c.ByteLen() <= maxCidSize {
		t.Fatalf("test CID is %d bytes, not over %d", c.ByteLen(), maxCidSize)
	}
	return c
}

// Hole 1: a Kubo node ignores identity CIDs and CIDs over its size limit
// without a reply. Kitsune answers identity CIDs from the CID and refuses
// oversized ones, so 10,000 of them reach no node, move no node's figures,
// and do not delay another client's fetch.
func TestIdentityAndOversizedCidsNeverReachNodes(t *testing.T) {
	e := newEnv(t, Config{})
	blk := makeBlock(t, 4000)
	n := e.addServerNode(0, blk)
	p := e.newRawPeer()

	const k = 5000
	ids := make(map[cid.Cid][]byte, k)
	big := make([]cid.Cid, 0, k)
	msg := bsmsg.New(false)
	for range k {
		c, data := identityCid(t)
		ids[c] = data
		msg.AddEntry(c, 1, pb.Message_Wantlist_Block, true)
		o := oversizedCid(t)
		big = append(big, o)
		msg.AddEntry(o, 1, pb.Message_Wantlist_Have, true)
	}
	p.send(msg)

	f := e.newFetcher()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	got, err := f.fetch(ctx, []cid.Cid{blk.Cid()})
	if err != nil {
		t.Fatalf("another client's fetch: %v; %s", err, e.describe())
	}
	if !bytes.Equal(got[blk.Cid()], blk.RawData()) {
		t.Fatal("wrong bytes for the other client")
	}

	eventually(t, 10*time.Second, func() string { return "every identity block and DONT_HAVE: " + e.describe() }, func() bool {
		return p.got.total() == 2*k
	})
	for c, data := range ids {
		if b, times := p.got.block(c); times != 1 || !bytes.Equal(b, data) {
			t.Fatalf("identity CID %s: got %d blocks", c, times)
		}
	}
	for _, c := range big {
		if p.got.dontHave(c) != 1 {
			t.Fatalf("oversized CID: %d DONT_HAVEs", p.got.dontHave(c))
		}
	}
	if _, _, distinct, _ := n.wlog.totals(); distinct != 1 {
		t.Errorf("the node was asked for %d CIDs; only the other client's block should reach it", distinct)
	}
	if s := e.stats(); s.Wants != 0 || s.Queued != 0 {
		t.Errorf("wants left in the table: %s", e.describe())
	}
	e.waitIdle()
}

// Hole 5: with every node ejected the pool still offers the least bad
// ones, and the queue must keep draining onto them.
func TestQueueDrainsWhenAllNodesEjected(t *testing.T) {
	e := newEnv(t, Config{MaxInFlightPerNode: 1})
	b1, b2 := makeBlock(t, 2000), makeBlock(t, 2000)
	n := e.addRawNode(b1, b2)
	p := e.newRawPeer()
	p.wantBlock(b1.Cid(), b2.Cid())
	eventually(t, 5*time.Second, func() string { return "one out, one queued: " + e.describe() }, func() bool {
		s := e.stats()
		return s.Queued == 1 && s.Outstanding[n.h.ID()] == 1
	})
	e.down.eject(n.h.ID())
	e.relay.NodeDown(n.h.ID(), true)
	deadline := time.Now().Add(10 * time.Second)
	for {
		n.answerOpen()
		_, k1 := p.got.block(b1.Cid())
		_, k2 := p.got.block(b2.Cid())
		if k1 == 1 && k2 == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("blocks %d and %d of 1 each with the only node ejected: %s", k1, k2, e.describe())
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.waitIdle()
}

// Hole 6: one silence is one failure of the node's, however many wants it
// held up; three wants out used to mean three failures and an ejection.
func TestOneStallCountsOneFailure(t *testing.T) {
	e := newEnv(t, Config{CheckInterval: 10 * time.Millisecond})
	e.down.setTimeout(300 * time.Millisecond)
	a, b := e.addRawNode(), e.addRawNode()
	p := e.newRawPeer()
	p.wantBlock(missingCids(t, 6)...) // three on each, round robin
	eventually(t, 5*time.Second, func() string { return "both silences seen: " + e.describe() }, func() bool {
		return e.relay.Counters().Timeouts.Load() >= 6
	})
	e.down.setTimeout(time.Hour) // no second silence
	for _, n := range []*rawNode{a, b} {
		id := n.h.ID()
		if got := e.down.penalties(id) + e.down.outcomes(id, downstream.OutcomeFailed); got != 1 {
			t.Errorf("node %s: %d failures for one silence with three wants out", id, got)
		}
	}
}

// Hole 7: a miss (every node said DONT_HAVE) makes a node search the
// network within a per-peer allowance: a small one for broadcasts (every
// Kubo client broadcasts want-have, not asking for DONT_HAVE, for
// whatever it looks for), a larger one for wants addressed to Kitsune.
func TestMissFetchesBoundedPerPeerBroadcastsLeast(t *testing.T) {
	e := newEnv(t, Config{FetchMisses: true, MissFetchBurst: 32, MissFetchRate: 1e-6, MissFetchesPerNode: 100})
	e.addServerNode(0)
	p := e.newRawPeer()
	p.want(pb.Message_Wantlist_Have, false, missingCids(t, 20)...) // a broadcast
	eventually(t, 5*time.Second, func() string { return "every broadcast refused: " + e.describe() }, func() bool {
		return e.stats().Refused == 20
	})
	if n := e.down.fetchCount(); n != 2 {
		t.Fatalf("%d miss fetches for 20 want-have broadcasts; the allowance is 32/16 = 2", n)
	}
	addressed := missingCids(t, 40)
	p.wantBlock(addressed[:20]...)
	p.want(pb.Message_Wantlist_Have, true, addressed[20:]...)
	eventually(t, 5*time.Second, func() string { return "DONT_HAVE for every addressed want: " + e.describe() }, func() bool {
		return p.got.total() == len(addressed)
	})
	if n := e.down.fetchCount(); n != 2+32 {
		t.Errorf("%d miss fetches for 40 addressed wants from one peer with a burst of 32 (and 2 before)", n)
	}
	// Another peer has its own allowance.
	q := e.newRawPeer()
	q.wantBlock(missingCid(t))
	eventually(t, 5*time.Second, func() string { return "the other peer's DONT_HAVE: " + e.describe() }, func() bool { return q.got.total() == 1 })
	if n := e.down.fetchCount(); n != 2+32+1 {
		t.Errorf("%d miss fetches after another peer's want-block; expected 35", n)
	}
}

// sendNet is a replySender the test scripts, on a fake clock: it cuts
// off the first fail messages (a reset), and a message of size bytes
// takes size/rate to arrive.
type sendNet struct {
	mu    sync.Mutex
	now   time.Time
	fail  int
	rate  float64 // bytes per second; 0 for instant
	sizes []int
	got   map[cid.Cid]int
	pres  map[cid.Cid]int
}

func (n *sendNet) send(_ context.Context, _ peer.ID, m bsmsg.BitSwapMessage, hold time.Duration, done func(replyEvents)) {
	size := 0
	for _, b := range m.Blocks() {
		size += len(b.RawData())
	}
	n.mu.Lock()
	if n.now.IsZero() {
		n.now = time.Unix(1000, 0)
	}
	ev := replyEvents{opened: n.now}
	if n.rate > 0 {
		n.now = n.now.Add(time.Duration(float64(size) / n.rate * float64(time.Second)))
	}
	n.now = n.now.Add(time.Millisecond)
	if n.fail > 0 {
		n.fail--
		ev.wrote, ev.closed, ev.ended, ev.endErr = n.now, n.now, n.now, errors.New("stream reset")
		n.mu.Unlock()
		done(ev)
		return
	}
	// A receiver that reads first (boxo): it closes after our close, so a
	// held probe ends with our close.
	ev.wrote = n.now
	if hold > 0 {
		ev.held = true
		n.now = n.now.Add(hold)
	}
	ev.closed = n.now
	n.now = n.now.Add(time.Millisecond)
	ev.ended = n.now
	n.sizes = append(n.sizes, size)
	for _, b := range m.Blocks() {
		n.got[b.Cid()]++
	}
	for _, bp := range m.BlockPresences() {
		n.pres[bp.Cid]++
	}
	n.mu.Unlock()
	done(ev)
}

func (n *sendNet) delivered() (blocks, presences int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.got), len(n.pres)
}

// Hole 3: a reply whose send failed is put back and sent again, not lost:
// Helia asks a peer for each block once.
func TestFailedReplySendKeepsBlocks(t *testing.T) {
	net := &sendNet{fail: 2, got: make(map[cid.Cid]int), pres: make(map[cid.Cid]int)}
	o := newReplyOutbox(context.Background(), "peer", net, zaptest.NewLogger(t), 0, replyWindow, replyHooks{})
	defer o.close()
	for range 10 {
		o.addBlock(makeBlock(t, 4096))
	}
	c := missingCid(t)
	o.addPresence(c, pb.Message_DontHave)
	eventually(t, 5*time.Second, func() string {
		b, p := net.delivered()
		return fmt.Sprintf("10 blocks and 1 presence, got %d and %d", b, p)
	}, func() bool {
		b, p := net.delivered()
		return b == 10 && p == 1
	})
	net.mu.Lock()
	defer net.mu.Unlock()
	for k, n := range net.got {
		if n != 1 {
			t.Errorf("block %s sent %d times", k, n)
		}
	}
}

// Hole 3: reply messages follow the peer's measured rate, so each arrives
// within the receiver's deadline on a slow link; a fast peer keeps
// 1 MiB messages.
func TestReplyMessagesFollowPeerRate(t *testing.T) {
	const rate = 4 << 20 // bytes per second
	net := &sendNet{rate: rate, got: make(map[cid.Cid]int), pres: make(map[cid.Cid]int)}
	const window = 50 * time.Millisecond // 200 KiB at this rate
	o := newReplyOutbox(context.Background(), "peer", net, zaptest.NewLogger(t), 0, window, replyHooks{})
	defer o.close()
	const n = 64
	for range n {
		o.addBlock(makeBlock(t, 32<<10))
	}
	eventually(t, 20*time.Second, func() string { b, _ := net.delivered(); return fmt.Sprintf("%d of %d blocks", b, n) }, func() bool {
		b, _ := net.delivered()
		return b == n
	})
	net.mu.Lock()
	sizes := slices.Clone(net.sizes)
	net.mu.Unlock()
	limit := int(2 * rate * window.Seconds())
	for i, s := range sizes[1:] {
		if s > limit {
			t.Errorf("message %d: %d bytes to a peer that takes %d in the window (sizes %v)", i+1, s, limit/2, sizes)
		}
	}
}

// Hole 8: a reverse session asks only upstream peers the preload caller
// could be (connected from its address); with none, the node hears
// DONT_HAVE and no other peer learns which DAG the caller is adding.
func TestReverseAsksOnlyPeersAtCallerAddress(t *testing.T) {
	e := newEnv(t, Config{})
	n := e.addRawNode()
	var logs []*wantLog
	for range 2 {
		l := newWantLog()
		e.newRawPeerWith(func(_ peer.ID, m bsmsg.BitSwapMessage) { l.record(m) }) // on 127.0.0.1
		logs = append(logs, l)
	}
	root := missingCid(t)
	end := e.relay.BeginReverse(root, n.h.ID(), netip.MustParseAddr("203.0.113.5"), 0)
	defer end()
	msg := bsmsg.New(false)
	msg.AddEntry(root, 1, pb.Message_Wantlist_Block, true)
	n.send(msg)
	eventually(t, 5*time.Second, func() string { return "DONT_HAVE to the node: " + e.describe() }, func() bool {
		d := n.dontHaves()
		return len(d) == 1 && d[0] == root
	})
	for _, l := range logs {
		if w, _, _, _ := l.totals(); w != 0 {
			t.Errorf("an upstream peer not at the caller's address was asked for the caller's DAG (%d wants)", w)
		}
	}
	if s := e.stats(); s.ReverseWants != 0 {
		t.Errorf("reverse wants left: %s", e.describe())
	}
}

// Hole 2: Kitsune is one peer to a Kubo node, which serves that peer's
// highest priority first. Upstream priorities passed through let a busy
// boxo client (priorities counting down from MaxInt32) bury a Helia
// client's wants (priority 1) behind its whole backlog; Kitsune sets the
// priority itself, so a newly arrived client's wants come next.
func TestLatePeerOutranksBusyPeerBacklogDownstream(t *testing.T) {
	// A budget that lets all 300 wants out at once: this is about the
	// node's queue, not the per-peer hold-back (TestHeldBackWants*).
	e := newEnv(t, Config{PeerBufferBytes: 1 << 30})
	n := e.addRawNode() // answers nothing: the backlog stays
	busy, late := e.newRawPeer(), e.newRawPeer()
	backlog := missingCids(t, 300)
	msg := bsmsg.New(false)
	for i, c := range backlog {
		msg.AddEntry(c, math.MaxInt32-int32(i), pb.Message_Wantlist_Block, true)
	}
	busy.send(msg)
	eventually(t, 5*time.Second, func() string { return "the backlog at the node: " + e.describe() }, func() bool {
		return len(n.wlog.openCids()) == len(backlog)
	})
	mine := missingCids(t, 5)
	late.want(pb.Message_Wantlist_Block, true, mine...) // priority 1, as Helia sends
	eventually(t, 5*time.Second, func() string { return "the late wants at the node: " + e.describe() }, func() bool {
		return len(n.wlog.openCids()) == len(backlog)+len(mine)
	})
	for _, c := range mine {
		ahead := 0
		for _, b := range backlog {
			if n.wlog.priority(b) >= n.wlog.priority(c) {
				ahead++
			}
		}
		if ahead > len(mine) {
			t.Errorf("a late client's want (priority %d) is behind %d of the busy client's %d at the node", n.wlog.priority(c), ahead, len(backlog))
		}
	}
}

// Hole 2, Kitsune's own queue: with the node full, a newly arrived
// client's wants go out before another client's queued backlog.
func TestQueueServesLatePeerBeforeBusyBacklog(t *testing.T) {
	e := newEnv(t, Config{MaxInFlightPerNode: 2})
	var all, backlog, mine []blocks.Block
	for range 40 {
		b := makeBlock(t, 1500)
		backlog = append(backlog, b)
		all = append(all, b)
	}
	for range 2 {
		b := makeBlock(t, 1500)
		mine = append(mine, b)
		all = append(all, b)
	}
	n := e.addRawNode(all...)
	busy, late := e.newRawPeer(), e.newRawPeer()
	var cs []cid.Cid
	for _, b := range backlog {
		cs = append(cs, b.Cid())
	}
	busy.wantBlock(cs...)
	eventually(t, 5*time.Second, func() string { return "backlog queued: " + e.describe() }, func() bool { return e.stats().Queued == len(backlog)-2 })
	late.wantBlock(mine[0].Cid(), mine[1].Cid())
	eventually(t, 5*time.Second, func() string { return "late wants queued: " + e.describe() }, func() bool { return e.stats().Queued == len(backlog) })
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, k0 := late.got.block(mine[0].Cid())
		_, k1 := late.got.block(mine[1].Cid())
		if k0 == 1 && k1 == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the late client's blocks never came: %s", e.describe())
		}
		n.answerOpen()
		time.Sleep(10 * time.Millisecond)
	}
	served := 0
	for _, b := range backlog {
		if _, k := busy.got.block(b.Cid()); k > 0 {
			served++
		}
	}
	if served > 6 {
		t.Errorf("the busy client got %d blocks before the late client's 2 (node cap 2)", served)
	}
}

// overlapNet records how many reply messages were being written at
// once; its receiver reads first (boxo) or closes first (Helia), on a
// fast link. A message is "written" until a second one is being written
// beside it (the event the test looks for), or for at most 20 ms when
// none comes.
type overlapNet struct {
	closesFirst bool
	mu          sync.Mutex
	active, max int
	blocks      int
	overlap     chan struct{} // closed when two are written at once
}

func (n *overlapNet) send(_ context.Context, _ peer.ID, m bsmsg.BitSwapMessage, hold time.Duration, done func(replyEvents)) {
	n.mu.Lock()
	if n.overlap == nil {
		n.overlap = make(chan struct{})
	}
	n.active++
	n.max = max(n.max, n.active)
	overlap := n.overlap
	if n.active > 1 {
		close(n.overlap)
		n.overlap = make(chan struct{})
	}
	n.mu.Unlock()
	select { // writing
	case <-overlap:
	case <-time.After(20 * time.Millisecond):
	}
	n.mu.Lock()
	n.active--
	n.blocks += len(m.Blocks())
	n.mu.Unlock()
	t0 := time.Unix(1000, 0)
	ev := replyEvents{opened: t0, wrote: t0.Add(time.Millisecond), held: hold > 0}
	ev.closed = ev.wrote.Add(hold)
	if n.closesFirst {
		ev.ended = t0
	} else {
		ev.ended = ev.closed.Add(10 * time.Millisecond)
	}
	done(ev)
}

// To a receiver that reads first, on a fast link, two messages are
// written at once (each reply stream starts with a small window: one at a
// time leaves a long link idle); never more, and to Helia one at a time.
func TestReplyWritesOverlapOnlyWhereSafe(t *testing.T) {
	for _, tc := range []struct {
		name        string
		closesFirst bool
		want        int
	}{{"boxo", false, maxWriters}, {"helia", true, 1}} {
		t.Run(tc.name, func(t *testing.T) {
			net := &overlapNet{closesFirst: tc.closesFirst}
			o := newReplyOutbox(context.Background(), "peer", net, zaptest.NewLogger(t), 0, replyWindow, replyHooks{})
			defer o.close()
			const n = 48
			for range n {
				o.addBlock(makeBlock(t, 256<<10))
			}
			eventually(t, 20*time.Second, func() string {
				net.mu.Lock()
				defer net.mu.Unlock()
				return fmt.Sprintf("%d of %d blocks", net.blocks, n)
			}, func() bool {
				net.mu.Lock()
				defer net.mu.Unlock()
				return net.blocks == n
			})
			net.mu.Lock()
			defer net.mu.Unlock()
			if net.max != tc.want {
				t.Fatalf("at most %d messages written at once, want %d", net.max, tc.want)
			}
		})
	}
}
