package bitswap

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnet "github.com/ipfs/boxo/bitswap/network"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
)

// targetMessageBytes is where an outgoing reply stops taking more blocks.
// Far enough below the 4 MiB that receivers accept to leave room for one
// more maximal block, and large enough that a fast transfer is not
// dominated by per-message overhead.
const targetMessageBytes = 1 << 20

// Reply messages are sized to the peer's measured rate: Helia
// (@helia/bitswap 4.0.19, DEFAULT_MESSAGE_RECEIVE_TIMEOUT) aborts an
// incoming stream whose message has not fully arrived within 10 s, so a
// 1 MiB message to a browser under 0.8 Mbit/s was lost whole. A message
// carries about replyWindow's worth of the peer's rate (at least one
// block, at least minReplyBytes).
const (
	replyWindow   = 3 * time.Second
	minReplyBytes = 16 << 10
	// sendAttempts bounds how often one reply is tried before it is given
	// up (the peer is most likely gone; its disconnect closes the outbox).
	sendAttempts = 4
	retryBase    = 100 * time.Millisecond
)

// replyOutbox queues replies (blocks and presences) for one upstream peer
// and sends them from its own goroutine, so a slow peer never stalls the
// downstream read loop that produced them. Whatever piles up while one
// message is on the wire goes out together in the next.
type replyOutbox struct {
	to   peer.ID
	net  bsnet.BitSwapNetwork
	log  *zap.Logger
	sent func(blocks, bytes int)
	// budget caps the block bytes waiting for this peer; drained is called
	// (from the outbox goroutine, no lock held) once a full outbox is back
	// under half its budget, so deferred wants can be fetched again.
	budget  int
	drained func()

	// window is replyWindow, shorter in tests.
	window time.Duration

	mu       sync.Mutex
	blocks   []blocks.Block
	presence map[cid.Cid]pb.Message_BlockPresenceType
	pending  int // block bytes queued or on the wire
	wasFull  bool
	running  bool
	closed   bool
	// rate is the peer's smoothed write rate in bytes per second (0 until
	// measured); target the message size it allows.
	rate   float64
	target int
}

func newReplyOutbox(to peer.ID, net bsnet.BitSwapNetwork, log *zap.Logger, sent func(int, int), budget int, drained func()) *replyOutbox {
	return &replyOutbox{to: to, net: net, log: log, sent: sent, budget: budget, drained: drained,
		window: replyWindow, target: targetMessageBytes,
		presence: make(map[cid.Cid]pb.Message_BlockPresenceType)}
}

// full reports whether the peer has a budget's worth of blocks waiting: it
// is reading slower than the fleet delivers, and further blocks for it are
// deferred rather than held in memory.
func (o *replyOutbox) full() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.budget > 0 && o.pending >= o.budget {
		o.wasFull = true
		return true
	}
	return false
}

func (o *replyOutbox) addBlock(ctx context.Context, b blocks.Block) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	delete(o.presence, b.Cid())
	o.blocks = append(o.blocks, b)
	o.pending += len(b.RawData())
	o.kickLocked(ctx)
}

func (o *replyOutbox) addPresence(ctx context.Context, c cid.Cid, t pb.Message_BlockPresenceType) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	o.presence[c] = t
	o.kickLocked(ctx)
}

// close drops whatever is queued: the peer is gone.
func (o *replyOutbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	o.blocks = nil
	o.pending = 0
	clear(o.presence)
}

func (o *replyOutbox) kickLocked(ctx context.Context) {
	if o.running {
		return
	}
	o.running = true
	go o.run(ctx)
}

func (o *replyOutbox) run(ctx context.Context) {
	failures := 0
	for {
		o.mu.Lock()
		if o.closed || ctx.Err() != nil || (len(o.blocks) == 0 && len(o.presence) == 0) {
			o.running = false
			o.mu.Unlock()
			return
		}
		msg := bsmsg.New(false)
		size, n := 0, 0
		for n < len(o.blocks) && (n == 0 || size+len(o.blocks[n].RawData()) <= o.target) {
			msg.AddBlock(o.blocks[n])
			size += len(o.blocks[n].RawData())
			n++
		}
		sending := slices.Clone(o.blocks[:n])
		clear(o.blocks[:n])
		o.blocks = o.blocks[n:]
		if len(o.blocks) == 0 {
			o.blocks = nil // let the backing array go
		}
		presence := maps.Clone(o.presence)
		for c, t := range presence {
			msg.AddBlockPresence(c, t)
		}
		clear(o.presence)
		o.mu.Unlock()

		start := time.Now()
		err := o.net.SendMessage(ctx, o.to, msg)
		took := time.Since(start)
		o.mu.Lock()
		if err != nil {
			failures++
			if failures < sendAttempts && !o.closed {
				// Put the reply back in front of whatever came since, and
				// try a smaller message: a message too big for the link
				// is the likely failure on a slow one.
				o.blocks = append(sending, o.blocks...)
				for c, t := range presence {
					if _, newer := o.presence[c]; !newer {
						o.presence[c] = t
					}
				}
				o.target = max(minReplyBytes, o.target/2)
				o.mu.Unlock()
				o.log.Debug("reply to upstream failed; trying again", zap.Stringer("peer", o.to), zap.Int("attempt", failures), zap.Error(err))
				select {
				case <-ctx.Done():
				case <-time.After(retryBase << (failures - 1)):
				}
				continue
			}
		} else {
			failures = 0
			o.measureLocked(size, took)
		}
		o.pending -= size
		resume := o.wasFull && o.pending <= o.budget/2 && !o.closed
		if resume {
			o.wasFull = false
		}
		o.mu.Unlock()
		if resume && o.drained != nil {
			o.drained()
		}
		if err != nil {
			o.log.Debug("reply to upstream given up", zap.Stringer("peer", o.to), zap.Int("blocks", n), zap.Error(err))
			failures = 0
			continue
		}
		if o.sent != nil {
			o.sent(n, size)
		}
	}
}

