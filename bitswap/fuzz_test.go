package bitswap

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnetiface "github.com/ipfs/boxo/bitswap/network"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-msgio"
	mh "github.com/multiformats/go-multihash"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// FuzzRelayMessages feeds raw Bitswap message bytes, parsed exactly as
// bsnet parses a stream (msgio varint frame, bsmsg.FromMsgReader), to the
// relay as if they came from an upstream peer or a fleet node, two messages
// per input. Whatever the bytes:
//   - nothing panics;
//   - every block the relay sends anyone hashes to its CID (node messages
//     come in pooled buffers, poisoned as they go back);
//   - every reference to those buffers is given back by Close;
//   - every want the relay sends upstream is the reverse session's root or
//     a link of a block that came back in it: an unauthorised want never
//     leaves for an upstream peer;
//   - once every upstream peer is gone and the session has ended, the want
//     table, the queue, the reverse tables and every node's in-flight count
//     are empty, and each want sent to a node was reported done once.
//
// ctl picks the direction of each message (bit 0 and 1: a and b come from a
// node), the sender (bits 2-3 and 4-5: one of four upstream peers or one of
// two nodes) and whether miss fetches are on (bit 6).
//
// The seed corpus, testdata/fuzz/FuzzRelayMessages, is written from
// fuzzSeeds by TestWriteFuzzSeeds.
func FuzzRelayMessages(f *testing.F) {
	fx := newFuzzFixture(f)
	f.Fuzz(func(t *testing.T, ctl uint8, a, b []byte) {
		fx.run(t, ctl, a, b)
	})
}

// fuzzFixture is what every input shares: real hosts only so that the
// relay finds the upstream peers connected (reverse sessions look at the
// front host's connections); messages never travel over them.
type fuzzFixture struct {
	hub   host.Host
	ups   []peer.ID
	nodes []peer.ID
	root  blocks.Block
}

func fuzzHost(tb testing.TB) host.Host { return testkit.Host(tb, "/ip4/127.0.0.1/tcp/0") }

func newFuzzFixture(tb testing.TB) *fuzzFixture {
	fx := &fuzzFixture{hub: fuzzHost(tb), root: fuzzRoot()}
	for range 4 {
		h := fuzzHost(tb)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := h.Connect(ctx, peer.AddrInfo{ID: fx.hub.ID(), Addrs: fx.hub.Addrs()})
		cancel()
		if err != nil {
			tb.Fatal(err)
		}
		fx.ups = append(fx.ups, h.ID())
	}
	for range 2 {
		fx.nodes = append(fx.nodes, fuzzHost(tb).ID())
	}
	return fx
}

// fuzzRoot is the reverse session's root: a dag-pb node linking to two raw
// blocks, so a block from upstream can authorise further wants.
func fuzzRoot() blocks.Block {
	var node []byte
	for _, leaf := range [][]byte{[]byte("leaf one"), []byte("leaf two")} {
		h, _ := mh.Sum(leaf, mh.SHA2_256, -1)
		link := pbField(1, cid.NewCidV1(cid.Raw, h).Bytes()) // PBLink.Hash
		node = append(node, pbField(2, link)...)             // PBNode.Links
	}
	h, _ := mh.Sum(node, mh.SHA2_256, -1)
	b, _ := blocks.NewBlockWithCid(node, cid.NewCidV1(cid.DagProtobuf, h))
	return b
}

// fuzzNet is a Bitswap network that delivers nothing and checks what the
// relay sends.
type fuzzNet struct {
	h         host.Host
	connected map[peer.ID]bool
	// check is called with every message sent, and with the peer; it
	// reports a broken property.
	check func(to peer.ID, m bsmsg.BitSwapMessage) error

	mu   sync.Mutex
	errs []error
}

func (n *fuzzNet) record(to peer.ID, m bsmsg.BitSwapMessage) {
	if err := n.check(to, m); err != nil {
		n.mu.Lock()
		n.errs = append(n.errs, err)
		n.mu.Unlock()
	}
}

