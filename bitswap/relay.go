// Package bitswap is Kitsune's message-level Bitswap relay. Upstream peers
// send wants to the front host; the relay forwards each wanted CID once to
// one downstream node through the back host, moves it to another node on
// DONT_HAVE or when a node leaves, and fans the answer out to every
// upstream peer waiting for that CID.
package bitswap

import (
	"container/list"
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/boxo/bitswap/client/wantlist"
	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnet "github.com/ipfs/boxo/bitswap/network"
	blocks "github.com/ipfs/go-block-format"
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

// Config holds the relay's limits.
type Config struct {
	// MaxWantsPerPeer caps one upstream peer's wantlist; entries past it are
	// ignored. Kubo's server allows 1024 per peer.
	MaxWantsPerPeer int
	// MaxInFlightPerNode caps the wants outstanding on one downstream node.
	// Kubo queues at most 1024 wants per peer and Kitsune is one peer to it,
	// so the default stays below that; excess wants wait in Kitsune.
	MaxInFlightPerNode int
	// MaxMessageSize drops upstream messages larger than this. The stream
	// reader already refuses anything over 4 MiB.
	MaxMessageSize int
	// MaxHaveBlockSize is the largest block sent in reply to a want-have,
	// instead of a HAVE; Kubo uses 1024 bytes.
	MaxHaveBlockSize int
	// FetchMisses makes a node fetch a block from the wider network when
	// every node said DONT_HAVE, before the client is told so.
	FetchMisses bool
	// MissFetchTimeout bounds one such fetch.
	MissFetchTimeout time.Duration
	// MissFetchesPerNode bounds the fetches in flight on one node.
	MissFetchesPerNode int
	// MissFetchRate and MissFetchBurst bound the miss fetches one upstream
	// peer's wants may cause (a token bucket: per second, and at once).
	// Broadcasts get a sixteenth of that: every Kubo client broadcasts
	// want-have (without asking for DONT_HAVE, boxo messagequeue.go) for
	// whatever it looks for, and each would make the fleet search the
	// network; but a broadcast is also how a Kubo client asks for a DAG's
	// root, and only a HAVE for the root brings its wants for the rest,
	// which are addressed to Kitsune (want-block, or want-have asking for
	// DONT_HAVE).
	MissFetchRate  float64
	MissFetchBurst int
	// CheckInterval is how often silent nodes are looked for.
	CheckInterval time.Duration
	// PeerBufferBytes caps the block bytes queued for one upstream peer.
	// A peer reading slower than the fleet delivers gets further blocks
	// later (their wants are deferred and sent again once it caught up),
	// so memory stays bounded whatever the peer does.
	PeerBufferBytes int
	// ExhaustedTTL is how long a want every node refused is kept for its
	// wanters (a block added to the fleet meanwhile still reaches them);
	// then it is dropped, as if cancelled.
	ExhaustedTTL time.Duration
}

// Defaults for Config.
const (
	DefaultMaxWantsPerPeer    = 1024
	DefaultMaxInFlightPerNode = 960
	DefaultMaxMessageSize     = 4 << 20
	DefaultMaxHaveBlockSize   = 1024
	DefaultMissFetchTimeout   = 30 * time.Second
	DefaultMissFetchesPerNode = 16
	DefaultMissFetchRate      = 64.0
	DefaultMissFetchBurst     = 128
	DefaultPeerBufferBytes    = 16 << 20
	DefaultExhaustedTTL       = 2 * time.Minute
)

func (c *Config) fill() {
	orDefault(&c.MaxWantsPerPeer, DefaultMaxWantsPerPeer)
	orDefault(&c.MaxInFlightPerNode, DefaultMaxInFlightPerNode)
	orDefault(&c.MaxMessageSize, DefaultMaxMessageSize)
	orDefault(&c.MissFetchTimeout, DefaultMissFetchTimeout)
	orDefault(&c.MissFetchesPerNode, DefaultMissFetchesPerNode)
	orDefault(&c.MissFetchBurst, DefaultMissFetchBurst)
	if c.MissFetchRate <= 0 {
		c.MissFetchRate = DefaultMissFetchRate
	}
	orDefault(&c.PeerBufferBytes, DefaultPeerBufferBytes)
	orDefault(&c.CheckInterval, 100*time.Millisecond)
	orDefault(&c.ExhaustedTTL, DefaultExhaustedTTL)
	if c.MaxHaveBlockSize < 0 {
		c.MaxHaveBlockSize = 0
	} else if c.MaxHaveBlockSize == 0 {
		c.MaxHaveBlockSize = DefaultMaxHaveBlockSize
	}
}

// orDefault replaces a zero or negative setting with its default.
func orDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// wanter is one upstream peer's interest in a CID.
type wanter struct {
	wantType     pb.Message_Wantlist_WantType
	sendDontHave bool
	priority     int32
}

// want is one CID that at least one upstream peer wants.
type want struct {
	c       cid.Cid
	wanters map[peer.ID]wanter
	// node is the downstream node the want is outstanding on, if any, and
	// sentType what it was asked for there.
	node     peer.ID
	sentType pb.Message_Wantlist_WantType
	sentAt   time.Time
	// prio is the priority Kitsune gives w downstream (see priorityLocked).
	prio int32
	// tried holds the nodes that answered DONT_HAVE in this round.
	tried map[peer.ID]struct{}
	// qi is w's index in the queue while it waits for a node with room
	// (-1 otherwise), qseq its arrival there.
	qi   int
	qseq uint64
	// exhausted is set once every node said DONT_HAVE; the want stays for
	// its wanters (as a Kubo server keeps it in its ledger) and is tried
	// again when one of them asks again or a node joins.
	exhausted bool
	// expiry is w's place in the relay's list of exhausted wants, oldest
	// first, while exhausted.
	expiry      *list.Element
	exhaustedAt time.Time
	// fetching is set while a node fetches the block for a miss; fetched
	// once that was tried in this round, so a round fetches at most once.
	fetching    bool
	fetched     bool
	cancelFetch context.CancelFunc
}

func (w *want) needsBlock() bool {
	for _, wr := range w.wanters {
		if wr.wantType == pb.Message_Wantlist_Block {
			return true
		}
	}
	return false
}

type upstream struct {
	wants map[cid.Cid]struct{}
	out   *replyOutbox
	// deferred are wants whose block arrived while the peer's outbox was
	// full; they are fetched again once it drains.
	deferred map[cid.Cid]wanter
	// reverse carries Kitsune's own wants to this peer (reverse sessions).
	reverse *wantOutbox
	// fetches and haveFetches are the peer's miss-fetch allowances, for
	// wants addressed to Kitsune and for broadcasts.
	fetches, haveFetches tokenBucket
	// exhausted are those of wants every node refused: evicted first when
	// the peer is at its cap, and not worth protecting the peer for.
	exhausted map[cid.Cid]struct{}
	protected bool
	// served counts the wants sent to nodes for this peer since it last
	// had nothing out: the basis of its wants' priority downstream.
	served int32
}

type node struct {
	outstanding int
	up          bool
	// connected is false once the pool said the connection is gone; an
	// ejected node stays connected, and Pick may still offer it.
	connected bool
	out       *wantOutbox
	// wants are those outstanding here, for failover without a scan of
	// the whole table.
	wants map[cid.Cid]*want
	// lastHeard is when the node last sent anything: a node that answers
	// is slow, not dead, and its wants are left alone.
	lastHeard time.Time
	fetches   int
	// asked remembers the CIDs recently sent to the node, so a late block
	// (after a cancel or failover) is told apart from a block whose bytes
	// match nothing Kitsune asked for.
	asked hintCache
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

	mu    sync.Mutex
	wants map[cid.Cid]*want
	peers map[peer.ID]*upstream
	nodes map[peer.ID]*node
	queue wantQueue // wants waiting for a node with room
	// expiring holds the exhausted wants, oldest first (see ExhaustedTTL).
	expiring *list.List
	hints    hintCache // which node last said HAVE for a CID

	// Reverse sessions (preload): see reverse.go.
	sessions map[*session]struct{}
	auth     map[cid.Cid]map[*session]struct{}
	reverse  map[cid.Cid]*rwant

	// upstreams finds the peers a preload caller could be (reverse.go).
	upstreams upstreamPeers

	counters Counters
	// gone hears the front host's disconnects (see Start).
	gone *network.NotifyBundle
}

// Counters are cumulative totals, read with Counters().
type Counters struct {
	WantsReceived   atomic.Uint64 // want entries from upstream
	WantsForwarded  atomic.Uint64 // want entries sent downstream
	BlocksIn        atomic.Uint64 // blocks received from downstream
	BytesIn         atomic.Uint64 // block bytes received from downstream
	BlocksOut       atomic.Uint64 // blocks sent upstream
	BytesOut        atomic.Uint64 // block bytes sent upstream
	HavesOut        atomic.Uint64
	DontHavesOut    atomic.Uint64
	Failovers       atomic.Uint64 // wants moved to another node
	Unsolicited     atomic.Uint64 // blocks from downstream nobody wanted
	DroppedMessages atomic.Uint64 // upstream messages over the size limit
	DroppedWants    atomic.Uint64 // want entries over a peer's limit, or refused wants they evicted
	Timeouts        atomic.Uint64 // wants moved off a silent node
	MissFetches     atomic.Uint64 // nodes asked to fetch a block nobody had
	MissFetched     atomic.Uint64 // ... that got it
	// Reverse sessions (preload): the fleet fetching from upstream peers.
	ReverseWants  atomic.Uint64 // downstream wants forwarded upstream
	ReverseBlocks atomic.Uint64 // blocks relayed from upstream to the fleet
	ReverseBytes  atomic.Uint64
	Deferred      atomic.Uint64 // blocks set aside for a peer reading too slowly
	BadBlocks     atomic.Uint64 // blocks from a node that match nothing it was asked for
	// Wants Kitsune answers itself, never forwarded (local.go).
	RefusedWants atomic.Uint64 // CIDs longer than a Kubo node accepts
	InlineBlocks atomic.Uint64 // identity CIDs answered from the CID
}

// New builds a relay; Start attaches it to the networks.
func New(cfg Config, front, back bsnet.BitSwapNetwork, down Downstream, log *zap.Logger) *Relay {
	cfg.fill()
	return &Relay{
		cfg:      cfg,
		log:      log,
		front:    front,
		back:     back,
		down:     down,
		wants:    make(map[cid.Cid]*want),
		peers:    make(map[peer.ID]*upstream),
		nodes:    make(map[peer.ID]*node),
		expiring: list.New(),
		hints:    newHintCache(4096),

		sessions: make(map[*session]struct{}),
		auth:     make(map[cid.Cid]map[*session]struct{}),
		reverse:  make(map[cid.Cid]*rwant),

		upstreams: hostPeers{front.Host().Network()},
	}
}

// Start begins receiving on both networks. Each network must be started by
// the relay alone: bsnet allows one set of stream handlers per host.
func (r *Relay) Start(ctx context.Context) {
	r.ctx, r.cancel = context.WithCancel(ctx)
	r.back.Start(backReceiver{r})
	r.front.Start(frontReceiver{r})
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
	go r.watchSilence(r.ctx)
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
	byNode := make(map[peer.ID][]cid.Cid)
	for c, w := range r.wants {
		if w.node != "" {
			byNode[w.node] = append(byNode[w.node], c)
		}
	}
	r.wants = make(map[cid.Cid]*want)
	r.queue.reset()
	for p, u := range r.peers {
		u.out.close()
		delete(r.peers, p)
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

// Stats is a snapshot of the relay's tables, for tests and status.
type Stats struct {
	Wants       int
	Refused     int // wants every node refused, kept for their wanters
	Peers       int
	Queued      int
	Outstanding map[peer.ID]int
	// Reverse sessions: open sessions, CIDs they authorise, and wants
	// from the fleet waiting on upstream peers.
	Sessions     int
	Authorised   int
	ReverseWants int
}

// Stats returns the current table sizes.
func (r *Relay) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Stats{
		Wants: len(r.wants), Refused: r.expiring.Len(), Peers: len(r.peers), Queued: r.queue.Len(), Outstanding: make(map[peer.ID]int),
		Sessions: len(r.sessions), Authorised: len(r.auth), ReverseWants: len(r.reverse),
	}
	for id, n := range r.nodes {
		s.Outstanding[id] = n.outstanding
	}
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

// wantsTag protects an upstream peer with wants in flight from the
// connection manager: trimming it would throw away work the fleet is doing
// for it.
const wantsTag = "kitsune-wants"

func (r *Relay) fromUpstream(p peer.ID, msg bsmsg.BitSwapMessage) {
	if size := msg.Size(); size > r.cfg.MaxMessageSize {
		r.counters.DroppedMessages.Add(1)
		r.log.Debug("dropping oversized message", zap.Stringer("peer", p), zap.Int("size", size))
		return
	}
	entries := msg.Wantlist()
	replies := len(msg.Blocks()) > 0 || len(msg.BlockPresences()) > 0
	if len(entries) == 0 && !msg.Full() && !replies {
		return
	}
	// Links are decoded before the lock is taken: a DAG node can be
	// large, and every other peer waits while the lock is held.
	links := r.reverseLinks(msg.Blocks())
	r.mu.Lock()
	defer r.mu.Unlock()
	if replies {
		// Blocks and presences from upstream only ever answer a reverse
		// session's wants; anything else is dropped there.
		r.fromUpstreamRepliesLocked(p, msg, links)
	}
	if len(entries) == 0 && !msg.Full() {
		return
	}
	u := r.peers[p]
	if u == nil {
		if !r.front.IsConnectedToPeer(r.ctx, p) {
			// The read loop can deliver a last message after the peer's
			// disconnect was handled; an entry made now would never go.
			return
		}
		u = r.newUpstreamLocked(p)
	}
	if msg.Full() {
		// A full wantlist replaces the previous one.
		keep := make(map[cid.Cid]struct{}, len(entries))
		for _, e := range entries {
			if !e.Cancel {
				keep[e.Cid] = struct{}{}
			}
		}
		for c := range u.wants {
			if _, ok := keep[c]; !ok {
				r.removeWanterLocked(p, u, c)
			}
		}
	}
	for _, e := range entries {
		if e.Cancel {
			r.removeWanterLocked(p, u, e.Cid)
			continue
		}
		r.counters.WantsReceived.Add(1)
		if r.answerLocallyLocked(u, e) {
			continue
		}
		r.addWanterLocked(p, u, e)
	}
	r.protectLocked(p, u)
	r.drainQueueLocked()
}

// protectLocked keeps an upstream peer safe from the connection manager
// exactly while some want of its is being worked on: trimming it would
// throw that work away. Wants every node refused do not count.
func (r *Relay) protectLocked(p peer.ID, u *upstream) {
	switch busy := len(u.wants) > len(u.exhausted); {
	case busy && !u.protected:
		r.front.Protect(p, wantsTag)
	case !busy && u.protected:
		r.front.Unprotect(p, wantsTag)
		u.served = 0 // idle: its next wants come first again
	default:
		return
	}
	u.protected = !u.protected
}

// answerLocallyLocked answers a want no fleet node would (see local.go)
// and reports whether it did; such wants never enter the table.
func (r *Relay) answerLocallyLocked(u *upstream, e bsmsg.Entry) bool {
	switch classify(e.Cid) {
	case refuse:
		r.counters.RefusedWants.Add(1)
		if e.SendDontHave {
			u.out.addPresence(r.ctx, e.Cid, pb.Message_DontHave)
			r.counters.DontHavesOut.Add(1)
		}
		return true
	case inline:
		b, ok := identityBlock(e.Cid)
		if !ok {
			return true // a multihash that does not parse: nothing to answer
		}
		r.counters.InlineBlocks.Add(1)
		if e.WantType == pb.Message_Wantlist_Block || len(b.RawData()) <= r.cfg.MaxHaveBlockSize {
			u.out.addBlock(r.ctx, b)
		} else {
			u.out.addPresence(r.ctx, e.Cid, pb.Message_Have)
			r.counters.HavesOut.Add(1)
		}
		return true
	}
	return false
}

func (r *Relay) newUpstreamLocked(p peer.ID) *upstream {
	u := &upstream{wants: make(map[cid.Cid]struct{}), deferred: make(map[cid.Cid]wanter), exhausted: make(map[cid.Cid]struct{}),
		fetches:     newTokenBucket(r.cfg.MissFetchRate, r.cfg.MissFetchBurst, time.Now()),
		haveFetches: newTokenBucket(r.cfg.MissFetchRate/16, max(1, r.cfg.MissFetchBurst/16), time.Now())}
	u.out = newReplyOutbox(p, r.front, r.log, r.countSent, r.cfg.PeerBufferBytes, func() { r.resumeDeferred(p) })
	r.peers[p] = u
	return u
}

// resumeDeferred fetches again the blocks a slow peer's full outbox made
// Kitsune set aside.
func (r *Relay) resumeDeferred(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.peers[p]
	if u == nil {
		return
	}
	for c, wr := range u.deferred {
		delete(u.deferred, c)
		if _, still := u.wants[c]; !still {
			continue // cancelled meanwhile
		}
		e := bsmsg.Entry{Entry: wantlist.Entry{Cid: c, Priority: wr.priority, WantType: wr.wantType}, SendDontHave: wr.sendDontHave}
		delete(u.wants, c)
		r.addWanterLocked(p, u, e)
	}
	r.drainQueueLocked()
}

func (r *Relay) countSent(blocks, bytes int) {
	r.counters.BlocksOut.Add(uint64(blocks))
	r.counters.BytesOut.Add(uint64(bytes))
}

func (r *Relay) addWanterLocked(p peer.ID, u *upstream, e bsmsg.Entry) {
	if _, had := u.wants[e.Cid]; !had && len(u.wants) >= r.cfg.MaxWantsPerPeer {
		// At the cap, a want every node refused makes room first, as
		// boxo's server does in handleOverflow; with none, the new want
		// is refused, and told so when it asked.
		// Either way a want is dropped, and counted.
		r.counters.DroppedWants.Add(1)
		evicted := false
		for c := range u.exhausted {
			r.removeWanterLocked(p, u, c)
			evicted = true
			break
		}
		if !evicted {
			if e.SendDontHave {
				u.out.addPresence(r.ctx, e.Cid, pb.Message_DontHave)
				r.counters.DontHavesOut.Add(1)
			}
			return
		}
	}
	u.wants[e.Cid] = struct{}{}
	wr := wanter{wantType: e.WantType, sendDontHave: e.SendDontHave, priority: e.Priority}

	w := r.wants[e.Cid]
	if w == nil {
		w = &want{c: e.Cid, wanters: map[peer.ID]wanter{p: wr}, tried: make(map[peer.ID]struct{}), qi: -1}
		r.wants[e.Cid] = w
		r.dispatchLocked(w)
		return
	}
	if prev, ok := w.wanters[p]; ok && prev.wantType == pb.Message_Wantlist_Block {
		// A want-have does not take back a want-block still open.
		wr.wantType = prev.wantType
	}
	w.wanters[p] = wr
	switch {
	case w.exhausted:
		// Asked again after every node said DONT_HAVE: the content may have
		// arrived since, so start a new round.
		r.newRoundLocked(w)
	case w.node != "" && w.sentType == pb.Message_Wantlist_Have && wr.wantType == pb.Message_Wantlist_Block:
		// Upgrade on the node that has the want already.
		w.sentType = pb.Message_Wantlist_Block
		r.nodeLocked(w.node).out.want(r.ctx, w.c, w.sentType, w.prio)
		r.counters.WantsForwarded.Add(1)
	}
}

// newRoundLocked forgets which nodes said DONT_HAVE and tries again.
func (r *Relay) newRoundLocked(w *want) {
	r.setExhaustedLocked(w, false)
	w.fetched = false
	clear(w.tried)
	r.dispatchLocked(w)
}

func (r *Relay) removeWanterLocked(p peer.ID, u *upstream, c cid.Cid) {
	delete(u.wants, c)
	delete(u.exhausted, c)
	w := r.wants[c]
	if w == nil {
		return
	}
	delete(w.wanters, p)
	if len(w.wanters) == 0 {
		r.dropWantLocked(w)
	}
}

// dropWantLocked forgets a want nobody waits for any more, cancelling it on
// the node that has it.
func (r *Relay) dropWantLocked(w *want) {
	delete(r.wants, w.c)
	r.setExhaustedLocked(w, false)
	r.queue.remove(w)
	if w.cancelFetch != nil {
		w.cancelFetch()
		w.cancelFetch = nil
	}
	// The caller drains the queue once it has dropped all it drops: doing
	// it here would hand freed slots to wants about to be dropped too.
	if w.node != "" {
		r.unassignLocked(w, downstream.OutcomeCancelled, true)
	}
}

func (r *Relay) upstreamGone(p peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u := r.peers[p]
	if u == nil {
		return
	}
	delete(r.peers, p)
	u.out.close()
	if u.reverse != nil {
		u.reverse.reset()
	}
	r.reversePeerGoneLocked(p)
	for c := range u.wants {
		r.removeWanterLocked(p, u, c)
	}
	if u.protected {
		r.front.Unprotect(p, wantsTag)
	}
	r.drainQueueLocked()
}

// ---- choosing a node ----

func (r *Relay) nodeLocked(id peer.ID) *node {
	n := r.nodes[id]
	if n == nil {
		n = &node{connected: true, out: newWantOutbox(id, r.back, r.log), wants: make(map[cid.Cid]*want), lastHeard: time.Now(), asked: newHintCache(4096)}
		r.nodes[id] = n
	}
	return n
}

func (r *Relay) fullLocked(id peer.ID) bool {
	n := r.nodes[id]
	return n != nil && n.outstanding >= r.cfg.MaxInFlightPerNode
}

// priorityLocked is the priority w gets downstream, set by Kitsune: to a
// Kubo node Kitsune is one peer, whose wants it serves highest priority
// first, while upstream clients count priorities as they like (boxo down
// from MaxInt32 per peer, Helia 1 for everything), so passing theirs on
// let a busy Kubo client starve a Helia one. Each peer's n-th want out
// gets MaxInt32 - n: the node interleaves the peers' wants, a peer that
// just arrived is served next, and one with a deep backlog waits its turn.
func (r *Relay) priorityLocked(w *want) int32 {
	var best int32 = 1
	for p := range w.wanters {
		if u := r.peers[p]; u != nil {
			best = max(best, math.MaxInt32-u.served)
			if u.served < math.MaxInt32-1 {
				u.served++
			}
		}
	}
	return best
}

// assignLocked sends w to node id.
func (r *Relay) assignLocked(w *want, id peer.ID) {
	if w.prio == 0 {
		w.prio = r.priorityLocked(w)
	}
	w.node = id
	w.sentAt = time.Now()
	w.sentType = pb.Message_Wantlist_Have
	if w.needsBlock() {
		w.sentType = pb.Message_Wantlist_Block
	}
	n := r.nodeLocked(id)
	if n.outstanding == 0 {
		// Silence is measured from the first want a node has to answer.
		n.lastHeard = w.sentAt
	}
	n.outstanding++
	n.wants[w.c] = w
	n.asked.put(w.c, id)
	n.out.want(r.ctx, w.c, w.sentType, w.prio)
	r.down.Sent(id)
	r.counters.WantsForwarded.Add(1)
}

// unassignLocked takes w off its node, reporting how it ended. cancel sends
// a cancel to the node so its ledger lets go of the want too.
func (r *Relay) unassignLocked(w *want, o downstream.Outcome, cancel bool) {
	id := w.node
	if id == "" {
		return
	}
	w.node = ""
	n := r.nodeLocked(id)
	if n.wants[w.c] == w {
		delete(n.wants, w.c)
		n.outstanding--
	}
	if cancel {
		n.out.cancel(r.ctx, w.c)
	}
	r.down.Done(id, o, time.Since(w.sentAt))
}

// dispatchLocked sends w to a node that has not said DONT_HAVE to it, queues
// it when every such node is at its cap, and deals with a miss when there
// is no such node at all.
func (r *Relay) dispatchLocked(w *want) {
	tried := func(id peer.ID) bool { _, t := w.tried[id]; return t }
	if h, ok := r.hints.get(w.c); ok && !tried(h) && !r.fullLocked(h) && r.usableLocked(h) {
		// The node that said HAVE is the one to ask for the block.
		r.assignLocked(w, h)
		return
	}
	if id, ok := r.down.Pick(w.c, func(id peer.ID) bool { return tried(id) || r.fullLocked(id) }); ok {
		r.assignLocked(w, id)
		return
	}
	if _, ok := r.down.Pick(w.c, tried); ok {
		if w.prio == 0 {
			w.prio = r.priorityLocked(w)
		}
		r.queue.add(w)
		return
	}
	r.missLocked(w)
}

func (r *Relay) usableLocked(id peer.ID) bool {
	n := r.nodes[id]
	return n != nil && n.up
}

// missLocked handles a want every node said DONT_HAVE to. A Kubo node does
// not fetch a block because a peer asked for it, but the fleet usually
// reaches the wider network: so one node, chosen by the policy, is asked to
// fetch it through its RPC API, and the want is sent to that node again
// once it has the block. Only when that fails do the wanters hear DONT_HAVE.
func (r *Relay) missLocked(w *want) {
	if !r.cfg.FetchMisses || w.fetched || w.fetching || !r.chargeFetchLocked(w) {
		r.exhaustLocked(w)
		return
	}
	id, ok := r.down.Pick(w.c, nil)
	if !ok {
		r.exhaustLocked(w)
		return
	}
	n := r.nodeLocked(id)
	if n.fetches >= r.cfg.MissFetchesPerNode {
		r.exhaustLocked(w)
		return
	}
	n.fetches++
	w.fetching, w.fetched = true, true
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.MissFetchTimeout)
	w.cancelFetch = cancel
	r.counters.MissFetches.Add(1)
	go func() {
		err := r.down.Fetch(ctx, id, w.c)
		cancel()
		r.mu.Lock()
		defer r.mu.Unlock()
		if nn := r.nodes[id]; nn != nil && nn.fetches > 0 {
			nn.fetches--
		}
		if r.wants[w.c] != w {
			return // nobody wants it any more
		}
		w.fetching = false
		w.cancelFetch = nil
		if err != nil {
			r.log.Debug("miss fetch failed", zap.Stringer("cid", w.c), zap.Stringer("node", id), zap.Error(err))
			r.exhaustLocked(w)
			return
		}
		// The node has the block now: ask it first.
		r.counters.MissFetched.Add(1)
		r.hints.put(w.c, id)
		clear(w.tried)
		r.dispatchLocked(w)
	}()
}

// chargeFetchLocked takes a miss fetch from the allowance of a peer that
// wants w, and reports whether one had any left: the allowance of wants
// addressed to Kitsune first, the much smaller one of broadcasts only
// when no peer addressed it.
func (r *Relay) chargeFetchLocked(w *want) bool {
	now := time.Now()
	addressed := false
	for _, wr := range w.wanters {
		addressed = addressed || wr.addressed()
	}
	for p, wr := range w.wanters {
		u := r.peers[p]
		switch {
		case u == nil:
		case wr.addressed():
			if u.fetches.take(now) {
				return true
			}
		case !addressed:
			if u.haveFetches.take(now) {
				return true
			}
		}
	}
	return false
}

// addressed tells a want meant for Kitsune from a broadcast: boxo sends
// its broadcast want-haves without asking for DONT_HAVE, and the wants it
// addresses to a peer of its session with.
func (wr wanter) addressed() bool {
	return wr.wantType == pb.Message_Wantlist_Block || wr.sendDontHave
}

// exhaustLocked tells the wanters that asked for it that nobody has w.
// The DONT_HAVE goes out once per round: Helia drops a peer as a provider
// on its first DONT_HAVE, so it must mean "no node has it".
func (r *Relay) exhaustLocked(w *want) {
	r.setExhaustedLocked(w, true)
	for p, wr := range w.wanters {
		u := r.peers[p]
		if u == nil {
			continue
		}
		if wr.sendDontHave {
			u.out.addPresence(r.ctx, w.c, pb.Message_DontHave)
			r.counters.DontHavesOut.Add(1)
		}
	}
}

func triedBy(w *want, id peer.ID) bool {
	_, ok := w.tried[id]
	return ok
}

// setExhaustedLocked marks w as refused by every node, or no longer, in
// every table that keeps track (the wanters', the expiry list), and
// updates the wanters' protection.
func (r *Relay) setExhaustedLocked(w *want, on bool) {
	if w.exhausted == on {
		return
	}
	w.exhausted = on
	if on {
		w.exhaustedAt = time.Now()
		w.expiry = r.expiring.PushBack(w)
	} else if w.expiry != nil {
		r.expiring.Remove(w.expiry)
		w.expiry = nil
	}
	for p := range w.wanters {
		if u := r.peers[p]; u != nil {
			if on {
				u.exhausted[w.c] = struct{}{}
			} else {
				delete(u.exhausted, w.c)
			}
			r.protectLocked(p, u)
		}
	}
}

// expireLocked drops the wants every node refused longer than
// ExhaustedTTL ago, as if their wanters had cancelled them.
func (r *Relay) expireLocked(now time.Time) {
	for e := r.expiring.Front(); e != nil; e = r.expiring.Front() {
		w := e.Value.(*want)
		if now.Sub(w.exhaustedAt) < r.cfg.ExhaustedTTL {
			return
		}
		for p := range w.wanters {
			if u := r.peers[p]; u != nil {
				delete(u.wants, w.c)
				delete(u.exhausted, w.c)
				r.protectLocked(p, u)
			}
		}
		clear(w.wanters)
		r.dropWantLocked(w) // takes it off the list
	}
}

// drainQueueLocked moves queued wants to nodes that have room again. It
// goes through the whole queue once rather than stopping at the first want
// that queues again: that one may wait for a busy node while the wants
// behind it could go to an idle one now. Wants go out highest priority
// first (see wantQueue).
func (r *Relay) drainQueueLocked() {
	var held []*want // queued again: back in once the pass is over
	for n := r.queue.Len(); n > 0 && r.roomLocked(); n-- {
		w := r.queue.next()
		r.dispatchLocked(w)
		if w.qi >= 0 {
			r.queue.remove(w)
			held = append(held, w)
		}
	}
	for _, w := range held {
		r.queue.requeue(w)
	}
}

// roomLocked reports whether a node the pool would offer can take another
// want. It follows Pick: while any node is up only those count, and when
// every node is ejected Pick still offers the connected ones, so they do
// (without this the queue froze once the whole fleet was ejected). It is
// an upper bound: a want it lets through may queue again.
func (r *Relay) roomLocked() bool {
	anyUp := false
	for _, n := range r.nodes {
		if n.up {
			anyUp = true
			if n.outstanding < r.cfg.MaxInFlightPerNode {
				return true
			}
		}
	}
	if anyUp {
		return false
	}
	for _, n := range r.nodes {
		if n.connected && n.outstanding < r.cfg.MaxInFlightPerNode {
			return true
		}
	}
	return false
}

// ---- downstream side ----

type backReceiver struct{ r *Relay }

func (b backReceiver) ReceiveMessage(ctx context.Context, p peer.ID, msg bsmsg.BitSwapMessage) {
	b.r.fromDownstream(p, msg)
}
func (b backReceiver) ReceiveError(error)    {}
func (b backReceiver) PeerConnected(peer.ID) {}
func (b backReceiver) PeerDisconnected(peer.ID) {
	// The pool tells the relay through NodeDown once it has given up on
	// the connection; nothing to do twice.
}

func (r *Relay) fromDownstream(from peer.ID, msg bsmsg.BitSwapMessage) {
	if !r.down.IsNode(from) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodeLocked(from)
	n.lastHeard = time.Now()
	// A Kubo node asks every connected peer for what it fetches, Kitsune's
	// back host included. Only a reverse session lets such a want through
	// to upstream peers; for anything else Kitsune says DONT_HAVE at once
	// rather than let the node wait for a timeout.
	var dont []cid.Cid
	for _, e := range msg.Wantlist() {
		switch s := r.sessionForLocked(from, e.Cid); {
		case e.Cancel:
			r.reverseCancelLocked(from, e.Cid)
		case s != nil:
			r.reverseWantLocked(from, e, s)
		case e.SendDontHave:
			dont = append(dont, e.Cid)
		}
	}
	if len(dont) > 0 {
		n.out.dontHave(r.ctx, dont)
	}
	for _, b := range msg.Blocks() {
		r.counters.BlocksIn.Add(1)
		r.counters.BytesIn.Add(uint64(len(b.RawData())))
		// bsmsg computed b's CID by hashing its bytes with the prefix the
		// node sent, so a block matches a want only if its bytes do.
		w := r.wants[b.Cid()]
		if w == nil {
			r.counters.Unsolicited.Add(1)
			if _, late := n.asked.get(b.Cid()); !late {
				// Not a late answer: the node sent bytes that hash to
				// nothing it was asked for (a corrupt blockstore, or a
				// hostile node). Dropped, and held against the node.
				r.counters.BadBlocks.Add(1)
				r.down.Penalise(from, "sent a block matching no want")
			}
			continue
		}
		r.deliverBlockLocked(w, b, from)
	}
	for _, c := range msg.Haves() {
		w := r.wants[c]
		if w == nil || w.node != from {
			continue
		}
		r.hints.put(c, from)
		r.deliverHaveLocked(w, from)
	}
	for _, c := range msg.DontHaves() {
		w := r.wants[c]
		if w == nil || w.node != from {
			continue
		}
		// Kubo keeps a want it answered DONT_HAVE to; cancel it so it does
		// not take one of the node's queue slots for nothing.
		r.unassignLocked(w, downstream.OutcomeDontHave, true)
		w.tried[from] = struct{}{}
		r.counters.Failovers.Add(1)
		r.dispatchLocked(w)
	}
	r.drainQueueLocked()
}

func (r *Relay) deliverBlockLocked(w *want, b blocks.Block, from peer.ID) {
	small := len(b.RawData()) <= r.cfg.MaxHaveBlockSize
	for p, wr := range w.wanters {
		u := r.peers[p]
		if u == nil {
			continue
		}
		if wr.wantType == pb.Message_Wantlist_Block || small {
			if u.out.full() {
				// Keep the want, drop the bytes: fetched again on drain.
				u.deferred[w.c] = wr
				r.counters.Deferred.Add(1)
				continue
			}
			u.out.addBlock(r.ctx, b)
		} else {
			u.out.addPresence(r.ctx, w.c, pb.Message_Have)
			r.counters.HavesOut.Add(1)
		}
		delete(u.wants, w.c)
		delete(u.exhausted, w.c)
		r.protectLocked(p, u)
	}
	delete(r.wants, w.c)
	r.setExhaustedLocked(w, false)
	r.queue.remove(w)
	if w.cancelFetch != nil {
		w.cancelFetch()
		w.cancelFetch = nil
	}
	// Kubo drops a want from its ledger once it sent the block; a want
	// still open on another node (a late block after a failover) is
	// cancelled there.
	if w.node == from {
		r.unassignLocked(w, downstream.OutcomeBlock, false)
	} else if w.node != "" {
		r.unassignLocked(w, downstream.OutcomeCancelled, true)
	}
}

// deliverHaveLocked answers the want-have wanters. Want-block wanters stay:
// their block is on its way from the same node, or is asked for next.
func (r *Relay) deliverHaveLocked(w *want, from peer.ID) {
	for p, wr := range w.wanters {
		if wr.wantType != pb.Message_Wantlist_Have {
			continue
		}
		if u := r.peers[p]; u != nil {
			u.out.addPresence(r.ctx, w.c, pb.Message_Have)
			r.counters.HavesOut.Add(1)
			delete(u.wants, w.c)
			delete(u.exhausted, w.c)
			r.protectLocked(p, u)
		}
		delete(w.wanters, p)
	}
	if len(w.wanters) > 0 {
		if w.sentType == pb.Message_Wantlist_Have {
			w.sentType = pb.Message_Wantlist_Block
			r.nodeLocked(from).out.want(r.ctx, w.c, w.sentType, w.prio)
			r.counters.WantsForwarded.Add(1)
		}
		return
	}
	// Kubo drops a want-have from its ledger once answered; the cancel
	// makes sure, at the cost of a few bytes.
	r.unassignLocked(w, downstream.OutcomeHave, true)
	delete(r.wants, w.c)
}

// NodeUp implements downstream.Listener: a node joined, came back, or was
// re-admitted.
func (r *Relay) NodeUp(id peer.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodeLocked(id)
	n.up, n.connected = true, true
	n.lastHeard = time.Now()
	// Wants nobody had may be on the new node: each is asked there, and
	// only there (no new round on the others, no new miss fetch).
	// A snapshot: a want may be refused again while this runs.
	var retry []*want
	for e := r.expiring.Front(); e != nil; e = e.Next() {
		if w := e.Value.(*want); !triedBy(w, id) {
			retry = append(retry, w)
		}
	}
	for _, w := range retry {
		r.setExhaustedLocked(w, false)
		r.dispatchLocked(w)
	}
	r.drainQueueLocked()
}

// NodeDown implements downstream.Listener: the node's wants move elsewhere
// at once. When the connection is gone its ledger went with it; when the
// node was only ejected, its wants are cancelled there.
func (r *Relay) NodeDown(id peer.ID, connected bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.nodes[id]
	if n == nil {
		return
	}
	n.up, n.connected = false, connected
	if !connected {
		n.out.reset()
	}
	moved := make([]*want, 0, len(n.wants))
	for _, w := range n.wants {
		moved = append(moved, w)
	}
	for _, w := range moved {
		r.unassignLocked(w, downstream.OutcomeCancelled, connected)
		r.counters.Failovers.Add(1)
		r.dispatchLocked(w)
	}
	r.hints.forget(id)
	if !connected && n.outstanding == 0 && n.fetches == 0 {
		// A node that left for good should not keep an entry; one that
		// comes back gets a fresh one.
		delete(r.nodes, id)
	}
	r.drainQueueLocked()
}

// watchSilence moves wants off nodes that stopped answering. A node that
// has wants outstanding and has sent nothing for longer than its timeout
// (derived from its own latency) is treated as failing: each of its wants
// that waited that long goes to another node when there is one, and the
// pool counts the failure towards ejection. A node that keeps sending is
// only busy, and is left alone: Kubo answers every want, so silence with
// work outstanding is the sign of trouble.
func (r *Relay) watchSilence(ctx context.Context) {
	t := time.NewTicker(r.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.checkSilence()
	}
}

func (r *Relay) checkSilence() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	r.expireLocked(now)
	for id, n := range r.nodes {
		if n.outstanding == 0 {
			continue
		}
		timeout := r.down.Timeout(id)
		if now.Sub(n.lastHeard) < timeout {
			continue
		}
		var late []*want
		for _, w := range n.wants {
			if now.Sub(w.sentAt) >= timeout {
				late = append(late, w)
			}
		}
		if len(late) == 0 {
			continue
		}
		// Look again one timeout from now, not at every tick.
		n.lastHeard = now
		// One silence is one failure, however many wants it held up: a
		// node stalled once (a GC pause, a slow disk) with a few wants out
		// used to count a failure per want and was ejected at once. The
		// first want moved reports it; the others are only cancelled.
		outcome := downstream.OutcomeFailed
		for _, w := range late {
			alt, ok := r.down.Pick(w.c, func(p peer.ID) bool {
				_, t := w.tried[p]
				return t || p == id || r.fullLocked(p)
			})
			if !ok {
				continue // nowhere better: keep waiting on this node
			}
			r.unassignLocked(w, outcome, true)
			outcome = downstream.OutcomeCancelled
			w.tried[id] = struct{}{}
			r.counters.Failovers.Add(1)
			r.counters.Timeouts.Add(1)
			r.assignLocked(w, alt)
		}
	}
	r.drainQueueLocked()
}
