package bitswap

// Test harness: a relay between a front and a back libp2p host on loopback
// TCP, a static Downstream, downstream nodes (real boxo bitswap servers or
// raw peers the test drives by hand) and upstream peers (real boxo bitswap
// clients or raw peers that send hand-built messages).

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
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
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mh "github.com/multiformats/go-multihash"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/kitsune-lb/kitsune/downstream"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// ---- hosts, blocks, waiting ----

func newHost(t *testing.T) host.Host { return testkit.Host(t, "/ip4/127.0.0.1/tcp/0") }

func connect(t *testing.T, from, to host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := from.Connect(ctx, peer.AddrInfo{ID: to.ID(), Addrs: to.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

func makeBlock(t *testing.T, size int) blocks.Block {
	t.Helper()
	data := make([]byte, size)
	_, _ = rand.Read(data)
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

// missingCid is a CID no node holds.
func missingCid(t *testing.T) cid.Cid { return makeBlock(t, 64).Cid() }

func missingCids(t *testing.T, n int) []cid.Cid {
	out := make([]cid.Cid, n)
	for i := range out {
		out[i] = missingCid(t)
	}
	return out
}

// eventually polls cond until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what func() string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, d, what, cond)
}

// holds checks that cond stays true for d.
func holds(t *testing.T, d time.Duration, what func() string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !cond() {
			t.Fatalf("%s", what())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ---- seeing what peers receive ----

// tapNet calls onRecv for every message before the real receiver sees it.
type tapNet struct {
	bsnetiface.BitSwapNetwork
	onRecv func(from peer.ID, msg bsmsg.BitSwapMessage)

	protMu    sync.Mutex
	protected map[peer.ID]bool // by the relay's wants tag
}

func (n *tapNet) Protect(p peer.ID, tag string) {
	n.protMu.Lock()
	if n.protected == nil {
		n.protected = make(map[peer.ID]bool)
	}
	n.protected[p] = true
	n.protMu.Unlock()
	n.BitSwapNetwork.Protect(p, tag)
}

func (n *tapNet) Unprotect(p peer.ID, tag string) bool {
	n.protMu.Lock()
	delete(n.protected, p)
	n.protMu.Unlock()
	return n.BitSwapNetwork.Unprotect(p, tag)
}

func (n *tapNet) isProtected(p peer.ID) bool {
	n.protMu.Lock()
	defer n.protMu.Unlock()
	return n.protected[p]
}

func (n *tapNet) Start(rs ...bsnetiface.Receiver) {
	wrapped := make([]bsnetiface.Receiver, len(rs))
	for i, r := range rs {
		wrapped[i] = tapReceiver{Receiver: r, n: n}
	}
	n.BitSwapNetwork.Start(wrapped...)
}

// Host is the network's host with its stream handlers tapped: the relay
// reads its peers' streams itself (front.go), past bsnet's receivers, so
// each message is parsed here too, from the bytes the relay reads, and
// handed to onRecv.
func (n *tapNet) Host() host.Host {
	return tapHost{Host: n.BitSwapNetwork.Host(), onRecv: n.onRecv}
}

type tapHost struct {
	host.Host
	onRecv func(peer.ID, bsmsg.BitSwapMessage)
}

func (h tapHost) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	h.Host.SetStreamHandler(pid, func(s network.Stream) { handler(&tapStream{Stream: s, onRecv: h.onRecv}) })
}

// tapStream parses the messages its reader reads, once each is whole.
type tapStream struct {
	network.Stream
	onRecv func(peer.ID, bsmsg.BitSwapMessage)
	buf    []byte
}

func (t *tapStream) Read(p []byte) (int, error) {
	n, err := t.Stream.Read(p)
	t.buf = append(t.buf, p[:n]...)
	for {
		size, k := binary.Uvarint(t.buf)
		if k <= 0 || uint64(len(t.buf)-k) < size {
			break
		}
		end := k + int(size)
		if m, _, perr := bsmsg.FromNet(bytes.NewReader(t.buf[:end])); perr == nil {
			t.onRecv(t.Conn().RemotePeer(), m)
		}
		t.buf = t.buf[end:]
	}
	return n, err
}

type tapReceiver struct {
	bsnetiface.Receiver
	n *tapNet
}

func (r tapReceiver) ReceiveMessage(ctx context.Context, p peer.ID, msg bsmsg.BitSwapMessage) {
	r.n.onRecv(p, msg)
	r.Receiver.ReceiveMessage(ctx, p, msg)
}

// wantLog records the wantlist entries a peer received.
type wantLog struct {
	mu      sync.Mutex
	wants   map[cid.Cid]int // want entries (not cancels) per CID
	cancels map[cid.Cid]int
	types   map[cid.Cid]pb.Message_Wantlist_WantType // last type seen
	prios   map[cid.Cid]int32                        // last priority seen
	open    map[cid.Cid]bool                         // wanted, not cancelled or answered
	maxOpen int
}

func newWantLog() *wantLog {
	return &wantLog{
		wants:   make(map[cid.Cid]int),
		cancels: make(map[cid.Cid]int),
		types:   make(map[cid.Cid]pb.Message_Wantlist_WantType),
		prios:   make(map[cid.Cid]int32),
		open:    make(map[cid.Cid]bool),
	}
}

func (l *wantLog) record(msg bsmsg.BitSwapMessage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range msg.Wantlist() {
		if e.Cancel {
			l.cancels[e.Cid]++
			delete(l.open, e.Cid)
			continue
		}
		l.wants[e.Cid]++
		l.types[e.Cid] = e.WantType
		l.prios[e.Cid] = e.Priority
		l.open[e.Cid] = true
	}
	if len(l.open) > l.maxOpen {
		l.maxOpen = len(l.open)
	}
}

func (l *wantLog) wanted(c cid.Cid) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.wants[c]
}

func (l *wantLog) priority(c cid.Cid) int32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.prios[c]
}

func (l *wantLog) cancelled(c cid.Cid) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cancels[c]
}

func (l *wantLog) wantType(c cid.Cid) pb.Message_Wantlist_WantType {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.types[c]
}

func (l *wantLog) isOpen(c cid.Cid) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open[c]
}

