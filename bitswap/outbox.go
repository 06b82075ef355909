package bitswap

import (
	"context"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/boxo/bitswap/client/wantlist"
	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnet "github.com/ipfs/boxo/bitswap/network"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
)

// replyOutbox queues replies (blocks and presences) for one upstream peer
// and sends them from its own goroutine, so a slow peer never stalls the
// downstream read loop that produced them. Whatever piles up while one
// message is on the wire goes out together in the next.
//
// A message's blocks stay counted here until its stream ended (see
// replystream.go): one the peer cut off goes back to the front of the
// queue and is sent again, smaller, as the pace (pace.go) decides.
type replyOutbox struct {
	ctx    context.Context
	cancel context.CancelFunc
	to     peer.ID
	link   replySender
	log    *zap.Logger
	sent   func(blocks, bytes int)
	// cut counts messages the peer cut off, given the blocks they carried
	// and whether they were given up.
	cut func(blocks int, givenUp bool)
	// budget caps the memory the blocks waiting for this peer keep
	// alive, in flight included (their node messages' buffers); drained is called (no lock held) once a full outbox is
	// back under half its budget, so deferred wants can be fetched again.
	budget  int
	drained func()
	// mem counts the blocks of every peer's outbox together and may make
	// budget smaller (replymem.go); nil: budget alone.
	mem *replyMemory
	// probe is how long a message holds our close to learn what the
	// receiver's close means (replyProbe; shorter in tests).
	probe time.Duration

	mu       sync.Mutex
	blocks   []blocks.Block
	presence map[cid.Cid]pb.Message_BlockPresenceType
	pending  int  // memory the blocks queued or in flight keep (heldBytes)
	active   bool // pending > 0, as told to mem
	inFlight int  // block bytes in messages whose stream has not ended
	flights  int  // such messages
	// probeBytes is the size of the message holding its close to learn
	// the receiver's kind (replyPace.probe), while it does.
	probeBytes int
	wasFull    bool
	running    bool
	// idle is set while the writer waits for more (writerLinger); wake
	// ends that wait.
	idle bool
	wake chan struct{}
	// writes counts the messages being written (send not returned).
	writes int
	closed bool
	pace   replyPace
}

// replyHooks are the outbox's reports to the relay.
type replyHooks struct {
	sent    func(blocks, bytes int)
	cut     func(blocks int, givenUp bool)
	drained func()
}

func newReplyOutbox(ctx context.Context, to peer.ID, link replySender, log *zap.Logger, budget int, window time.Duration, h replyHooks) *replyOutbox {
	ctx, cancel := context.WithCancel(ctx)
	return &replyOutbox{ctx: ctx, cancel: cancel, to: to, link: link, log: log,
		sent: h.sent, cut: h.cut, drained: h.drained, budget: budget,
		probe:    replyProbe,
		pace:     newReplyPace(window),
		wake:     make(chan struct{}, 1),
		presence: make(map[cid.Cid]pb.Message_BlockPresenceType)}
}

// full reports whether the peer has a budget's worth of blocks waiting: it
// is reading slower than the fleet delivers, and further blocks for it are
// deferred rather than held in memory.
func (o *replyOutbox) full() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if b := o.mem.budget(o.budget); b > 0 && o.pending >= b {
		o.wasFull = true
		return true
	}
	return false
}

// heldLocked adds delta to pending and tells mem when the outbox starts
// or stops holding blocks.
func (o *replyOutbox) heldLocked(delta int) {
	o.pending += delta
	if on := o.pending > 0; on != o.active {
		o.active = on
		o.mem.setActive(on)
	}
}

// queued is the memory the blocks queued or in flight keep alive.
func (o *replyOutbox) queued() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pending
}

func (o *replyOutbox) addBlock(b blocks.Block) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	delete(o.presence, b.Cid())
	// Held until the reply carrying it is written (settle), or the
	// outbox closes.
	retainBlock(b)
	o.mem.hold(b)
	o.blocks = append(o.blocks, b)
	o.heldLocked(heldBytes(b))
	o.kickLocked()
}

func (o *replyOutbox) addPresence(c cid.Cid, t pb.Message_BlockPresenceType) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	o.presence[c] = t
	o.kickLocked()
}

// close drops whatever is queued and ends the streams in flight: the peer
// is gone.
func (o *replyOutbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	held := 0
	for _, b := range o.blocks {
		held += heldBytes(b)
		o.mem.drop(b)
		releaseBlock(b)
	}
	o.blocks = nil
	// Those in flight are let go as their streams end (settle).
	o.heldLocked(-held)
	clear(o.presence)
	o.cancel()
}

// replyLoad is what an outbox holds, for Stats.
type replyLoad struct{ bytes, flights int }

