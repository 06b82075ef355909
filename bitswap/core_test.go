package bitswap

// Tests of the core alone: a fake clock, the static fleet of the wire
// tests, and a recording effects sink. No sockets, no sleeps.

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/boxo/bitswap/client/wantlist"
	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"

	"github.com/kitsune-lb/kitsune/downstream"
)

// recFx records the core's effects: each node's open wantlist as the node
// would hold it, what each peer was sent, protections and fetches.
type recFx struct {
	open      map[peer.ID]map[cid.Cid]pb.Message_Wantlist_WantType
	prio      map[peer.ID]map[cid.Cid]int32
	blocks    map[peer.ID][]blocks.Block
	presences map[peer.ID][]bsmsg.BlockPresence
	protected map[peer.ID]bool
	fetching  map[uint64]fetchCall
	stopped   map[uint64]bool
	// onWant, onBlock and onPresence, when set, check each effect as it
	// is made.
	onWant     func(node peer.ID, c cid.Cid, prio int32)
	onBlock    func(to peer.ID, b blocks.Block)
	onPresence func(to peer.ID, c cid.Cid, t pb.Message_BlockPresenceType)
}

type fetchCall struct {
	node peer.ID
	c    cid.Cid
}

func newRecFx() *recFx {
	return &recFx{
		open:      make(map[peer.ID]map[cid.Cid]pb.Message_Wantlist_WantType),
		prio:      make(map[peer.ID]map[cid.Cid]int32),
		blocks:    make(map[peer.ID][]blocks.Block),
		presences: make(map[peer.ID][]bsmsg.BlockPresence),
		protected: make(map[peer.ID]bool),
		fetching:  make(map[uint64]fetchCall),
		stopped:   make(map[uint64]bool),
	}
}

func (f *recFx) want(node peer.ID, c cid.Cid, t pb.Message_Wantlist_WantType, prio int32) {
	if f.open[node] == nil {
		f.open[node] = make(map[cid.Cid]pb.Message_Wantlist_WantType)
		f.prio[node] = make(map[cid.Cid]int32)
	}
	if _, upgrade := f.open[node][c]; !upgrade && f.onWant != nil {
		f.onWant(node, c, prio)
	}
	f.open[node][c] = t
	f.prio[node][c] = prio
}

func (f *recFx) cancel(node peer.ID, c cid.Cid) { delete(f.open[node], c) }

func (f *recFx) block(to peer.ID, b blocks.Block) {
	if f.onBlock != nil {
		f.onBlock(to, b)
	}
	f.blocks[to] = append(f.blocks[to], b)
}

func (f *recFx) presence(to peer.ID, c cid.Cid, t pb.Message_BlockPresenceType) {
	if f.onPresence != nil {
		f.onPresence(to, c, t)
	}
	f.presences[to] = append(f.presences[to], bsmsg.BlockPresence{Cid: c, Type: t})
}

func (f *recFx) backlogged(peer.ID) bool                { return false }
func (f *recFx) queued(peer.ID) int                     { return 0 }
func (f *recFx) replyBudget(_ peer.ID, perPeer int) int { return perPeer }

func (f *recFx) protect(p peer.ID, on bool) {
	if on == f.protected[p] {
		panic(fmt.Sprintf("protect(%s, %v) twice in a row", p, on))
	}
	f.protected[p] = on
}

func (f *recFx) fetch(id uint64, node peer.ID, c cid.Cid) { f.fetching[id] = fetchCall{node, c} }
func (f *recFx) stopFetch(id uint64)                      { f.stopped[id] = true }

func (f *recFx) dontHaves(to peer.ID) []cid.Cid {
	var out []cid.Cid
	for _, p := range f.presences[to] {
		if p.Type == pb.Message_DontHave {
			out = append(out, p.Cid)
		}
	}
	return out
}

// coreKit is a core with its fake world.
type coreKit struct {
	t    testing.TB
	k    *core
	fx   *recFx
	down *staticDown
	cn   *Counters
	now  time.Time
}