func (l *wantLog) openCids() []cid.Cid {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]cid.Cid, 0, len(l.open))
	for c := range l.open {
		out = append(out, c)
	}
	return out
}

func (l *wantLog) close(c cid.Cid) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.open, c)
}

func (l *wantLog) totals() (wants, cancels, distinct, maxOpen int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.wants {
		wants += n
	}
	for _, n := range l.cancels {
		cancels += n
	}
	return wants, cancels, len(l.wants), l.maxOpen
}

// ---- the static downstream ----

// staticDown is a fixed fleet: round robin over the nodes that are up,
// honouring skip, as the real pool's policy would. It keeps the Sent/Done
// ledger the relay reports, and gives every node the same silence timeout.
type staticDown struct {
	mu      sync.Mutex
	order   []peer.ID
	up      map[peer.ID]bool
	ejected map[peer.ID]bool
	next    int
	timeout time.Duration
	sent    map[peer.ID]int
	done    map[peer.ID]map[downstream.Outcome]int
	penal   map[peer.ID]int
	fetches int
}

func newStaticDown() *staticDown {
	return &staticDown{
		up:      make(map[peer.ID]bool),
		ejected: make(map[peer.ID]bool),
		timeout: time.Hour, // frozen test nodes stay frozen unless a test says otherwise
		sent:    make(map[peer.ID]int),
		done:    make(map[peer.ID]map[downstream.Outcome]int),
		penal:   make(map[peer.ID]int),
	}
}

func (d *staticDown) Penalise(id peer.ID, _ string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.penal[id]++
}

func (d *staticDown) penalties(id peer.ID) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.penal[id]
}

func (d *staticDown) Pick(_ cid.Cid, skip func(peer.ID) bool) (peer.ID, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.order {
		id := d.order[(d.next+i)%len(d.order)]
		if !d.up[id] || (skip != nil && skip(id)) {
			continue
		}
		d.next = (d.next + i + 1) % len(d.order)
		return id, true
	}
	// Like the real pool, never empty by ejection: with no node up, the
	// ejected ones are offered.
	for _, id := range d.order {
		if d.ejected[id] && (skip == nil || !skip(id)) {
			return id, true
		}
	}
	return "", false
}

// eject marks a node ejected (still connected): Pick offers it only when
// no node is up.
func (d *staticDown) eject(id peer.ID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.up[id] = false
	d.ejected[id] = true
}

func (d *staticDown) IsNode(id peer.ID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.up[id]
	return ok
}

func (d *staticDown) Sent(id peer.ID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.sent[id]++
}