// measureLocked folds one message's write time into the peer's rate and
// sizes the next messages to it. Small messages say little about the
// link and are left out.
func (o *replyOutbox) measureLocked(size int, took time.Duration) {
	if size < minReplyBytes || took <= 0 {
		return
	}
	r := float64(size) / took.Seconds()
	if o.rate == 0 {
		o.rate = r
	} else {
		o.rate = 0.5*r + 0.5*o.rate
	}
	o.target = int(min(float64(targetMessageBytes), max(float64(minReplyBytes), o.rate*o.window.Seconds())))
}

// wantOp is the latest instruction for one CID towards one node.
type wantOp struct {
	cancel   bool
	wantType pb.Message_Wantlist_WantType
	priority int32
}

// wantOutbox batches wantlist changes for one peer over a long-lived
// stream, the way boxo's client message queue does: wants to a downstream
// node, or, for reverse sessions, wants to an upstream peer. Only the
// newest operation per CID is kept: a want followed by its cancel before
// the batch leaves becomes just the cancel. It also carries the replies to
// the peer's own wants (DONT_HAVE, and in reverse sessions HAVE and blocks).
type wantOutbox struct {
	to  peer.ID
	net bsnet.BitSwapNetwork
	log *zap.Logger

	mu       sync.Mutex
	ops      map[cid.Cid]wantOp
	presence map[cid.Cid]pb.Message_BlockPresenceType
	blocks   []blocks.Block
	running  bool
	sender   bsnet.MessageSender
}

func newWantOutbox(to peer.ID, net bsnet.BitSwapNetwork, log *zap.Logger) *wantOutbox {
	return &wantOutbox{to: to, net: net, log: log, ops: make(map[cid.Cid]wantOp), presence: make(map[cid.Cid]pb.Message_BlockPresenceType)}
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
	if o.sender != nil {
		_ = o.sender.Reset()
		o.sender = nil
	}
}

func (o *wantOutbox) kickLocked(ctx context.Context) {
	if o.running {
		return
	}
	o.running = true
	go o.run(ctx)
}

// maxEntriesPerMessage keeps wantlist messages well under the receiver's
// message size limit even with long CIDs.
const maxEntriesPerMessage = 4096

func (o *wantOutbox) run(ctx context.Context) {
	for {
		o.mu.Lock()
		if ctx.Err() != nil || (len(o.ops) == 0 && len(o.presence) == 0 && len(o.blocks) == 0) {
			o.running = false
			o.mu.Unlock()
			return
		}
		msg := bsmsg.New(false)
		n := 0
		for c, op := range o.ops {
			if n == maxEntriesPerMessage {
				break
			}
			if op.cancel {
				msg.Cancel(c)
			} else {
				// Always ask for DONT_HAVE: it is what lets Kitsune move a
				// want to the next node instead of waiting out a timeout.
				msg.AddEntry(c, op.priority, op.wantType, true)
			}
			delete(o.ops, c)
			n++
		}
		for c, t := range o.presence {
			msg.AddBlockPresence(c, t)
		}
		clear(o.presence)
		size, nb := 0, 0
		for nb < len(o.blocks) && (nb == 0 || size+len(o.blocks[nb].RawData()) <= targetMessageBytes) {
			msg.AddBlock(o.blocks[nb])
			size += len(o.blocks[nb].RawData())
			nb++
		}
		clear(o.blocks[:nb])
		o.blocks = o.blocks[nb:]
		if len(o.blocks) == 0 {
			o.blocks = nil
		}
		sender := o.sender
		o.mu.Unlock()

		err := o.send(ctx, sender, msg)
		if err != nil {
			o.log.Debug("send to downstream failed", zap.Stringer("node", o.to), zap.Error(err))
		}
	}
}

func (o *wantOutbox) send(ctx context.Context, sender bsnet.MessageSender, msg bsmsg.BitSwapMessage) error {
	if sender == nil {
		s, err := o.net.NewMessageSender(ctx, o.to, &bsnet.MessageSenderOpts{MaxRetries: 3})
		if err != nil {
			return err
		}
		o.mu.Lock()
		o.sender = s
		o.mu.Unlock()
		sender = s
	}
	if err := sender.SendMsg(ctx, msg); err != nil {
		o.mu.Lock()
		if o.sender == sender {
			o.sender = nil
		}
		o.mu.Unlock()
		_ = sender.Reset()
		return err
	}
	return nil
}
