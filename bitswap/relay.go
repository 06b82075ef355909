// Package bitswap is Kitsune's message-level Bitswap relay. Upstream peers
// send wants to the front host; the relay forwards each wanted CID once to
// one downstream node through the back host, moves it to another node on
// DONT_HAVE or when a node leaves, and fans the answer out to every
// upstream peer waiting for that CID.
//
// The files: core.go decides everything (tables in, effects out, no I/O);
// relay.go is the shell around it (the networks, the lock, the ticker,
// miss fetches); outbox.go writes to peers and nodes; reverse.go runs the
// preload reverse sessions; local.go answers what no node would.
package bitswap

import (
	"context"
	"errors"
	"sync"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	bsnet "github.com/ipfs/boxo/bitswap/network"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/downstream"
)

// Downstream is what the relay needs from the fleet (downstream.Pool).
type Downstream interface {
	// Pick returns a usable node for c that skip does not exclude.
	Pick(c cid.Cid, skip func(peer.ID) bool) (peer.ID, bool)
	// IsNode reports whether a peer on the back host is a fleet node.
	IsNode(peer.ID) bool
	// Sent and Done feed the pool's load and health figures: every want
	// sent to a node is followed by exactly one Done.
	Sent(node peer.ID)
	Done(node peer.ID, o downstream.Outcome, latency time.Duration)
	// Timeout is how long a node may stay silent with wants outstanding.
	Timeout(node peer.ID) time.Duration
	// Fetch makes a node fetch c from its own peers (a miss).
	Fetch(ctx context.Context, node peer.ID, c cid.Cid) error
	// Penalise counts a misbehaviour of the node's (a block it was never
	// asked for, whose bytes match nothing) towards its ejection.
	Penalise(node peer.ID, why string)
}

// wantsTag protects an upstream peer with wants in flight from the
// connection manager: trimming it would throw away work the fleet is doing
// for it.
const wantsTag = "kitsune-wants"

// peerOut is what the shell writes to one upstream peer with: replies,
// and Kitsune's own wants of reverse sessions.
type peerOut struct {
	reply   *replyOutbox
	reverse *wantOutbox
}

// Relay forwards Bitswap between the front and back networks.
type Relay struct {
	cfg   Config
	log   *zap.Logger
	front bsnet.BitSwapNetwork
	back  bsnet.BitSwapNetwork
	down  Downstream

	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	core    *core
	outs    map[peer.ID]*peerOut
	nodeOut map[peer.ID]*wantOutbox
	fetches map[uint64]context.CancelFunc
	// locals are the local fetches (fetch.go), by their synthetic peer
	// IDs; nil once closed.
	locals   map[peer.ID]*localFetch
	localSeq uint64

	// Reverse sessions (preload): see reverse.go.
	rev *reverseSet

	// replyWindow is how long one reply message may take at the peer's
	// measured rate, replyAckWait how long a written one waits for the
	// receiver's close (pace.go); shorter in tests.
	replyWindow, replyAckWait time.Duration

	// viaBsnet sends to the nodes through boxo's message sender on back,
	// not a stream of the relay's own (the fuzz target's fake network).
	viaBsnet bool

	counters Counters
	// frames are the node message buffers for reuse (framepool.go).
	frames *framePool
	// replyMem counts what every peer's replies keep alive together
	// (replymem.go).
	replyMem *replyMemory
	// gone hears the front host's disconnects (see Start).
	gone *network.NotifyBundle
}

// New builds a relay; Start attaches it to the networks.
func New(cfg Config, front, back bsnet.BitSwapNetwork, down Downstream, log *zap.Logger) *Relay {
	cfg.fill()
	r := &Relay{
		cfg:     cfg,
		log:     log,
		front:   front,
		back:    back,
		down:    down,
		outs:    make(map[peer.ID]*peerOut),
		nodeOut: make(map[peer.ID]*wantOutbox),
		fetches: make(map[uint64]context.CancelFunc),
		locals:  make(map[peer.ID]*localFetch),

		replyWindow: replyWindow, replyAckWait: replyAckWait,
	}
	r.frames = newFramePool(cfg.NodeBufferPoolBytes, &r.counters)
	r.replyMem = newReplyMemory(cfg.ReplyMemoryBytes)
	r.core = newCore(cfg, shellFx{r}, down, &r.counters)
	r.rev = newReverseSet(hostPeers{front.Host().Network()}, shellFx{r}, &r.counters)
	return r
}