func (d *staticDown) Done(id peer.ID, o downstream.Outcome, _ time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done[id] == nil {
		d.done[id] = make(map[downstream.Outcome]int)
	}
	d.done[id][o]++
}

func (d *staticDown) Timeout(peer.ID) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.timeout
}

func (d *staticDown) Fetch(context.Context, peer.ID, cid.Cid) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.fetches++
	return errors.New("the test fleet fetches nothing")
}

func (d *staticDown) fetchCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fetches
}

func (d *staticDown) add(id peer.ID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.order = append(d.order, id)
	d.up[id] = true
}

func (d *staticDown) setUp(id peer.ID, up bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.up[id] = up
}

func (d *staticDown) setTimeout(t time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.timeout = t
}

func (d *staticDown) outcomes(id peer.ID, o downstream.Outcome) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.done[id][o]
}

// unbalanced lists the nodes whose Sent count differs from their Done
// count.
func (d *staticDown) unbalanced() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	ids := make(map[peer.ID]bool)
	for id := range d.sent {
		ids[id] = true
	}
	for id := range d.done {
		ids[id] = true
	}
	for id := range ids {
		done := 0
		for _, n := range d.done[id] {
			done += n
		}
		if done != d.sent[id] {
			out = append(out, fmt.Sprintf("%s: sent %d, done %d %v", id, d.sent[id], done, d.done[id]))
		}
	}
	return strings.Join(out, "; ")
}

// ---- the environment ----

type env struct {
	t     *testing.T
	ctx   context.Context
	front host.Host
	back  host.Host
	relay *Relay
	down  *staticDown
	tap   *tapNet
	// upWants records every wantlist entry the relay got from upstream.
	upWants *wantLog
}

// newEnv starts a relay between two test hosts; each tune runs on the
// relay before it starts.
func newEnv(t *testing.T, cfg Config, tune ...func(*Relay)) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{
		t:       t,
		ctx:     ctx,
		front:   newHost(t),
		back:    newHost(t),
		down:    newStaticDown(),
		upWants: newWantLog(),
	}
	// Debug output from goroutines that outlive the test would panic in
	// t.Log; the relay logs nothing above Debug, so keep it off unless asked.
	level := zapcore.InfoLevel
	if os.Getenv("KITSUNE_TEST_DEBUG") != "" {
		level = zapcore.DebugLevel
	}
	front := &tapNet{BitSwapNetwork: bsnet.NewFromIpfsHost(GuardStreams(e.front)), onRecv: func(_ peer.ID, m bsmsg.BitSwapMessage) { e.upWants.record(m) }}
	e.tap = front
	e.relay = New(cfg, front, bsnet.NewFromIpfsHost(e.back), e.down, zaptest.NewLogger(t, zaptest.Level(level)))
	// A node message buffer reused while a reply still reads it would
	// carry garbage, and the receiver's hash check would refuse it.
	e.relay.frames.poison = true
	for _, f := range tune {
		f(e.relay)
	}
	e.relay.Start(ctx)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer ccancel()
		_ = e.relay.Close(cctx)
		cancel()
	})
	return e
}

// attach connects the back host to a node and tells the relay it is up,
// in the order the real pool does.
func (e *env) attach(h host.Host) {
	e.t.Helper()
	connect(e.t, e.back, h)
	e.down.add(h.ID())
	e.relay.NodeUp(h.ID())
}

func (e *env) stats() Stats { return e.relay.Stats() }

func (e *env) describe() string {
	s := e.relay.Stats()
	c := e.relay.Counters()
	return fmt.Sprintf("stats %+v; counters recv=%d fwd=%d in=%d out=%d haves=%d donthaves=%d failovers=%d unsolicited=%d droppedMsgs=%d droppedWants=%d",
		s, c.WantsReceived.Load(), c.WantsForwarded.Load(), c.BlocksIn.Load(), c.BlocksOut.Load(),
		c.HavesOut.Load(), c.DontHavesOut.Load(), c.Failovers.Load(), c.Unsolicited.Load(),
		c.DroppedMessages.Load(), c.DroppedWants.Load())
}

// idle reports whether the relay's tables are empty of wants, and every
// reply written has been settled.
func (e *env) idle() bool {
	s := e.relay.Stats()
	if s.Wants != 0 || s.Queued != 0 || s.ReplyBytes != 0 || s.ReplyStreams != 0 {
		return false
	}
	for _, n := range s.Outstanding {
		if n != 0 {
			return false
		}
	}
	return true
}

