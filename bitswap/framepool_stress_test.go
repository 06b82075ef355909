package bitswap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnetiface "github.com/ipfs/boxo/bitswap/network"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

// wireCheckNet is a replySender that writes each reply as the relay
// writes it to a stream (encodeReply, writeTo, yielding between the
// writes so that other goroutines run mid-message), parses the bytes
// back as a client does, and records any block whose bytes no longer
// hash to what the message says. It cuts off some replies (the outbox
// queues their blocks again) and confirms the others now or later.
type wireCheckNet struct {
	mu      sync.Mutex
	rng     *rand.Rand
	errs    []string
	written int // blocks checked
	pending sync.WaitGroup
}

// yieldWriter is a stream that lets others run at every write.
type yieldWriter struct{ buf *bytes.Buffer }

func (w yieldWriter) Write(p []byte) (int, error) {
	runtime.Gosched()
	return w.buf.Write(p)
}

func (n *wireCheckNet) send(_ context.Context, to peer.ID, msg bsmsg.BitSwapMessage, _ time.Duration, done func(replyEvents)) {
	var buf bytes.Buffer
	w, err := encodeReply(wirePartsOf(msg), true)
	if err == nil {
		err = w.writeTo(yieldWriter{&buf}, 16<<10)
	}
	var got bsmsg.BitSwapMessage
	if err == nil {
		got, _, err = bsmsg.FromNet(&buf)
	}
	n.mu.Lock()
	if err != nil {
		n.errs = append(n.errs, fmt.Sprintf("reply to %s: %v", to, err))
	} else {
		sent := map[cid.Cid]bool{}
		for _, b := range msg.Blocks() {
			sent[b.Cid()] = true
		}
		for _, b := range got.Blocks() {
			if !sent[b.Cid()] {
				n.errs = append(n.errs, fmt.Sprintf("reply to %s carried bytes hashing to %s, a block it was not given: a buffer reused under it", to, b.Cid()))
			}
			n.written++
		}
		if len(got.Blocks()) != len(msg.Blocks()) {
			n.errs = append(n.errs, fmt.Sprintf("reply to %s: %d blocks written, %d read back", to, len(msg.Blocks()), len(got.Blocks())))
		}
	}
	cut := n.rng.IntN(10) == 0
	later := n.rng.IntN(2) == 0
	n.mu.Unlock()
	ev := deliveredEvents()
	if cut {
		ev = replyEvents{opened: ev.opened, writeErr: errors.New("reset by the test")}
	}
	if !later {
		done(ev)
		return
	}
	n.pending.Add(1)
	go func() {
		defer n.pending.Done()
		runtime.Gosched()
		done(ev)
	}()
}

