package bitswap

import (
	"container/list"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// recentBlocks keeps the blocks the fleet sent lately, so that a want
// arriving just after its block went out is answered without asking the
// fleet again. In a flash crowd (many clients fetching the same file at
// once) the clients are never all at the same block at the same moment:
// wants that arrive while the block is in flight join that want, and
// those that arrive just after it are served from here, so the fleet
// sends each block once.
//
// It is bounded by bytes (least recently used out first) and by idle
// time (a block unused for ttl is dropped by expire), so it empties when
// the traffic stops. The bytes counted are what the blocks keep alive
// (heldBytes): for a block parsed in place, its whole node message, whose
// buffer it holds a reference to while kept (framepool.go).
type recentBlocks struct {
	maxBytes int
	ttl      time.Duration
	bytes    int
	m        map[cid.Cid]*list.Element
	order    *list.List // of *recentBlock, least recently used first
}

type recentBlock struct {
	b    blocks.Block
	used time.Time
}

// newRecentBlocks keeps up to maxBytes of blocks, each for ttl after its
// last use; maxBytes 0 keeps nothing.
func newRecentBlocks(maxBytes int, ttl time.Duration) recentBlocks {
	return recentBlocks{maxBytes: maxBytes, ttl: ttl, m: make(map[cid.Cid]*list.Element), order: list.New()}
}

// put keeps b. A block larger than an eighth of the budget is not kept:
// it would push out many others for one.
func (r *recentBlocks) put(b blocks.Block, now time.Time) {
	size := heldBytes(b)
	if size > r.maxBytes/8 {
		return
	}
	if e, ok := r.m[b.Cid()]; ok {
		e.Value.(*recentBlock).used = now
		r.order.MoveToBack(e)
		return
	}
	retainBlock(b)
	r.m[b.Cid()] = r.order.PushBack(&recentBlock{b: b, used: now})
	r.bytes += size
	for r.bytes > r.maxBytes {
		r.remove(r.order.Front())
	}
}

// get returns the block for c if it is kept, and counts the use.
func (r *recentBlocks) get(c cid.Cid, now time.Time) (blocks.Block, bool) {
	e, ok := r.m[c]
	if !ok {
		return nil, false
	}
	rb := e.Value.(*recentBlock)
	rb.used = now
	r.order.MoveToBack(e)
	return rb.b, true
}

// expire drops the blocks unused for ttl.
func (r *recentBlocks) expire(now time.Time) {
	for e := r.order.Front(); e != nil && now.Sub(e.Value.(*recentBlock).used) >= r.ttl; e = r.order.Front() {
		r.remove(e)
	}
}

func (r *recentBlocks) remove(e *list.Element) {
	rb := r.order.Remove(e).(*recentBlock)
	delete(r.m, rb.b.Cid())
	r.bytes -= heldBytes(rb.b)
	releaseBlock(rb.b)
}

func (r *recentBlocks) reset() {
	for e := r.order.Front(); e != nil; e = e.Next() {
		releaseBlock(e.Value.(*recentBlock).b)
	}
	clear(r.m)
	r.order.Init()
	r.bytes = 0
}

func (r *recentBlocks) len() int { return len(r.m) }