// Start begins receiving on both networks. Each network must be started by
// the relay alone: bsnet allows one set of stream handlers per host.
func (r *Relay) Start(ctx context.Context) {
	r.ctx, r.cancel = context.WithCancel(ctx)
	r.back.Start(backReceiver{r})
	r.serveNodeStreams() // see inbound.go
	r.front.Start(frontReceiver{r})
	r.serveFrontStreams() // see front.go
	// bsnet reports a disconnect only for a peer its event worker saw
	// connected: one that connects, sends wants and leaves before that
	// worker runs is never reported gone, and its wants stayed for good
	// (2 peers in a 20,000-peer churn). The host's own notification is
	// not coalesced; upstreamGone is idempotent.
	r.gone = &network.NotifyBundle{DisconnectedF: func(n network.Network, c network.Conn) {
		if p := c.RemotePeer(); n.Connectedness(p) != network.Connected {
			r.upstreamGone(p)
		}
	}}
	r.front.Host().Network().Notify(r.gone)
	go r.tick(r.ctx)
}

// Close cancels every want still outstanding downstream, so the fleet's
// ledgers do not keep Kitsune's wants after it is gone, then stops both
// networks.
func (r *Relay) Close(ctx context.Context) error {
	if r.gone != nil {
		r.front.Host().Network().StopNotify(r.gone)
	}
	r.front.Stop()
	r.mu.Lock()
	byNode := r.core.closeAll()
	r.endLocalsLocked()
	for p, o := range r.outs {
		o.close()
		delete(r.outs, p)
	}
	r.mu.Unlock()

	var errs []error
	for n, cs := range byNode {
		msg := bsmsg.New(false)
		for _, c := range cs {
			msg.Cancel(c)
		}
		if err := r.back.SendMessage(ctx, n, msg); err != nil {
			errs = append(errs, err)
		}
	}
	if r.cancel != nil {
		r.cancel()
	}
	r.back.Stop()
	return errors.Join(errs...)
}

// Stats returns the current table sizes.
func (r *Relay) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Stats{Sessions: len(r.rev.sessions), Authorised: len(r.rev.auth), ReverseWants: len(r.rev.wants), Local: len(r.locals), ReplyPeers: len(r.outs)}
	for _, o := range r.outs {
		l := o.reply.load()
		s.ReplyBytes += l.bytes
		s.ReplyStreams += l.flights
	}
	s.ReplyMemory, s.ReplyHolders = r.replyMem.held()
	r.core.stats(&s)
	return s
}

// Counters returns the relay's cumulative counters.
func (r *Relay) Counters() *Counters { return &r.counters }

// ---- upstream side ----

type frontReceiver struct{ r *Relay }

func (f frontReceiver) ReceiveMessage(ctx context.Context, p peer.ID, msg bsmsg.BitSwapMessage) {
	f.r.fromUpstream(p, msg)
}
func (f frontReceiver) ReceiveError(error)    {}
func (f frontReceiver) PeerConnected(peer.ID) {}

// PeerDisconnected is left to the front host's own notification (see
// Start), which bsnet's coalesced events can miss.
func (f frontReceiver) PeerDisconnected(peer.ID) {}

func (r *Relay) fromUpstream(p peer.ID, msg bsmsg.BitSwapMessage) {
	if r.oversized(p, msg.Size()) {
		return
	}
	var replies bsmsg.BitSwapMessage
	if len(msg.Blocks()) > 0 || len(msg.BlockPresences()) > 0 {
		replies = msg
	}
	r.upstreamWants(p, msg.Wantlist(), msg.Full(), replies)
}

// oversized reports, and counts, a message from upstream peer p whose
// size (as boxo's Size counts it) is over --max-message-size: it is
// dropped whole.
func (r *Relay) oversized(p peer.ID, size int) bool {
	if size <= r.cfg.MaxMessageSize {
		return false
	}
	r.counters.DroppedMessages.Add(1)
	r.log.Debug("dropping oversized message", zap.Stringer("peer", p), zap.Int("size", size))
	return true
}