// nodeMessageBody is a node's message carrying b alone, as Kubo sends a
// large block.
func nodeMessageBody(t testing.TB, b blocks.Block) []byte {
	t.Helper()
	m := bsmsg.New(false)
	m.AddBlock(b)
	body, err := proto.Marshal(m.ToProtoV1())
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// Node message buffers are reused while their blocks go through the
// recent blocks and several peers' reply queues, with replies cut off and
// sent again, peers leaving mid-reply, and recent-block hits: every reply
// written carries the bytes of its blocks (the poison would show
// otherwise), and every buffer comes back once nothing holds its block.
func TestPooledBuffersNeverSentStale(t *testing.T) {
	c := &Counters{}
	pool := newFramePool(2<<20, c) // small: some buffers are dropped instead
	pool.poison = true
	rng := rand.New(rand.NewPCG(15, 5))
	net := &wireCheckNet{rng: rand.New(rand.NewPCG(1, 5))}

	type source struct {
		c    cid.Cid
		body []byte
	}
	var srcs []source
	for i := range 40 {
		b := blockOf(t, fmt.Sprintf("pooled %d ", i), 5<<10+rng.IntN(300<<10))
		srcs = append(srcs, source{b.Cid(), nodeMessageBody(t, b)})
	}
	recent := newRecentBlocks(3<<20, time.Hour)
	outs := make([]*replyOutbox, 6)
	open := func(i int) {
		outs[i] = newReplyOutbox(context.Background(), peer.ID(fmt.Sprint("peer", i)), net, zap.NewNop(), 1<<20, replyWindow, replyHooks{})
	}
	for i := range outs {
		open(i)
	}
	now := time.Unix(0, 0)
	for range 4000 {
		now = now.Add(time.Millisecond)
		switch op := rng.IntN(20); {
		case op < 12:
			// A message from a node: read into a pooled buffer, its
			// block to the recent blocks and up to three peers, then the
			// reader lets go, as nodeFrame does.
			s := srcs[rng.IntN(len(srcs))]
			f := pool.get(len(s.body))
			copy(f.b, s.body)
			m, err := parseNodeFrame(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range m.blocks {
				recent.put(b, now)
				for range 1 + rng.IntN(3) {
					if o := outs[rng.IntN(len(outs))]; !o.full() {
						o.addBlock(b)
					}
				}
			}
			f.release()
		case op < 17:
			// A want answered from the recent blocks.
			if b, ok := recent.get(srcs[rng.IntN(len(srcs))].c, now); ok {
				if o := outs[rng.IntN(len(outs))]; !o.full() {
					o.addBlock(b)
				}
			}
		case op < 19:
			// A peer leaves with replies queued and in flight.
			i := rng.IntN(len(outs))
			outs[i].close()
			open(i)
		default:
			now = now.Add(time.Hour)
			recent.expire(now)
		}
		if rng.IntN(50) == 0 {
			// Let the writers catch up: no outbox stays full, so the
			// next blocks are queued rather than skipped.
			eventually(t, 10*time.Second, func() string { return "an outbox stayed full" }, func() bool {
				for _, o := range outs {
					if o.full() {
						return false
					}
				}
				return true
			})
		}
	}
	for _, o := range outs {
		eventually(t, 10*time.Second, func() string { return fmt.Sprintf("outbox still holding %+v", o.load()) }, func() bool {
			l := o.load()
			return l.bytes == 0 && l.flights == 0
		})
		o.close()
	}
	net.pending.Wait()
	recent.reset()
	if n := pool.live.Load(); n != 0 {
		t.Errorf("%d buffers still referenced once nothing holds a block", n)
	}
	net.mu.Lock()
	defer net.mu.Unlock()
	for i, e := range net.errs {
		if i == 5 {
			t.Errorf("... %d errors in all", len(net.errs))
			break
		}
		t.Error(e)
	}
	t.Logf("%d blocks written; buffers new %d, reused %d; %d bytes free", net.written, c.NodeBuffersNew.Load(), c.NodeBuffersReused.Load(), pool.freeBytes())
	if c.NodeBuffersReused.Load() < 100 || net.written < 1000 {
		t.Fatalf("only %d buffers reused and %d blocks written: the test exercised little", c.NodeBuffersReused.Load(), net.written)
	}
}

// kuboLikeNode serves each wanted block alone in a message on a stream of
// its own, as a Kubo node sends a large block: the relay parses it in
// place, from a pooled buffer.
type kuboLikeNode struct {
	e      *env
	h      host.Host
	net    bsnetiface.BitSwapNetwork
	blocks map[cid.Cid]blocks.Block
}

func (e *env) addKuboLikeNode(blks ...blocks.Block) *kuboLikeNode {
	e.t.Helper()
	n := &kuboLikeNode{e: e, h: newHost(e.t), blocks: make(map[cid.Cid]blocks.Block)}
	for _, b := range blks {
		n.blocks[b.Cid()] = b
	}
	n.net = bsnet.NewFromIpfsHost(n.h)
	n.net.Start(recorder{onMsg: n.serve})
	e.t.Cleanup(n.net.Stop)
	e.attach(n.h)
	return n
}

func (n *kuboLikeNode) serve(from peer.ID, msg bsmsg.BitSwapMessage) {
	var out []bsmsg.BitSwapMessage
	presences := bsmsg.New(false)
	for _, e := range msg.Wantlist() {
		if e.Cancel {
			continue
		}
		switch b, ok := n.blocks[e.Cid]; {
		case ok && e.WantType == pb.Message_Wantlist_Block:
			m := bsmsg.New(false)
			m.AddBlock(b)
			out = append(out, m)
		case ok:
			presences.AddHave(e.Cid)
		case e.SendDontHave:
			presences.AddDontHave(e.Cid)
		}
	}
	if !presences.Empty() {
		out = append(out, presences)
	}
	for _, m := range out {
		ctx, cancel := context.WithTimeout(n.e.ctx, 5*time.Second)
		_ = n.net.SendMessage(ctx, from, m)
		cancel()
	}
}

// The relay with many peers over real streams, its node message buffers
// reused and poisoned as they go back: peers wanting overlapping blocks
// (recent-block hits), cancelling some, leaving mid-transfer, reading
// through a small reply budget (wants held back and blocks set aside),
// and a local fetch (its blocks escape the pool). Every block any peer
// receives hashes to a block of the test's (the client computes the CID
// from the bytes), every peer still there gets every block it kept
// wanting, and once the relay is closed no buffer is referenced.
func TestRelayPooledBuffersRandomized(t *testing.T) {
	rng := rand.New(rand.NewPCG(2026, 12))
	e := newEnv(t, Config{PeerBufferBytes: 600 << 10, RecentBlockBytes: 4 << 20, NodeBufferPoolBytes: 2 << 20})
	var all []blocks.Block
	known := map[cid.Cid]bool{}
	for i := range 48 {
		b := blockOf(t, fmt.Sprintf("relay pooled %d ", i), 9<<10+rng.IntN(290<<10))
		all = append(all, b)
		known[b.Cid()] = true
	}
	e.addKuboLikeNode(all[:32]...)
	e.addKuboLikeNode(all[16:]...)

	type client struct {
		p      *rawPeer
		wanted map[cid.Cid]bool
		gone   bool
	}
	var clients []*client
	for range 6 {
		clients = append(clients, &client{p: e.newRawPeer(), wanted: map[cid.Cid]bool{}})
	}
	// Three waves of wants, each peer a random half of the blocks; some
	// cancelled right after; a peer leaves in the second wave.
	for wave := range 3 {
		outBefore, wantedNew := e.relay.Counters().BlocksOut.Load(), false
		for i, cl := range clients {
			if cl.gone {
				continue
			}
			var cs []cid.Cid
			for _, j := range rng.Perm(len(all))[:len(all)/2] {
				if c := all[j].Cid(); !cl.wanted[c] {
					cs = append(cs, c)
					cl.wanted[c] = true
				}
			}
			cl.p.wantBlock(cs...)
			wantedNew = wantedNew || len(cs) > 0
			if rng.IntN(2) == 0 && len(cs) > 4 {
				cancel := cs[:2]
				cl.p.cancel(cancel...)
				for _, c := range cancel {
					if n, _ := cl.p.got.block(c); n == nil {
						delete(cl.wanted, c) // unless it came already
					}
				}
			}
			if wave == 1 && i == 0 {
				cl.gone = true
				_ = cl.p.h.Close()
			}
		}
		if wave == 1 {
			// A local fetch (the gateway's path) beside the peers.
			ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
			ch, err := e.relay.Fetch(ctx, all[0].Cid(), all[20].Cid(), all[40].Cid())
			if err != nil {
				t.Fatal(err)
			}
			for res := range ch {
				if res.Err != nil || !blockHashes(res.Block) {
					t.Errorf("local fetch of %s: %v, bytes hash right: %v", res.Cid, res.Err, res.Err == nil && blockHashes(res.Block))
				}
			}
			cancel()
		}
		if wantedNew {
			// The next wave comes while this one's blocks are flowing:
			// once the first of them went out.
			eventually(t, 30*time.Second, func() string { return fmt.Sprintf("no block out in wave %d; %s", wave, e.describe()) }, func() bool {
				return e.relay.Counters().BlocksOut.Load() > outBefore
			})
		}
	}
	for i, cl := range clients {
		if cl.gone {
			continue
		}
		eventually(t, 30*time.Second, func() string {
			missing := 0
			for c := range cl.wanted {
				if b, _ := cl.p.got.block(c); b == nil {
					missing++
				}
			}
			return fmt.Sprintf("peer %d: %d of %d wanted blocks missing; %s", i, missing, len(cl.wanted), e.describe())
		}, func() bool {
			for c := range cl.wanted {
				if b, _ := cl.p.got.block(c); b == nil {
					return false
				}
			}
			return true
		})
	}
	for i, cl := range clients {
		cl.p.got.mu.Lock()
		for c := range cl.p.got.nblocks {
			if !known[c] {
				t.Errorf("peer %d received bytes hashing to %s, no block of the test's: a buffer reused under a reply", i, c)
			}
		}
		cl.p.got.mu.Unlock()
	}
	cnt := e.relay.Counters()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = e.relay.Close(ctx)
	eventually(t, 10*time.Second, func() string {
		return fmt.Sprintf("%d node message buffers still referenced after Close", e.relay.frames.live.Load())
	}, func() bool { return e.relay.frames.live.Load() == 0 })
	t.Logf("buffers new %d, reused %d, escaped %d; recent hits %d, held wants %d, deferred %d",
		cnt.NodeBuffersNew.Load(), cnt.NodeBuffersReused.Load(), cnt.NodeBuffersEscaped.Load(), cnt.RecentHits.Load(), cnt.HeldWants.Load(), cnt.Deferred.Load())
	if cnt.NodeBuffersReused.Load() == 0 || cnt.RecentHits.Load() == 0 || cnt.NodeBuffersEscaped.Load() == 0 {
		t.Fatal("the run did not reuse buffers, hit the recent blocks and let some escape: it shows less than it claims")
	}
}