func (o *replyOutbox) load() replyLoad {
	o.mu.Lock()
	defer o.mu.Unlock()
	return replyLoad{o.pending, o.flights}
}

// kickLocked starts the writer, or wakes it while it lingers, unless
// there is no room for a message (settle kicks again).
func (o *replyOutbox) kickLocked() {
	if !o.roomLocked() {
		return
	}
	if o.running {
		if o.idle {
			o.idle = false
			o.wake <- struct{}{} // the buffer's one slot: idle was set
		}
		return
	}
	o.running = true
	go o.run()
}

// run writes messages while there is something to send and room for it,
// then lingers (writerLinger) for more before it ends.
func (o *replyOutbox) run() {
	var linger *time.Timer
	// opened is set once the stream for the next message was opened ahead
	// of it (preopener), or tried; a message sent clears it.
	opened := false
	pre, canPre := o.link.(preopener)
	for {
		o.mu.Lock()
		wait := o.pace.backoff()
		o.mu.Unlock()
		if wait > 0 {
			select {
			case <-o.ctx.Done():
			case <-time.After(wait):
			}
		}

		o.mu.Lock()
		if !o.roomLocked() {
			if o.closed || o.ctx.Err() != nil {
				o.idle, o.running = false, false
				o.mu.Unlock()
				return
			}
			if canPre && !opened && len(o.blocks) == 0 && len(o.presence) == 0 && o.pace.preopen() {
				// Nothing to send: open the next message's stream now,
				// off the path of the block that will go on it.
				opened = true
				o.mu.Unlock()
				pre.preopen(o.ctx, o.to)
				continue
			}
			if lingerIdle(o.ctx, &o.mu, o.wake, &o.idle, &o.running, &linger) {
				if canPre {
					pre.drop() // the peer went quiet: no stream left open
				}
				return
			}
			continue
		}
		opened = false
		msg := bsmsg.New(false)
		sending, size := takeBlocks(&o.blocks, o.pace.messageBytes())
		for _, b := range sending {
			msg.AddBlock(b)
		}
		presence := maps.Clone(o.presence)
		for c, t := range presence {
			msg.AddBlockPresence(c, t)
		}
		clear(o.presence)
		o.inFlight += size
		o.flights++
		var hold time.Duration
		if o.pace.probe() {
			hold = o.probe
			o.probeBytes = size
		}
		o.writes++
		// Writing two at once (pace.writers), each message goes on a
		// goroutine of its own and this one goes on dispatching; that is
		// only to fast links with large messages, where a goroutine per
		// message costs nothing next to the message. Otherwise this
		// goroutine writes, as the lingering writer does.
		concurrent := o.pace.writers() > 1
		o.mu.Unlock()

		write := func() {
			o.link.send(o.ctx, o.to, msg, hold, func(ev replyEvents) { o.settle(ev, sending, presence, size) })
			o.mu.Lock()
			o.writes--
			if concurrent {
				o.kickLocked()
			}
			o.mu.Unlock()
		}
		if concurrent {
			go write()
		} else {
			write()
		}
	}
}

// takeBlocks takes one message's blocks off the front of queue: the first
// whatever its size, then more until the next would take their data past
// budget bytes. It returns them in a slice of their own with their data's
// size, and clears the slots they leave so the queue keeps no block alive.
func takeBlocks(queue *[]blocks.Block, budget int) (taken []blocks.Block, size int) {
	q, n := *queue, 0
	for ; n < len(q) && (n == 0 || size+len(q[n].RawData()) <= budget); n++ {
		size += len(q[n].RawData())
	}
	taken = slices.Clone(q[:n])
	clear(q[:n])
	if *queue = q[n:]; len(*queue) == 0 {
		*queue = nil // let the backing array go
	}
	return taken, size
}

// roomLocked reports whether a message should go now: something to send,
// fewer streams out than the most, fewer messages being written than the
// pace allows at once, and the bytes out below what it allows (one
// message always may go). A probe holding its close is not
// counted against the bytes: the replies behind it do not wait for it.
func (o *replyOutbox) roomLocked() bool {
	flights, bytes := o.flights, o.inFlight
	if o.pace.probing {
		flights, bytes = flights-1, bytes-o.probeBytes
	}
	return !o.closed && o.ctx.Err() == nil && (len(o.blocks) > 0 || len(o.presence) > 0) &&
		o.flights < maxRepliesInFlight && o.writes < o.pace.writers() && (flights == 0 || bytes < o.pace.inFlightBytes())
}