func (n *fuzzNet) SendMessage(_ context.Context, to peer.ID, m bsmsg.BitSwapMessage) error {
	n.record(to, m)
	return nil
}
func (n *fuzzNet) Start(...bsnetiface.Receiver)                        {}
func (n *fuzzNet) Stop()                                               {}
func (n *fuzzNet) Connect(context.Context, peer.AddrInfo) error        { return nil }
func (n *fuzzNet) DisconnectFrom(context.Context, peer.ID) error       { return nil }
func (n *fuzzNet) IsConnectedToPeer(_ context.Context, p peer.ID) bool { return n.connected[p] }
func (n *fuzzNet) NewMessageSender(_ context.Context, to peer.ID, _ *bsnetiface.MessageSenderOpts) (bsnetiface.MessageSender, error) {
	return fuzzSender{n, to}, nil
}
func (n *fuzzNet) Host() host.Host                           { return n.h }
func (n *fuzzNet) Stats() bsnetiface.Stats                   { return bsnetiface.Stats{} }
func (n *fuzzNet) Self() peer.ID                             { return n.h.ID() }
func (n *fuzzNet) Ping(context.Context, peer.ID) ping.Result { return ping.Result{} }
func (n *fuzzNet) Latency(peer.ID) time.Duration             { return 0 }
func (n *fuzzNet) TagPeer(peer.ID, string, int)              {}
func (n *fuzzNet) UntagPeer(peer.ID, string)                 {}
func (n *fuzzNet) Protect(peer.ID, string)                   {}
func (n *fuzzNet) Unprotect(peer.ID, string) bool            { return false }

type fuzzSender struct {
	n  *fuzzNet
	to peer.ID
}

func (s fuzzSender) SendMsg(_ context.Context, m bsmsg.BitSwapMessage) error {
	s.n.record(s.to, m)
	return nil
}
func (fuzzSender) Reset() error       { return nil }
func (fuzzSender) SupportsHave() bool { return true }

// parseFrame parses msg as bsnet parses one message off a stream.
func parseFrame(msg []byte) (bsmsg.BitSwapMessage, error) {
	r := msgio.NewVarintReaderSize(bytes.NewReader(frame(msg)), network.MessageSizeMax)
	m, _, err := bsmsg.FromMsgReader(r)
	return m, err
}

// blockHashes reports whether a block's bytes hash to its CID.
func blockHashes(b blocks.Block) bool {
	c, err := b.Cid().Prefix().Sum(b.RawData())
	return err == nil && c.Equals(b.Cid())
}