func newCoreKit(t testing.TB, cfg Config, nodes ...peer.ID) *coreKit {
	kit := &coreKit{t: t, fx: newRecFx(), down: newStaticDown(), cn: new(Counters), now: time.Unix(1_700_000_000, 0)}
	kit.down.setTimeout(time.Second)
	kit.k = newCore(cfg, kit.fx, kit.down, kit.cn)
	for _, n := range nodes {
		kit.down.add(n)
		kit.k.nodeUp(n, kit.now)
	}
	return kit
}

func (kit *coreKit) advance(d time.Duration) time.Time {
	kit.now = kit.now.Add(d)
	return kit.now
}

func entry(c cid.Cid, t pb.Message_Wantlist_WantType, dontHave bool) bsmsg.Entry {
	return bsmsg.Entry{Entry: wantlist.Entry{Cid: c, Priority: 1, WantType: t}, SendDontHave: dontHave}
}

func cancelEntry(c cid.Cid) bsmsg.Entry {
	return bsmsg.Entry{Entry: wantlist.Entry{Cid: c}, Cancel: true}
}

func testPeer(i int) peer.ID { return peer.ID(fmt.Sprintf("\x00peer-%d", i)) }
func testNode(i int) peer.ID { return peer.ID(fmt.Sprintf("node-%d", i)) }