// waitIdle waits for an empty want table, and checks that every want sent
// to a node was reported done exactly once.
func (e *env) waitIdle() {
	e.t.Helper()
	eventually(e.t, 5*time.Second, func() string { return "an empty want table: " + e.describe() }, e.idle)
	if u := e.down.unbalanced(); u != "" {
		e.t.Errorf("Sent and Done do not match at rest: %s", u)
	}
}

// ---- downstream nodes ----

// srvNode is a downstream node that serves blocks the way a Kubo node does
// (boxo's bitswap server, which cannot be built here without more modules
// in go.mod): a want-block or a want-have for a block up to 1 KiB gets the
// block, a want-have for a larger one gets HAVE, a missing block gets
// DONT_HAVE when asked for one. It logs the wants it receives and can be
// made slow.
type srvNode struct {
	e      *env
	h      host.Host
	net    bsnetiface.BitSwapNetwork
	wlog   *wantLog
	delay  time.Duration
	blocks map[cid.Cid]blocks.Block
}

func (e *env) addServerNode(delay time.Duration, blks ...blocks.Block) *srvNode {
	e.t.Helper()
	n := &srvNode{e: e, h: newHost(e.t), wlog: newWantLog(), delay: delay, blocks: make(map[cid.Cid]blocks.Block)}
	for _, b := range blks {
		n.blocks[b.Cid()] = b
	}
	n.net = bsnet.NewFromIpfsHost(n.h)
	n.net.Start(recorder{onMsg: n.serve})
	e.t.Cleanup(n.net.Stop)
	e.attach(n.h)
	return n
}

// serve runs in the sender's read loop, as bsnet delivers: a delay here
// back-pressures the relay like a busy node.
func (n *srvNode) serve(from peer.ID, msg bsmsg.BitSwapMessage) {
	n.wlog.record(msg)
	if n.delay > 0 {
		time.Sleep(n.delay)
	}
	reply := bsmsg.New(false)
	for _, e := range msg.Wantlist() {
		if e.Cancel {
			continue
		}
		b, ok := n.blocks[e.Cid]
		switch {
		case ok && (e.WantType == pb.Message_Wantlist_Block || len(b.RawData()) <= DefaultMaxHaveBlockSize):
			reply.AddBlock(b)
		case ok:
			reply.AddHave(e.Cid)
		case e.SendDontHave:
			reply.AddDontHave(e.Cid)
		}
		n.wlog.close(e.Cid)
	}
	if reply.Empty() {
		return
	}
	ctx, cancel := context.WithTimeout(n.e.ctx, 5*time.Second)
	defer cancel()
	_ = n.net.SendMessage(ctx, from, reply)
}

// rawNode is a downstream node that answers nothing by itself: the test
// decides what it sends back, and when.
type rawNode struct {
	e    *env
	h    host.Host
	net  bsnetiface.BitSwapNetwork
	wlog *wantLog

	mu        sync.Mutex
	blocks    map[cid.Cid]blocks.Block
	presences []bsmsg.BlockPresence // received from the relay
}

func (n *rawNode) dontHaves() []cid.Cid {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []cid.Cid
	for _, p := range n.presences {
		if p.Type == pb.Message_DontHave {
			out = append(out, p.Cid)
		}
	}
	return out
}

func (e *env) newRawNode(blks ...blocks.Block) *rawNode {
	e.t.Helper()
	n := &rawNode{e: e, h: newHost(e.t), wlog: newWantLog(), blocks: make(map[cid.Cid]blocks.Block)}
	for _, b := range blks {
		n.blocks[b.Cid()] = b
	}
	n.net = bsnet.NewFromIpfsHost(n.h)
	n.net.Start(recorder{onMsg: func(_ peer.ID, m bsmsg.BitSwapMessage) {
		n.wlog.record(m)
		n.mu.Lock()
		n.presences = append(n.presences, m.BlockPresences()...)
		n.mu.Unlock()
	}})
	e.t.Cleanup(n.net.Stop)
	return n
}

func (e *env) addRawNode(blks ...blocks.Block) *rawNode {
	n := e.newRawNode(blks...)
	e.attach(n.h)
	return n
}

func (n *rawNode) send(msg bsmsg.BitSwapMessage) {
	n.e.t.Helper()
	ctx, cancel := context.WithTimeout(n.e.ctx, 5*time.Second)
	defer cancel()
	if err := n.net.SendMessage(ctx, n.e.back.ID(), msg); err != nil {
		n.e.t.Fatal(err)
	}
}