func (fx *fuzzFixture) run(t *testing.T, ctl uint8, a, b []byte) {
	var mu sync.Mutex
	authorised := map[cid.Cid]bool{fx.root.Cid(): true}
	// Authorise what a block from upstream links to, as the relay should.
	learn := func(m bsmsg.BitSwapMessage) {
		mu.Lock()
		defer mu.Unlock()
		for _, blk := range m.Blocks() {
			if !authorised[blk.Cid()] {
				continue
			}
			links, _ := Links(blk.Cid(), blk.RawData())
			for _, l := range links {
				authorised[l] = true
			}
		}
	}
	checkBlocks := func(_ peer.ID, m bsmsg.BitSwapMessage) error {
		for _, blk := range m.Blocks() {
			if !blockHashes(blk) {
				return fmt.Errorf("sent block %s whose bytes do not hash to it", blk.Cid())
			}
		}
		return nil
	}
	connected := make(map[peer.ID]bool)
	for _, p := range fx.ups {
		connected[p] = true
	}
	front := &fuzzNet{h: fx.hub, connected: connected, check: func(to peer.ID, m bsmsg.BitSwapMessage) error {
		if err := checkBlocks(to, m); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range m.Wantlist() {
			if !e.Cancel && !authorised[e.Cid] {
				return fmt.Errorf("want for %s sent upstream to %s, outside the session's DAG", e.Cid, to)
			}
		}
		return nil
	}}
	back := &fuzzNet{h: fx.hub, connected: map[peer.ID]bool{}, check: checkBlocks}
	down := newStaticDown()
	for _, n := range fx.nodes {
		down.add(n)
		back.connected[n] = true
	}
	r := New(Config{FetchMisses: ctl&0x40 != 0, MaxWantsPerPeer: 64, CheckInterval: time.Hour}, front, back, down, zap.NewNop())
	r.frames.poison = true
	r.viaBsnet = true // the fake back network sees what goes to the nodes
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	for _, n := range fx.nodes {
		r.NodeUp(n)
	}
	end := r.BeginReverse(fx.root.Cid(), fx.nodes[0], netip.MustParseAddr("127.0.0.1"), 0)

	for i, raw := range [][]byte{a, b} {
		m, err := parseFrame(raw)
		fromNode := ctl&(1<<i) != 0
		who := int(ctl>>(2+2*i)) & 3
		if fromNode {
			// The relay's own parser, checked against boxo's.
			nm, nerr := parseNodeMessage(bytes.Clone(raw))
			if (err == nil) != (nerr == nil) {
				t.Fatalf("boxo's parser: %v; Kitsune's: %v", err, nerr)
			}
			if nerr != nil {
				continue // the stream is reset; the relay never sees it
			}
			if diff := sameNodeMessage(nodeMessageOf(m), nm); diff != "" {
				t.Fatalf("parsers disagree: %s", diff)
			}
			// Handed to the relay as a node's stream does: in a pooled
			// buffer, poisoned once its last reference goes.
			f := r.frames.get(len(raw))
			copy(f.b, raw)
			if err := r.nodeFrame(fx.nodes[who%2], f); err != nil {
				t.Fatalf("the relay's parser failed where it did not before: %v", err)
			}
			continue
		}
		if err == nil {
			learn(m)
		}
		// The relay's own reader (front.go), which must refuse what
		// boxo's refuses.
		ferr := r.fromUpstreamFrame(fx.ups[who], bytes.Clone(raw))
		if (err == nil) != (ferr == nil) {
			t.Fatalf("boxo's parser: %v; the front's: %v", err, ferr)
		}
	}
	if s := r.Stats(); s.Wants > len(fx.ups)*64 {
		t.Fatalf("%d wants in the table, over 4 peers × 64", s.Wants)
	}

	end()
	for _, p := range fx.ups {
		r.upstreamGone(p)
	}
	// A miss fetch ends in its own goroutine; wait for the fake fleet's
	// error to come back.
	deadline := time.Now().Add(2 * time.Second)
	for {
		s := r.Stats()
		busy := s.Wants != 0 || s.Queued != 0 || s.Peers != 0 || s.Sessions != 0 || s.Authorised != 0 || s.ReverseWants != 0
		for _, o := range s.Outstanding {
			busy = busy || o != 0
		}
		if !busy {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tables not empty once every peer left: %+v", s)
		}
		time.Sleep(time.Millisecond)
	}
	if u := down.unbalanced(); u != "" {
		t.Fatalf("Sent and Done differ: %s", u)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
	_ = r.Close(cctx)
	ccancel()
	// Every reference to a node message's buffer was given back (the
	// replies in flight settle as their streams end).
	eventually(t, 2*time.Second, func() string {
		return fmt.Sprintf("%d node message buffers still referenced after Close", r.frames.live.Load())
	}, func() bool { return r.frames.live.Load() == 0 })
	for _, n := range []*fuzzNet{front, back} {
		n.mu.Lock()
		errs := n.errs
		n.mu.Unlock()
		if len(errs) > 0 {
			t.Fatal(errs[0])
		}
	}
}

type fuzzSeed struct {
	name string
	ctl  uint8
	a, b []byte
}

// fuzzSeeds are well-formed conversations the fuzzer mutates: each ends up
// under testdata/fuzz/FuzzRelayMessages too (see TestWriteFuzzSeeds).
func fuzzSeeds(tb testing.TB) []fuzzSeed {
	root := fuzzRoot()
	leafRaw := mustBlock([]byte("leaf one"))
	small := mustBlock([]byte("a small block"))
	big := mustBlock(bytes.Repeat([]byte("kitsune "), 512))
	enc := func(m bsmsg.BitSwapMessage) []byte {
		var buf bytes.Buffer
		if err := m.ToNetV1(&buf); err != nil {
			tb.Fatal(err)
		}
		// ToNetV1 writes a varint frame; the fuzz input is the bare message.
		r := msgio.NewVarintReaderSize(&buf, network.MessageSizeMax)
		body, err := r.ReadMsg()
		if err != nil {
			tb.Fatal(err)
		}
		return bytes.Clone(body)
	}
	want := func(full bool, t pb.Message_Wantlist_WantType, dont bool, cs ...cid.Cid) []byte {
		m := bsmsg.New(full)
		for _, c := range cs {
			m.AddEntry(c, 1, t, dont)
		}
		return enc(m)
	}
	cancelMsg := func(cs ...cid.Cid) []byte {
		m := bsmsg.New(false)
		for _, c := range cs {
			m.Cancel(c)
		}
		return enc(m)
	}
	blockMsg := func(bs ...blocks.Block) []byte {
		m := bsmsg.New(false)
		for _, b := range bs {
			m.AddBlock(b)
		}
		return enc(m)
	}
	presence := func(t pb.Message_BlockPresenceType, cs ...cid.Cid) []byte {
		m := bsmsg.New(false)
		for _, c := range cs {
			m.AddBlockPresence(c, t)
		}
		return enc(m)
	}
	const up0, node0a, node0b = 0x00, 0x01, 0x02
	return []fuzzSeed{
		{"want-block then block", node0b, want(false, pb.Message_Wantlist_Block, true, big.Cid()), blockMsg(big)},
		{"want-have then HAVE", node0b, want(false, pb.Message_Wantlist_Have, true, big.Cid(), small.Cid()), presence(pb.Message_Have, big.Cid())},
		{"want then DONT_HAVE", node0b | 0x40, want(false, pb.Message_Wantlist_Block, true, small.Cid()), presence(pb.Message_DontHave, small.Cid())},
		{"full wantlist then cancel", up0, want(true, pb.Message_Wantlist_Block, false, big.Cid(), small.Cid()), cancelMsg(big.Cid())},
		{"block nobody asked for", node0a, blockMsg(small), nil},
		{"reverse want then block", node0a, want(false, pb.Message_Wantlist_Block, true, root.Cid()), blockMsg(root)},
		{"reverse want for a link", node0a | node0b, want(false, pb.Message_Wantlist_Have, true, root.Cid()), want(false, pb.Message_Wantlist_Block, true, leafRaw.Cid())},
		{"upstream block answers reverse want", node0a, want(false, pb.Message_Wantlist_Block, true, root.Cid()), blockMsg(root, leafRaw)},
		{"upstream presences", up0, presence(pb.Message_Have, root.Cid()), presence(pb.Message_DontHave, root.Cid())},
		{"two peers want the same", up0 | 1<<4, want(false, pb.Message_Wantlist_Block, true, small.Cid()), want(false, pb.Message_Wantlist_Have, false, small.Cid())},
		{"empty", up0, nil, nil},
	}
}

func mustRawCid(data []byte) cid.Cid {
	h, _ := mh.Sum(data, mh.SHA2_256, -1)
	return cid.NewCidV1(cid.Raw, h)
}

func mustBlock(data []byte) blocks.Block {
	b, _ := blocks.NewBlockWithCid(data, mustRawCid(data))
	return b
}
