package bitswap

// Local fetches: Kitsune itself asking the fleet for blocks (the HTTP
// gateway's backend). A fetch is a synthetic upstream peer in the core:
// its wants take the same path as a Bitswap client's (the pool's policy
// and health, the per-node caps and queue, DONT_HAVE failover, silence
// timeouts, miss fetches), and its answers come back through the same
// effects, which the shell routes to the fetch instead of an outbox. The
// core does not know the difference.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ipfs/boxo/bitswap/client/wantlist"
	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Result is one answer of a local fetch: the block, or why there is none.
type Result struct {
	Cid   cid.Cid
	Block blocks.Block
	// Err is ipld.ErrNotFound when every node said DONT_HAVE (and a miss
	// fetch, when enabled, found nothing either).
	Err error
}

// ErrNotRunning is returned by Fetch before Start and after Close.
var ErrNotRunning = errors.New("bitswap: relay not running")

// localPrefix starts the synthetic peer IDs of local fetches. A real
// peer ID is a multihash (0x00 identity or 0x12 sha2-256 first), so no
// peer on the front host can ever have one of these.
const localPrefix = "kitsune-local/"

// localFetch is one Fetch call: the CIDs it still waits for and the
// answers waiting to be read. Its fields are guarded by the relay's lock,
// except out, which only its forwarding goroutine writes.
type localFetch struct {
	id      peer.ID
	pending map[cid.Cid]struct{}
	queue   []Result
	bytes   int // memory the queued blocks keep alive (heldBytes)
	budget  int
	wasFull bool
	ended   bool
	wake    chan struct{} // 1-buffered: the queue grew or the fetch ended
	out     chan Result
}

// Fetch asks the fleet for cids through the relay, as if a Bitswap
// client had sent a want-block for each, and returns their answers in
// the order they arrive: each CID gets exactly one Result, unless ctx
// ends first. The channel is closed once every CID is answered or ctx is
// done; then nothing of the fetch is left in the relay's tables (its
// wants still out at nodes are cancelled there). Blocks are verified
// against their CIDs. The caller must read the channel until it closes or
// cancel ctx. At most Config.MaxWantsPerPeer distinct CIDs per call.
func (r *Relay) Fetch(ctx context.Context, cids ...cid.Cid) (<-chan Result, error) {
	want := make(map[cid.Cid]struct{}, len(cids))
	for _, c := range cids {
		if !c.Defined() {
			return nil, errors.New("bitswap: Fetch of an undefined CID")
		}
		want[c] = struct{}{}
	}
	if len(want) > r.cfg.MaxWantsPerPeer {
		return nil, fmt.Errorf("bitswap: Fetch of %d CIDs, at most %d at once", len(want), r.cfg.MaxWantsPerPeer)
	}
	out := make(chan Result)
	if len(want) == 0 {
		close(out)
		return out, nil
	}

	r.mu.Lock()
	if r.ctx == nil || r.ctx.Err() != nil || r.locals == nil {
		r.mu.Unlock()
		return nil, ErrNotRunning
	}
	r.localSeq++
	l := &localFetch{
		id:      peer.ID(localPrefix + strconv.FormatUint(r.localSeq, 10)),
		pending: want,
		budget:  r.cfg.PeerBufferBytes,
		wake:    make(chan struct{}, 1),
		out:     out,
	}
	r.locals[l.id] = l
	entries := make([]bsmsg.Entry, 0, len(want))
	for c := range want {
		// A want-block asking for DONT_HAVE: what a Bitswap client sends
		// to a peer it expects to have the block.
		entries = append(entries, bsmsg.Entry{Entry: wantlist.Entry{Cid: c, Priority: 1, WantType: pb.Message_Wantlist_Block}, SendDontHave: true})
	}
	r.core.fromPeer(l.id, entries, false, time.Now())
	relayCtx := r.ctx
	r.mu.Unlock()

	go r.forward(ctx, relayCtx, l)
	return out, nil
}

// forward hands a fetch's answers to its reader, then takes the fetch out
// of every table.
func (r *Relay) forward(ctx, relayCtx context.Context, l *localFetch) {
	defer close(l.out)
	defer r.localGone(l)
	for {
		r.mu.Lock()
		var next Result
		have := len(l.queue) > 0
		if have {
			next = l.queue[0]
			l.queue[0] = Result{}
			l.queue = l.queue[1:]
			if next.Block != nil {
				l.bytes -= heldBytes(next.Block)
			}
			if l.wasFull && l.bytes <= l.budget/2 {
				// The reader caught up: fetch again what was set aside.
				l.wasFull = false
				r.core.resumeDeferred(l.id, time.Now())
			}
		}
		done := !have && (len(l.pending) == 0 || l.ended)
		r.mu.Unlock()
		if done {
			return
		}
		if !have {
			select {
			case <-l.wake:
				continue
			case <-ctx.Done():
				return
			case <-relayCtx.Done():
				return
			}
		}
		select {
		case l.out <- next:
		case <-ctx.Done():
			return
		case <-relayCtx.Done():
			return
		}
	}
}

// localGone forgets a fetch: its wants leave the core (cancelled at
// the nodes that have them) and it leaves the shell.
func (r *Relay) localGone(l *localFetch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l.ended = true
	l.queue, l.bytes = nil, 0
	if r.locals[l.id] == l {
		r.core.peerGone(l.id, time.Now())
		delete(r.locals, l.id)
	}
}

// Under the relay's lock, from the effects: a block, a DONT_HAVE, and
// whether the fetch's reader is behind.

// block takes a block for the fetch and reports whether it was one it
// waits for.
func (l *localFetch) block(b blocks.Block) bool {
	c := b.Cid()
	if _, ok := l.pending[c]; !ok || l.ended {
		return false
	}
	// The core only ever matches a block whose CID was computed from its
	// bytes (bsmsg does) or an identity block; checked again here, as the
	// gateway hands these bytes out as what c names.
	if sum, err := c.Prefix().Sum(b.RawData()); err != nil || !sum.Equals(c) {
		return false
	}
	delete(l.pending, c)
	// The fetch's reader keeps the bytes as long as it likes, uncounted:
	// the buffer is never reused (framepool.go).
	escapeBlock(b)
	l.queue = append(l.queue, Result{Cid: c, Block: b})
	l.bytes += heldBytes(b)
	l.kick()
	return true
}

func (l *localFetch) dontHave(c cid.Cid) {
	if _, ok := l.pending[c]; !ok || l.ended {
		return
	}
	delete(l.pending, c)
	l.queue = append(l.queue, Result{Cid: c, Err: ipld.ErrNotFound{Cid: c}})
	l.kick()
}

func (l *localFetch) full() bool {
	if l.bytes >= l.budget {
		l.wasFull = true
		return true
	}
	return false
}

func (l *localFetch) kick() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// endLocalsLocked ends every fetch (the relay is closing); their goroutines
// close the channels.
func (r *Relay) endLocalsLocked() {
	for id, l := range r.locals {
		l.ended = true
		l.kick()
		delete(r.locals, id)
	}
	r.locals = nil
}