func (n *rawNode) sendBlocks(blks ...blocks.Block) {
	msg := bsmsg.New(false)
	for _, b := range blks {
		msg.AddBlock(b)
		n.wlog.close(b.Cid())
	}
	n.send(msg)
}

func (n *rawNode) sendDontHave(cs ...cid.Cid) {
	msg := bsmsg.New(false)
	for _, c := range cs {
		msg.AddDontHave(c)
		n.wlog.close(c)
	}
	n.send(msg)
}

// answerOpen sends the blocks it holds for every want still open on it and
// returns how many it sent.
func (n *rawNode) answerOpen() int {
	var out []blocks.Block
	n.mu.Lock()
	for _, c := range n.wlog.openCids() {
		if b, ok := n.blocks[c]; ok {
			out = append(out, b)
		}
	}
	n.mu.Unlock()
	if len(out) > 0 {
		n.sendBlocks(out...)
	}
	return len(out)
}

// recorder is a Receiver that hands every message to onMsg.
type recorder struct {
	onMsg func(peer.ID, bsmsg.BitSwapMessage)
}

func (r recorder) ReceiveMessage(_ context.Context, p peer.ID, m bsmsg.BitSwapMessage) {
	r.onMsg(p, m)
}
func (recorder) ReceiveError(error)         {}
func (recorder) PeerConnected(peer.ID)      {}
func (recorder) PeerDisconnected(p peer.ID) {}

// ---- upstream peers ----

// replyLog records what an upstream peer received.
type replyLog struct {
	mu        sync.Mutex
	blocks    map[cid.Cid][]byte
	nblocks   map[cid.Cid]int
	haves     map[cid.Cid]int
	dontHaves map[cid.Cid]int
	onDont    func(cid.Cid) // called as each DONT_HAVE arrives
}

func newReplyLog() *replyLog {
	return &replyLog{
		blocks:    make(map[cid.Cid][]byte),
		nblocks:   make(map[cid.Cid]int),
		haves:     make(map[cid.Cid]int),
		dontHaves: make(map[cid.Cid]int),
	}
}

func (l *replyLog) record(m bsmsg.BitSwapMessage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range m.Blocks() {
		l.blocks[b.Cid()] = b.RawData()
		l.nblocks[b.Cid()]++
	}
	for _, c := range m.Haves() {
		l.haves[c]++
	}
	for _, c := range m.DontHaves() {
		l.dontHaves[c]++
		if l.onDont != nil {
			l.onDont(c)
		}
	}
}

func (l *replyLog) block(c cid.Cid) ([]byte, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.blocks[c], l.nblocks[c]
}

func (l *replyLog) have(c cid.Cid) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.haves[c]
}

func (l *replyLog) dontHave(c cid.Cid) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dontHaves[c]
}

// about reports how many replies of any kind mention c.
func (l *replyLog) about(c cid.Cid) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nblocks[c] + l.haves[c] + l.dontHaves[c]
}

func (l *replyLog) total() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range []map[cid.Cid]int{l.nblocks, l.haves, l.dontHaves} {
		for _, k := range m {
			n += k
		}
	}
	return n
}

// rawPeer is an upstream peer that sends hand-built messages to the front
// host over one stream, so the relay reads them in order, and records every
// reply.
type rawPeer struct {
	e      *env
	h      host.Host
	net    bsnetiface.BitSwapNetwork
	sendMu sync.Mutex
	sender bsnetiface.MessageSender
	got    *replyLog
}

func (e *env) newRawPeer() *rawPeer { return e.newRawPeerWith(nil) }

// newRawPeerWith also hands every message it receives to onMsg.
func (e *env) newRawPeerWith(onMsg func(peer.ID, bsmsg.BitSwapMessage)) *rawPeer {
	e.t.Helper()
	p := &rawPeer{e: e, h: newHost(e.t), got: newReplyLog()}
	p.net = bsnet.NewFromIpfsHost(p.h)
	p.net.Start(recorder{onMsg: func(from peer.ID, m bsmsg.BitSwapMessage) {
		p.got.record(m)
		if onMsg != nil {
			onMsg(from, m)
		}
	}})
	e.t.Cleanup(p.net.Stop)
	connect(e.t, p.h, e.front)
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	s, err := p.net.NewMessageSender(ctx, e.front.ID(), &bsnetiface.MessageSenderOpts{MaxRetries: 3})
	if err != nil {
		e.t.Fatal(err)
	}
	p.sender = s
	return p
}