func blockOf(t testing.TB, seed string, size int) blocks.Block {
	t.Helper()
	// Capacity size: what the block keeps alive is its size.
	data := []byte(strings.Repeat(seed, size/len(seed)+1))[:size:size]
	h, err := mh.Sum(data, mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := blocks.NewBlockWithCid(data, cid.NewCidV1(cid.Raw, h))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The core's basic exchanges, one table row each.
func TestCoreExchanges(t *testing.T) {
	blk := blockOf(t, "a", 2000)
	c := blk.Cid()
	p, q := testPeer(1), testPeer(2)
	n1, n2 := testNode(1), testNode(2)
	for _, tc := range []struct {
		name string
		run  func(kit *coreKit)
	}{
		{"want-block answered by the node's block", func(kit *coreKit) {
			kit.k.fromPeer(p, []bsmsg.Entry{entry(c, pb.Message_Wantlist_Block, true)}, false, kit.now)
			if kit.fx.open[n1][c] != pb.Message_Wantlist_Block || !kit.fx.protected[p] {
				t.Fatalf("want not at the node or peer not protected: %+v", kit.fx.open)
			}
			kit.k.fromNode(n1, []blocks.Block{blk}, nil, nil, kit.advance(time.Millisecond))
			if len(kit.fx.blocks[p]) != 1 || kit.fx.protected[p] {
				t.Fatalf("block not relayed once, or peer still protected")
			}
			if kit.down.outcomes(n1, downstream.OutcomeBlock) != 1 {
				t.Fatal("the pool did not hear of the block")
			}
		}},
		{"one want for two peers, fanned out", func(kit *coreKit) {
			kit.k.fromPeer(p, []bsmsg.Entry{entry(c, pb.Message_Wantlist_Have, true)}, false, kit.now)
			kit.k.fromPeer(q, []bsmsg.Entry{entry(c, pb.Message_Wantlist_Block, true)}, false, kit.now)
			if kit.fx.open[n1][c] != pb.Message_Wantlist_Block || len(kit.fx.open[n2]) != 0 {
				t.Fatalf("want not upgraded in place: %+v", kit.fx.open)
			}
			kit.k.fromNode(n1, []blocks.Block{blk}, nil, nil, kit.now)
			if len(kit.fx.presences[p]) != 1 || kit.fx.presences[p][0].Type != pb.Message_Have || len(kit.fx.blocks[q]) != 1 {
				t.Fatalf("want-have peer: %v; want-block peer: %d blocks", kit.fx.presences[p], len(kit.fx.blocks[q]))
			}
		}},
		{"DONT_HAVE moves on, then refused, then expires", func(kit *coreKit) {
			kit.k.fromPeer(p, []bsmsg.Entry{entry(c, pb.Message_Wantlist_Block, true)}, false, kit.now)
			kit.k.fromNode(n1, nil, nil, []cid.Cid{c}, kit.now)
			if _, ok := kit.fx.open[n1][c]; ok || kit.fx.open[n2][c] != pb.Message_Wantlist_Block {
				t.Fatalf("want not moved to the second node: %+v", kit.fx.open)
			}
			kit.k.fromNode(n2, nil, nil, []cid.Cid{c}, kit.now)
			if d := kit.fx.dontHaves(p); len(d) != 1 || kit.fx.protected[p] {
				t.Fatalf("DONT_HAVEs %v, protected %v", d, kit.fx.protected[p])
			}
			kit.k.tick(kit.advance(DefaultExhaustedTTL - time.Second))
			if len(kit.k.wants) != 1 {
				t.Fatal("refused want expired early")
			}
			kit.k.tick(kit.advance(time.Second))
			if len(kit.k.wants) != 0 || len(kit.k.peers[p].wants) != 0 {
				t.Fatal("refused want did not expire")
			}
		}},
		{"a silent node loses its wants, one failure", func(kit *coreKit) {
			cs := []bsmsg.Entry{entry(c, pb.Message_Wantlist_Block, true)}
			for i := range 4 {
				cs = append(cs, entry(blockOf(t, fmt.Sprint(i), 10).Cid(), pb.Message_Wantlist_Block, true))
			}
			kit.k.fromPeer(p, cs, false, kit.now)
			kit.k.tick(kit.advance(999 * time.Millisecond))
			if kit.cn.Timeouts.Load() != 0 {
				t.Fatal("moved before the timeout")
			}
			kit.k.tick(kit.advance(time.Millisecond))
			for _, n := range []peer.ID{n1, n2} {
				if f := kit.down.outcomes(n, downstream.OutcomeFailed); f != 1 {
					t.Errorf("%s: %d failures for one silence", n, f)
				}
			}
		}},
		{"identity CID answered without a node", func(kit *coreKit) {
			h, _ := mh.Sum([]byte("inline"), mh.IDENTITY, -1)
			id := cid.NewCidV1(cid.Raw, h)
			kit.k.fromPeer(p, []bsmsg.Entry{entry(id, pb.Message_Wantlist_Block, true)}, false, kit.now)
			if len(kit.fx.blocks[p]) != 1 || string(kit.fx.blocks[p][0].RawData()) != "inline" || len(kit.fx.open[n1])+len(kit.fx.open[n2]) != 0 {
				t.Fatalf("identity CID: %d blocks, node wants %+v", len(kit.fx.blocks[p]), kit.fx.open)
			}
		}},
		{"a miss is fetched once, then asked at the node that fetched it", func(kit *coreKit) {
			kit.k.cfg.FetchMisses = true
			kit.k.fromPeer(p, []bsmsg.Entry{entry(c, pb.Message_Wantlist_Block, true)}, false, kit.now)
			kit.k.fromNode(n1, nil, nil, []cid.Cid{c}, kit.now)
			kit.k.fromNode(n2, nil, nil, []cid.Cid{c}, kit.now)
			if len(kit.fx.fetching) != 1 || len(kit.fx.dontHaves(p)) != 0 {
				t.Fatalf("fetches %v, DONT_HAVEs %v", kit.fx.fetching, kit.fx.dontHaves(p))
			}
			for id, f := range kit.fx.fetching {
				kit.k.fetchDone(id, f.node, f.c, true, kit.advance(time.Second))
				if kit.fx.open[f.node][c] != pb.Message_Wantlist_Block {
					t.Fatalf("want not sent to the node that fetched it: %+v", kit.fx.open)
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kit := newCoreKit(t, Config{}, n1, n2)
			tc.run(kit)
		})
	}
}

// ---- the model test ----

// model is what the test knows independently of the core: what each peer
// wants and whether it still waits for a DONT_HAVE, what each node holds,
// and which fetches are in flight.
type model struct {
	t      testing.TB
	kit    *coreKit
	rng    *rand.Rand
	pool   []blocks.Block
	byCid  map[cid.Cid]blocks.Block
	peers  []peer.ID
	nodes  []peer.ID
	gone   map[peer.ID]bool
	wanted map[peer.ID]map[cid.Cid]bool // wanted; true while a DONT_HAVE is owed
	holds  map[peer.ID]map[cid.Cid]bool
	up     map[peer.ID]bool
	conn   map[peer.ID]bool
	sent   map[*want]bool // wants sent to a node at least once
	log    []string
}

func newModel(t testing.TB, seed uint64) *model {
	m := &model{
		t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		byCid: make(map[cid.Cid]blocks.Block), gone: make(map[peer.ID]bool),
		wanted: make(map[peer.ID]map[cid.Cid]bool), holds: make(map[peer.ID]map[cid.Cid]bool),
		up: make(map[peer.ID]bool), conn: make(map[peer.ID]bool), sent: make(map[*want]bool),
	}
	for i := range 12 {
		size := 100
		if i%2 == 1 {
			size = 2000 // over MaxHaveBlockSize: a want-have gets HAVE
		}
		b := blockOf(t, fmt.Sprintf("block-%d-", i), size)
		m.pool = append(m.pool, b)
		m.byCid[b.Cid()] = b
	}
	for i := range 3 {
		m.peers = append(m.peers, testPeer(i))
		m.wanted[testPeer(i)] = make(map[cid.Cid]bool)
		n := testNode(i)
		m.nodes = append(m.nodes, n)
		m.holds[n] = make(map[cid.Cid]bool)
		for j, b := range m.pool {
			if (j+i)%3 == 0 {
				m.holds[n][b.Cid()] = true
			}
		}
	}
	cfg := Config{MaxWantsPerPeer: 6, MaxInFlightPerNode: 3, FetchMisses: true, MissFetchBurst: 4, MissFetchRate: 1, ExhaustedTTL: 3 * time.Second}
	m.kit = newCoreKit(t, cfg, m.nodes...)
	for _, n := range m.nodes {
		m.up[n], m.conn[n] = true, true
	}
	m.kit.fx.onWant = m.checkFair
	m.kit.fx.onBlock = m.checkBlock
	m.kit.fx.onPresence = m.checkPresence
	return m
}

func (m *model) fail(format string, args ...any) {
	m.t.Helper()
	tail := m.log[max(0, len(m.log)-15):]
	m.t.Fatalf("%s\nlast steps:\n  %s", fmt.Sprintf(format, args...), strings.Join(tail, "\n  "))
}

// checkFair: no peer waits while others are served. A want sent out for
// the first time never takes a slot at an up node while a want of higher
// priority waits in the queue that could have gone there (it has not
// tried that node). A want moved on (DONT_HAVE, failover) keeps its turn.
func (m *model) checkFair(node peer.ID, c cid.Cid, prio int32) {
	w := m.kit.k.wants[c]
	if m.sent[w] {
		return
	}
	m.sent[w] = true
	if !m.up[node] {
		return // the ejected fallback: Pick's choice, not the queue's
	}
	for _, w := range m.kit.k.queue.items {
		if w.c != c && w.prio > prio && !triedBy(w, node) {
			m.fail("%s sent to %s at priority %d while %s (priority %d) waited in the queue", c, node, prio, w.c, w.prio)
		}
	}
}

// checkBlock: no block reaches a peer that does not want it, none twice,
// and only a block whose bytes are the CID's.
func (m *model) checkBlock(to peer.ID, b blocks.Block) {
	if !m.wantedNoDont(to, b.Cid()) {
		m.fail("block %s to %s, which does not want it", b.Cid(), to)
	}
	if got, err := b.Cid().Prefix().Sum(b.RawData()); err != nil || !got.Equals(b.Cid()) {
		m.fail("unverified block %s relayed", b.Cid())
	}
	delete(m.wanted[to], b.Cid())
}

func (m *model) wantedNoDont(p peer.ID, c cid.Cid) bool {
	_, ok := m.wanted[p][c]
	return ok
}

func (m *model) checkPresence(to peer.ID, c cid.Cid, t pb.Message_BlockPresenceType) {
	if !m.wantedNoDont(to, c) {
		m.fail("%v for %s to %s, which does not want it", t, c, to)
	}
	switch t {
	case pb.Message_Have:
		delete(m.wanted[to], c)
	case pb.Message_DontHave:
		m.wanted[to][c] = false
	}
}

func (m *model) pick(cs []cid.Cid) cid.Cid { return cs[m.rng.IntN(len(cs))] }

func (m *model) randomCid() cid.Cid {
	if m.rng.IntN(8) == 0 {
		return blockOf(m.t, fmt.Sprintf("nobody-%d-", m.rng.IntN(5)), 50).Cid()
	}
	return m.pool[m.rng.IntN(len(m.pool))].Cid()
}

// step makes one random event happen.
func (m *model) step() {
	kit := m.kit
	now := kit.advance(time.Duration(m.rng.IntN(400)) * time.Millisecond)
	p := m.peers[m.rng.IntN(len(m.peers))]
	n := m.nodes[m.rng.IntN(len(m.nodes))]
	switch r := m.rng.IntN(100); {
	case r < 30: // a peer wants a few CIDs
		if m.gone[p] {
			m.gone[p] = false
		}
		var es []bsmsg.Entry
		for range 1 + m.rng.IntN(3) {
			c := m.randomCid()
			if slices.ContainsFunc(es, func(e bsmsg.Entry) bool { return e.Cid == c }) {
				// A message holds one entry per CID: bsmsg keeps its
				// wantlist in a map, and merges repeats when parsing.
				continue
			}
			t := pb.Message_Wantlist_Have
			if m.rng.IntN(2) == 0 {
				t = pb.Message_Wantlist_Block
			}
			dont := m.rng.IntN(3) > 0
			es = append(es, entry(c, t, dont))
			m.wanted[p][c] = dont // the newest entry replaces the last
		}
		m.log = append(m.log, fmt.Sprintf("%s wants %d", p, len(es)))
		kit.k.fromPeer(p, es, false, now)
	case r < 38: // a peer cancels
		var cs []cid.Cid
		for c := range m.wanted[p] {
			cs = append(cs, c)
		}
		if len(cs) == 0 || m.gone[p] {
			return
		}
		c := m.pick(cs)
		delete(m.wanted[p], c)
		m.log = append(m.log, fmt.Sprintf("%s cancels %s", p, c))
		kit.k.fromPeer(p, []bsmsg.Entry{cancelEntry(c)}, false, now)
	case r < 41: // a peer leaves
		m.log = append(m.log, fmt.Sprintf("%s gone", p))
		m.gone[p] = true
		clear(m.wanted[p])
		kit.k.peerGone(p, now)
	case r < 70: // a node answers what it has open
		m.answer(n, now)
	case r < 73: // a node sends a block nobody asked it for
		b := m.pool[m.rng.IntN(len(m.pool))]
		m.log = append(m.log, fmt.Sprintf("%s sends unasked %s", n, b.Cid()))
		m.unasked(n, b, now)
	case r < 78: // a node goes down, connected or not
		if !m.up[n] && !m.conn[n] {
			return
		}
		connected := m.rng.IntN(2) == 0 && m.conn[n]
		m.log = append(m.log, fmt.Sprintf("%s down (connected %v)", n, connected))
		m.up[n], m.conn[n] = false, connected
		if connected {
			kit.down.eject(n)
		} else {
			kit.down.setUp(n, false)
			kit.down.mu.Lock()
			kit.down.ejected[n] = false
			kit.down.mu.Unlock()
			clear(kit.fx.open[n]) // the ledger went with the connection
		}
		kit.k.nodeDown(n, connected, now)
	case r < 84: // a node comes back
		if m.up[n] {
			return
		}
		m.log = append(m.log, fmt.Sprintf("%s up", n))
		m.up[n], m.conn[n] = true, true
		kit.down.setUp(n, true)
		kit.down.mu.Lock()
		kit.down.ejected[n] = false
		kit.down.mu.Unlock()
		kit.k.nodeUp(n, now)
	case r < 92: // a miss fetch ends
		m.endFetch(now)
	default:
		m.log = append(m.log, "tick")
		kit.k.tick(now)
	}
}

// answer makes node n answer its open wants as a Kubo node would.
func (m *model) answer(n peer.ID, now time.Time) {
	kit := m.kit
	if !m.conn[n] {
		return
	}
	var bs []blocks.Block
	var haves, donts []cid.Cid
	for c, t := range kit.fx.open[n] {
		switch {
		case !m.holds[n][c]:
			donts = append(donts, c)
		case t == pb.Message_Wantlist_Block || len(m.byCid[c].RawData()) <= DefaultMaxHaveBlockSize:
			bs = append(bs, m.byCid[c])
			delete(kit.fx.open[n], c) // Kubo drops a want it served
		default:
			haves = append(haves, c)
			delete(kit.fx.open[n], c)
		}
	}
	m.log = append(m.log, fmt.Sprintf("%s answers %d blocks, %d haves, %d dont-haves", n, len(bs), len(haves), len(donts)))
	kit.k.fromNode(n, bs, haves, donts, now)
}

func (m *model) unasked(n peer.ID, b blocks.Block, now time.Time) {
	if !m.conn[n] {
		return
	}
	delete(m.kit.fx.open[n], b.Cid()) // a node that sent a block drops its want
	m.kit.k.fromNode(n, []blocks.Block{b}, nil, nil, now)
}

// endFetch ends one miss fetch; one that worked leaves the block on the
// node.
func (m *model) endFetch(now time.Time) {
	fx := m.kit.fx
	ids := make([]uint64, 0, len(fx.fetching))
	for id := range fx.fetching {
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return
	}
	slices.Sort(ids)
	id := ids[m.rng.IntN(len(ids))]
	f := fx.fetching[id]
	delete(fx.fetching, id)
	ok := !fx.stopped[id] && m.rng.IntN(2) == 0 && m.byCid[f.c] != nil
	if ok {
		m.holds[f.node][f.c] = true
	}
	m.log = append(m.log, fmt.Sprintf("fetch %d of %s on %s ends (ok %v)", id, f.c, f.node, ok))
	m.kit.k.fetchDone(id, f.node, f.c, ok, now)
}

// check holds after every step.
func (m *model) check() {
	k, fx := m.kit.k, m.kit.fx
	// Nothing is open at a node for a CID no peer wants, and every want
	// the core has out is open at its node.
	for n, open := range fx.open {
		for c := range open {
			w := k.wants[c]
			if w == nil || w.node != n {
				m.fail("%s holds a want for %s that the core does not have there", n, c)
			}
		}
	}
	for c, w := range k.wants {
		if len(w.wanters) == 0 {
			m.fail("want %s without wanters", c)
		}
		if w.node != "" {
			if _, ok := fx.open[w.node][c]; !ok && m.conn[w.node] {
				m.fail("want %s out at %s, which does not hold it", c, w.node)
			}
		}
		for p := range w.wanters {
			if u := k.peers[p]; u == nil {
				m.fail("want %s lists %s, which the core does not know", c, p)
			} else if _, ok := u.wants[c]; !ok {
				m.fail("want %s lists %s, whose wantlist does not", c, p)
			}
		}
	}
	// Tables agree, and stay within their bounds.
	for p, u := range k.peers {
		if len(u.wants) > k.cfg.MaxWantsPerPeer {
			m.fail("%s has %d wants, cap %d", p, len(u.wants), k.cfg.MaxWantsPerPeer)
		}
		for c := range u.wants {
			if k.wants[c] == nil && len(u.deferred) == 0 {
				m.fail("%s wants %s, which the table does not have", p, c)
			}
		}
		if busy := len(u.wants) > len(u.exhausted); busy != fx.protected[p] {
			m.fail("%s protected %v with %d wants, %d refused", p, fx.protected[p], len(u.wants), len(u.exhausted))
		}
	}
	for id, n := range k.nodes {
		if n.outstanding != len(n.wants) || n.outstanding > k.cfg.MaxInFlightPerNode {
			m.fail("%s: outstanding %d, %d wants, cap %d", id, n.outstanding, len(n.wants), k.cfg.MaxInFlightPerNode)
		}
		pending := 0
		for fid, f := range fx.fetching {
			if f.node == id && !fx.stopped[fid] || f.node == id {
				pending++
			}
		}
		if n.fetches != pending {
			m.fail("%s: %d fetches counted, %d in flight", id, n.fetches, pending)
		}
	}
}

// settle lets every node answer and every fetch end until nothing moves,
// then checks that every want still in the model was answered, is
// refused (with its DONT_HAVE sent when asked), or was dropped.
func (m *model) settle() {
	for range 200 {
		for _, n := range m.nodes {
			m.answer(n, m.kit.advance(10*time.Millisecond))
			m.check()
		}
		for len(m.kit.fx.fetching) > 0 {
			m.endFetch(m.kit.advance(10 * time.Millisecond))
			m.check()
		}
		open := 0
		for _, n := range m.nodes {
			if m.conn[n] {
				open += len(m.kit.fx.open[n])
			}
		}
		if open == 0 && len(m.kit.fx.fetching) == 0 {
			break
		}
	}
	k := m.kit.k
	anyConn := false
	for _, n := range m.nodes {
		anyConn = anyConn || m.conn[n]
	}
	for p, cs := range m.wanted {
		for c, owed := range cs {
			u := k.peers[p]
			if u == nil {
				continue
			}
			if _, in := u.wants[c]; !in {
				if owed {
					m.fail("%s's want for %s was dropped without the DONT_HAVE it asked for", p, c)
				}
				continue
			}
			w := k.wants[c]
			if w == nil {
				continue // deferred
			}
			if anyConn && !w.exhausted {
				m.fail("%s's want for %s neither answered nor refused at rest (node %q, queued %v)", p, c, w.node, w.qi >= 0)
			}
			if w.exhausted && owed {
				m.fail("%s's want for %s refused without the DONT_HAVE it asked for", p, c)
			}
		}
	}
}

// finish: once every peer is gone, every table is empty and the pool's
// books balance.
func (m *model) finish() {
	k := m.kit.k
	for _, p := range m.peers {
		k.peerGone(p, m.kit.advance(time.Millisecond))
		m.gone[p] = true
		clear(m.wanted[p])
		m.check()
	}
	for len(m.kit.fx.fetching) > 0 {
		m.endFetch(m.kit.advance(10 * time.Millisecond))
	}
	if len(k.wants) != 0 || len(k.peers) != 0 || k.queue.Len() != 0 || k.expiring.Len() != 0 {
		m.fail("tables not empty with every peer gone: %d wants, %d peers, %d queued, %d refused", len(k.wants), len(k.peers), k.queue.Len(), k.expiring.Len())
	}
	for n, open := range m.kit.fx.open {
		if len(open) != 0 && m.conn[n] {
			m.fail("%s still holds %d wants with every peer gone", n, len(open))
		}
	}
	for id, n := range k.nodes {
		if n.outstanding != 0 || n.fetches != 0 {
			m.fail("%s: %d outstanding, %d fetches with every peer gone", id, n.outstanding, n.fetches)
		}
	}
	if u := m.kit.down.unbalanced(); u != "" {
		m.fail("Sent and Done do not balance: %s", u)
	}
}

// Thousands of random event sequences from three peers and three nodes,
// seeded and reproducible (KITSUNE_CORE_SEED=n runs one), with the
// invariants checked after every step.
func TestCoreModel(t *testing.T) {
	first, seeds := uint64(0), uint64(500)
	if testing.Short() {
		seeds = 100
	}
	if v := os.Getenv("KITSUNE_CORE_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("KITSUNE_CORE_SEED=%q: %v", v, err)
		}
		first, seeds = n, 1
	}
	for seed := first; seed < first+seeds; seed++ {
		m := newModel(t, seed)
		m.log = append(m.log, fmt.Sprintf("seed %d", seed))
		for range 150 {
			m.step()
			m.check()
		}
		m.settle()
		m.finish()
		if t.Failed() {
			return
		}
	}
}