// settle takes the end of one message's stream: its blocks are done with,
// or go back in front of whatever came since.
func (o *replyOutbox) settle(ev replyEvents, sending []blocks.Block, presence map[cid.Cid]pb.Message_BlockPresenceType, size int) {
	res := ev.result()
	outcome := res.outcome
	o.mu.Lock()
	o.inFlight -= size
	o.flights--
	if o.closed {
		// close dropped those queued; these were in flight.
		held := 0
		for _, b := range sending {
			held += heldBytes(b)
			o.mem.drop(b)
			releaseBlock(b)
		}
		o.heldLocked(-held)
		o.mu.Unlock()
		return
	}
	o.pace.observe(res, size)
	if res.held {
		o.probeBytes = 0
	}
	giveUp := outcome == replyFailed && o.pace.givingUp()
	if outcome == replyFailed && !giveUp {
		o.blocks = append(sending, o.blocks...)
		for c, t := range presence {
			if _, newer := o.presence[c]; !newer {
				o.presence[c] = t
			}
		}
	} else {
		// Written, or given up: send has returned (it reads the blocks'
		// bytes only until then, replySender), so nothing reads them here
		// any more.
		for _, b := range sending {
			o.heldLocked(-heldBytes(b))
			o.mem.drop(b)
			releaseBlock(b)
		}
	}
	resume := o.wasFull && o.pending <= o.mem.budget(o.budget)/2
	if resume {
		o.wasFull = false
	}
	o.kickLocked()
	target := o.pace.messageBytes()
	o.mu.Unlock()

	if outcome == replyFailed {
		o.log.Debug("reply cut off", zap.Stringer("peer", o.to), zap.Int("blocks", len(sending)), zap.Int("bytes", size),
			zap.Duration("after", res.toEnd), zap.Bool("given up", giveUp), zap.Int("next size", target), zap.Errors("errors", []error{ev.writeErr, ev.endErr}))
		if o.cut != nil {
			o.cut(len(sending), giveUp)
		}
	} else if o.sent != nil {
		o.sent(len(sending), size)
	}
	if resume && o.drained != nil {
		o.drained()
	}
}

// wantOp is the latest instruction for one CID towards one node.
type wantOp struct {
	cancel   bool
	wantType pb.Message_Wantlist_WantType
	priority int32
}

// entry is op as the wantlist entry that carries it. Every want asks for
// DONT_HAVE: it is what lets Kitsune move a want to the next node instead
// of waiting out a timeout. (boxo's Cancel and AddEntry make the same.)
func (op wantOp) entry(c cid.Cid) bsmsg.Entry {
	if op.cancel {
		return bsmsg.Entry{Entry: wantlist.Entry{Cid: c, WantType: pb.Message_Wantlist_Block}, Cancel: true}
	}
	return bsmsg.Entry{Entry: wantlist.Entry{Cid: c, Priority: op.priority, WantType: op.wantType}, SendDontHave: true}
}

// wantOutbox batches wantlist changes for one peer over a long-lived
// stream, the way boxo's client message queue does: wants to a downstream
// node, or, for reverse sessions, wants to an upstream peer. Only the
// newest operation per CID is kept: a want followed by its cancel before
// the batch leaves becomes just the cancel. It also carries the replies to
// the peer's own wants (DONT_HAVE, and in reverse sessions HAVE and blocks).
// Its writer goroutine (run) writes the messages, one at a time, so they
// leave in the order they were drained.
type wantOutbox struct {
	to   peer.ID
	link wantLink
	log  *zap.Logger
	// failures, when set, counts the messages whose send failed (they are
	// dropped).
	failures *atomic.Uint64

	// entries and presences are the message being written, the writer's.
	entries   []bsmsg.Entry
	presences []bsmsg.BlockPresence

	mu       sync.Mutex
	ops      map[cid.Cid]wantOp
	presence map[cid.Cid]pb.Message_BlockPresenceType
	blocks   []blocks.Block
	running  bool
	idle     bool // as in replyOutbox
	wake     chan struct{}
}

// newWantOutbox writes through boxo's message sender on net.
func newWantOutbox(to peer.ID, net bsnet.BitSwapNetwork, log *zap.Logger) *wantOutbox {
	return newWantOutboxOn(to, &bsnetLink{net: net, to: to}, log)
}

func newWantOutboxOn(to peer.ID, link wantLink, log *zap.Logger) *wantOutbox {
	return &wantOutbox{to: to, link: link, log: log, ops: make(map[cid.Cid]wantOp), presence: make(map[cid.Cid]pb.Message_BlockPresenceType),
		wake: make(chan struct{}, 1)}
}

func (o *wantOutbox) want(ctx context.Context, c cid.Cid, t pb.Message_Wantlist_WantType, prio int32) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ops[c] = wantOp{wantType: t, priority: prio}
	o.kickLocked(ctx)
}