func (p *rawPeer) send(msg bsmsg.BitSwapMessage) {
	p.e.t.Helper()
	ctx, cancel := context.WithTimeout(p.e.ctx, 5*time.Second)
	defer cancel()
	if err := p.trySend(ctx, msg); err != nil {
		p.e.t.Fatal(err)
	}
}

// trySend sends msg on the peer's one stream; safe from any goroutine.
func (p *rawPeer) trySend(ctx context.Context, msg bsmsg.BitSwapMessage) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	return p.sender.SendMsg(ctx, msg)
}

func (p *rawPeer) want(t pb.Message_Wantlist_WantType, sendDontHave bool, cs ...cid.Cid) {
	msg := bsmsg.New(false)
	for _, c := range cs {
		msg.AddEntry(c, 1, t, sendDontHave)
	}
	p.send(msg)
}

func (p *rawPeer) wantBlock(cs ...cid.Cid) { p.want(pb.Message_Wantlist_Block, true, cs...) }

func (p *rawPeer) cancel(cs ...cid.Cid) {
	msg := bsmsg.New(false)
	for _, c := range cs {
		msg.Cancel(c)
	}
	p.send(msg)
}

func (p *rawPeer) fullWantlist(cs ...cid.Cid) {
	msg := bsmsg.New(true)
	for _, c := range cs {
		msg.AddEntry(c, 1, pb.Message_Wantlist_Block, true)
	}
	p.send(msg)
}

// fetcher is an upstream client that fetches like boxo's bitswap client
// (which cannot be built here without more modules in go.mod): want-have
// with sendDontHave for everything, want-block once a HAVE comes, cancel
// once the block is in; all over one stream to the front host.
type fetcher struct {
	e *env
	h host.Host
	p *rawPeer

	mu       sync.Mutex
	pending  map[cid.Cid]bool
	got      map[cid.Cid][]byte
	problems []string
	done     chan struct{}
}

func (e *env) newFetcher() *fetcher {
	e.t.Helper()
	f := &fetcher{e: e, pending: make(map[cid.Cid]bool), got: make(map[cid.Cid][]byte), done: make(chan struct{})}
	f.p = e.newRawPeerWith(f.onMsg)
	f.h = f.p.h
	return f
}

func (f *fetcher) onMsg(_ peer.ID, m bsmsg.BitSwapMessage) {
	follow := bsmsg.New(false)
	f.mu.Lock()
	for _, b := range m.Blocks() {
		if !f.pending[b.Cid()] {
			f.problems = append(f.problems, "unwanted or duplicate block "+b.Cid().String())
			continue
		}
		delete(f.pending, b.Cid())
		f.got[b.Cid()] = b.RawData()
		follow.Cancel(b.Cid())
	}
	for _, c := range m.Haves() {
		if f.pending[c] {
			follow.AddEntry(c, 1, pb.Message_Wantlist_Block, true)
		}
	}
	for _, c := range m.DontHaves() {
		f.problems = append(f.problems, "DONT_HAVE for "+c.String())
	}
	finished := len(f.pending) == 0 && f.done != nil
	if finished {
		close(f.done)
		f.done = nil
	}
	f.mu.Unlock()
	if !follow.Empty() {
		ctx, cancel := context.WithTimeout(f.e.ctx, 5*time.Second)
		defer cancel()
		_ = f.p.trySend(ctx, follow)
	}
}

// fetch asks for cs and waits for all of them; it may run in any
// goroutine.
func (f *fetcher) fetch(ctx context.Context, cs []cid.Cid) (map[cid.Cid][]byte, error) {
	f.mu.Lock()
	for _, c := range cs {
		f.pending[c] = true
	}
	done := f.done
	f.mu.Unlock()
	msg := bsmsg.New(false)
	for _, c := range cs {
		msg.AddEntry(c, 1, pb.Message_Wantlist_Have, true)
	}
	if err := f.p.trySend(ctx, msg); err != nil {
		return nil, err
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.problems) > 0 || len(f.pending) > 0 {
		return nil, fmt.Errorf("%d of %d blocks missing (%v); problems: %v", len(f.pending), len(cs), ctx.Err(), f.problems)
	}
	return f.got, nil
}
