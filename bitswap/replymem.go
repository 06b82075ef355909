package bitswap

import (
	"sync/atomic"

	blocks "github.com/ipfs/go-block-format"
)

// Replies' memory, relay-wide. Each upstream peer's replies are bounded by
// PeerBufferBytes (16 MiB), and the front accepts thousands of peers
// (--max-conns 8192): peers that each want distinct large blocks and read
// nothing could make Kitsune hold 8192 × 16 MiB, 128 GiB, and the machine
// would run out of memory for every client. So the blocks all outboxes
// hold are counted together, each block once however many peers it is
// queued for (a flash crowd queues the same blocks for a hundred peers,
// which costs their size once), and once that passes ReplyMemoryBytes a
// peer's budget is its equal share of it among the peers holding any,
// at most PeerBufferBytes. A peer over its share gets no more blocks
// (their wants are deferred, as for a full outbox, and fetched again once
// it drained), so the readers go on at their share and the peers that do
// not read hold what they hold until their writes time out. Below the
// limit nothing changes. What can be held is then about twice the limit
// (blocks already wanted still arrive after it is passed, for peers under
// their share) plus one block per peer.

// replyMemory counts the memory the upstream peers' outboxes keep alive,
// and says each one's budget. Safe for concurrent use; a nil one has no
// limit.
type replyMemory struct {
	limit int
	// bytes is what the outboxes' blocks keep alive, each block once;
	// active the outboxes holding any.
	bytes  atomic.Int64
	active atomic.Int64
}

// newReplyMemory bounds the outboxes' blocks to limit bytes together;
// limit ≤ 0 sets no bound.
func newReplyMemory(limit int) *replyMemory {
	return &replyMemory{limit: limit}
}

// budget is what an outbox whose own budget is perPeer may hold now:
// perPeer below the limit, its equal share of the limit above it.
func (m *replyMemory) budget(perPeer int) int {
	if m == nil || m.limit <= 0 || m.bytes.Load() < int64(m.limit) {
		return perPeer
	}
	share := m.limit / int(max(1, m.active.Load()))
	if perPeer <= 0 {
		return share
	}
	return min(perPeer, share)
}

// hold counts a block an outbox takes: a block parsed in place the first
// time any outbox holds it, another (a copy of its own) every time.
func (m *replyMemory) hold(b blocks.Block) {
	if m == nil {
		return
	}
	if fb, ok := b.(*frameBlock); ok && fb.outboxes.Add(1) > 1 {
		return
	}
	m.bytes.Add(int64(heldBytes(b)))
}

// drop undoes one hold.
func (m *replyMemory) drop(b blocks.Block) {
	if m == nil {
		return
	}
	if fb, ok := b.(*frameBlock); ok && fb.outboxes.Add(-1) > 0 {
		return
	}
	m.bytes.Add(-int64(heldBytes(b)))
}

// setActive records an outbox starting (on) or ceasing (off) to hold
// blocks.
func (m *replyMemory) setActive(on bool) {
	if m == nil {
		return
	}
	if on {
		m.active.Add(1)
	} else {
		m.active.Add(-1)
	}
}

// held is what the outboxes' blocks keep alive, and how many outboxes
// hold any.
func (m *replyMemory) held() (bytes, peers int) {
	if m == nil {
		return 0, 0
	}
	return int(m.bytes.Load()), int(m.active.Load())
}