func (o *wantOutbox) cancel(ctx context.Context, c cid.Cid) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ops[c] = wantOp{cancel: true}
	o.kickLocked(ctx)
}

func (o *wantOutbox) dontHave(ctx context.Context, cs []cid.Cid) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, c := range cs {
		o.presence[c] = pb.Message_DontHave
	}
	o.kickLocked(ctx)
}

func (o *wantOutbox) have(ctx context.Context, c cid.Cid) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.presence[c] = pb.Message_Have
	o.kickLocked(ctx)
}

func (o *wantOutbox) block(ctx context.Context, b blocks.Block) {
	// Not counted here (the link writes it, and only upstream blocks come
	// this way): never reused, whatever it is.
	escapeBlock(b)
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.presence, b.Cid())
	o.blocks = append(o.blocks, b)
	o.kickLocked(ctx)
}

// reset forgets queued operations: the node went away, and its ledger of
// our wants went with the connection.
func (o *wantOutbox) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	clear(o.ops)
	clear(o.presence)
	o.blocks = nil
	o.link.reset()
}

func (o *wantOutbox) kickLocked(ctx context.Context) {
	if o.running {
		if o.idle {
			o.idle = false
			o.wake <- struct{}{} // the buffer's one slot: idle was set
		}
		return
	}
	o.running = true
	go o.run(ctx)
}

func (o *wantOutbox) emptyLocked() bool {
	return len(o.ops) == 0 && len(o.presence) == 0 && len(o.blocks) == 0
}

// maxEntriesPerMessage keeps wantlist messages well under the receiver's
// message size limit even with long CIDs.
const maxEntriesPerMessage = 4096

// drainLocked takes the next message out of the queue, into the writer's
// entries and presences.
func (o *wantOutbox) drainLocked() wireParts {
	entries := o.entries[:0]
	for c, op := range o.ops {
		if len(entries) == maxEntriesPerMessage {
			break
		}
		entries = append(entries, op.entry(c))
		delete(o.ops, c)
	}
	blks, _ := takeBlocks(&o.blocks, maxReplyBytes)
	presences := o.presences[:0]
	for c, t := range o.presence {
		// A block answers for itself (boxo's message keeps the block).
		if !slices.ContainsFunc(blks, func(b blocks.Block) bool { return b.Cid() == c }) {
			presences = append(presences, bsmsg.BlockPresence{Cid: c, Type: t})
		}
	}
	clear(o.presence)
	o.entries, o.presences = entries, presences
	return wireParts{wants: entries, presences: presences, blocks: blks}
}

func (o *wantOutbox) run(ctx context.Context) {
	var linger *time.Timer
	for {
		o.mu.Lock()
		if ctx.Err() != nil {
			o.idle, o.running = false, false
			o.mu.Unlock()
			return
		}
		if o.emptyLocked() {
			if lingerIdle(ctx, &o.mu, o.wake, &o.idle, &o.running, &linger) {
				return
			}
			continue
		}
		m := o.drainLocked()
		o.mu.Unlock()
		if err := o.link.send(ctx, m); err != nil {
			if o.failures != nil {
				o.failures.Add(1)
			}
			o.log.Debug("send to downstream failed", zap.Stringer("node", o.to), zap.Error(err))
		}
	}
}

// writerLinger is how long an outbox's writer waits for more once it has
// sent everything. A client fetching block after block finds it still
// there, instead of a new goroutine per message whose stack grows again
// through the stream code (docs/performance.md).
const writerLinger = time.Second

// lingerIdle is a writer's step when it has nothing to send, called
// with mu held: it marks the writer idle, unlocks mu and waits for a wake
// (awaitWake). It reports whether the writer ends: nothing came and no
// kick claimed it meanwhile, so it is marked not running. A kick that
// raced the end of the wait is taken off wake.
func lingerIdle(ctx context.Context, mu *sync.Mutex, wake chan struct{}, idle, running *bool, linger **time.Timer) bool {
	*idle = true
	mu.Unlock()
	if awaitWake(ctx, wake, linger) {
		return false
	}
	mu.Lock()
	defer mu.Unlock()
	if *idle {
		*idle, *running = false, false
		return true
	}
	<-wake // woken as the wait ended
	return false
}

// awaitWake waits for a wake, for at most writerLinger, and reports
// whether it came; the timer is made on first use and reused.
func awaitWake(ctx context.Context, wake <-chan struct{}, t **time.Timer) bool {
	if *t == nil {
		*t = time.NewTimer(writerLinger)
	} else {
		(*t).Reset(writerLinger)
	}
	select {
	case <-wake:
		(*t).Stop()
		return true
	case <-(*t).C:
		return false
	case <-ctx.Done():
		(*t).Stop()
		return false
	}
}