// upstreamWants takes the wantlist entries of one message from upstream
// peer p (full: it replaces p's wantlist), and replies, the message
// itself when it also carries blocks or presences (nil otherwise).
func (r *Relay) upstreamWants(p peer.ID, entries []bsmsg.Entry, full bool, replies bsmsg.BitSwapMessage) {
	if len(entries) == 0 && !full && replies == nil {
		return
	}
	// Links are decoded before the lock is taken: a DAG node can be
	// large, and every other peer waits while the lock is held.
	var links map[cid.Cid][]cid.Cid
	if replies != nil {
		links = r.reverseLinks(replies.Blocks())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if replies != nil {
		// Blocks and presences from upstream only ever answer a reverse
		// session's wants; anything else is dropped there.
		r.rev.replies(p, replies, links)
	}
	if len(entries) == 0 && !full {
		return
	}
	if !r.core.hasPeer(p) && !r.front.IsConnectedToPeer(r.ctx, p) {
		// The read loop can deliver a last message after the peer's
		// disconnect was handled; an entry made now would never go.
		return
	}
	r.core.fromPeer(p, entries, full, time.Now())
}

// outLocked is the peer's outboxes, made on first use.
func (r *Relay) outLocked(p peer.ID) *peerOut {
	o := r.outs[p]
	if o == nil {
		link := &streamReplies{host: r.front.Host(), ackWait: r.replyAckWait}
		o = &peerOut{reply: newReplyOutbox(r.ctx, p, link, r.log, r.cfg.PeerBufferBytes, r.replyWindow, replyHooks{
			sent: r.countSent, cut: r.countCut, drained: func() { r.resumeDeferred(p) }})}
		o.reply.mem = r.replyMem
		r.outs[p] = o
	}
	return o
}

func (o *peerOut) close() {
	o.reply.close()
	if o.reverse != nil {
		o.reverse.reset()
	}
}

// resumeDeferred fetches again the blocks a slow peer's full outbox made
// Kitsune set aside.
func (r *Relay) resumeDeferred(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.core.resumeDeferred(p, time.Now())
}

func (r *Relay) countSent(blocks, bytes int) {
	r.counters.BlocksOut.Add(uint64(blocks))
	r.counters.BytesOut.Add(uint64(bytes))
}

func (r *Relay) countCut(blocks int, givenUp bool) {
	r.counters.RepliesCutOff.Add(1)
	if givenUp {
		r.counters.RepliesGivenUp.Add(uint64(blocks))
	}
}

func (r *Relay) upstreamGone(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if o := r.outs[p]; o != nil {
		o.close()
		delete(r.outs, p)
	}
	r.rev.peerGone(p)
	r.core.peerGone(p, time.Now())
}

// ---- downstream side ----

type backReceiver struct{ r *Relay }

func (b backReceiver) ReceiveMessage(ctx context.Context, p peer.ID, msg bsmsg.BitSwapMessage) {
	b.r.fromDownstream(p, nodeMessageOf(msg))
}
func (b backReceiver) ReceiveError(error)    {}
func (b backReceiver) PeerConnected(peer.ID) {}
func (b backReceiver) PeerDisconnected(peer.ID) {
	// The pool tells the relay through NodeDown once it has given up on
	// the connection; nothing to do twice.
}

// nodeOutLocked is the outbox to a node, made on first use.
func (r *Relay) nodeOutLocked(id peer.ID) *wantOutbox {
	o := r.nodeOut[id]
	if o == nil {
		if h := r.back.Host(); h != nil && !r.viaBsnet {
			o = newWantOutboxOn(id, &streamLink{h: h, to: id}, r.log)
		} else {
			o = newWantOutbox(id, r.back, r.log)
		}
		o.failures = &r.counters.NodeSendFailures
		r.nodeOut[id] = o
	}
	return o
}

func (r *Relay) fromDownstream(from peer.ID, msg nodeMessage) {
	if !r.down.IsNode(from) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.core.heard(from, now)
	// A Kubo node asks every connected peer for what it fetches, Kitsune's
	// back host included. Only a reverse session lets such a want through
	// to upstream peers; for anything else Kitsune says DONT_HAVE at once
	// rather than let the node wait for a timeout.
	var dont []cid.Cid
	for _, e := range msg.wants {
		switch s := r.rev.sessionFor(from, e.Cid); {
		case e.Cancel:
			r.rev.cancel(from, e.Cid)
		case s != nil:
			r.rev.want(from, e, s)
		case e.SendDontHave:
			dont = append(dont, e.Cid)
		}
	}
	if len(dont) > 0 {
		r.nodeOutLocked(from).dontHave(r.ctx, dont)
	}
	r.core.fromNode(from, msg.blocks, msg.haves, msg.dontHaves, now)
}

// NodeUp implements downstream.Listener: a node joined, came back, or was
// re-admitted.
func (r *Relay) NodeUp(id peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.core.nodeUp(id, time.Now())
}

// NodeDown implements downstream.Listener: the node's wants move elsewhere
// at once. When the connection is gone its ledger went with it (and the
// outbox's queue with it); when the node was only ejected, its wants are
// cancelled there.
func (r *Relay) NodeDown(id peer.ID, connected bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if o := r.nodeOut[id]; o != nil && !connected {
		o.reset()
		delete(r.nodeOut, id)
	}
	r.core.nodeDown(id, connected, time.Now())
}

// tick gives the core the time every CheckInterval: silent nodes lose
// their wants, refused wants expire.
func (r *Relay) tick(ctx context.Context) {
	t := time.NewTicker(r.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.mu.Lock()
			r.core.tick(now)
			r.mu.Unlock()
			r.frames.trim(now)
		}
	}
}
