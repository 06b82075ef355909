package bitswap

// Node message buffers, reused. Every message from a node is read into a
// buffer of its own (inbound.go), and a block over half of it stays a
// slice of it until the reply that carries the block is written. A new
// buffer per message (Kubo sends each 256 KiB block alone in a message)
// was the bulk of the relay's allocation in scenario 1: a large
// allocation, zeroed, faulted in again after the scavenger returned it,
// and a garbage collection every few dozen blocks.
//
// So the buffers come from a pool and go back to it once nobody holds a
// block sliced from them. A buffer going back while someone still reads
// it would send one client another block's bytes; a buffer never going
// back costs only the garbage collector. The rules keep the second the
// default:
//   - a frameBuf counts references: the reader holds one while the
//     message is parsed and handed to the core, and each holder that
//     keeps a block past that (the recent blocks, a peer's reply queue
//     until the reply is written) takes one and gives it back exactly
//     once (retainBlock, releaseBlock);
//   - a holder that hands the bytes to code that does not count (a local
//     fetch's reader, the gateway) marks the buffer escaped
//     (escapeBlock): it is then never reused;
//   - the last release puts the buffer back, unless it escaped.
//
// The pool keeps at most maxBytes of free buffers, and gives back to the
// garbage collector, every framePoolTrim, the buffers that were not
// needed since the previous trim: idle, it empties.

import (
	"sync"
	"sync/atomic"
	"time"

	blocks "github.com/ipfs/go-block-format"
)

// Size classes: eight per doubling from minPooledFrame, each with
// frameSlack bytes over its step, so that a block of a round size (Kubo's
// 256 KiB, 1 MiB chunks) and its message's few header bytes fit the
// class of the block's size. A buffer is at most an eighth plus
// frameSlack larger than its message.
const (
	minPooledFrame = 8 << 10
	maxPooledFrame = 4 << 20 // network.MessageSizeMax
	frameSlack     = 1 << 10
	classesPerStep = 8
)

// framePoolTrim is how often the buffers not needed lately are let go.
const framePoolTrim = time.Second

// framePool keeps free node message buffers by size class. Safe for
// concurrent use.
type framePool struct {
	classes []int // buffer sizes, ascending
	max     int   // most free bytes kept

	mu    sync.Mutex
	free  [][][]byte // by class
	low   []int      // fewest free buffers of each class since the last trim
	bytes int        // in free
	// trimmed is when the pool was last trimmed.
	trimmed time.Time
	// poison, in tests, overwrites every pooled buffer whose last
	// reference went, kept or not: a reader that still had it sees garbage (and
	// the hash check of what was sent fails) instead of the right bytes
	// by luck.
	poison bool

	counters *Counters
	// live counts the pooled-size buffers handed out and not yet back
	// (refs > 0): 0 once the relay holds no block, for tests.
	live atomic.Int64
}

// newFramePool keeps up to maxBytes of free buffers; 0 or less keeps
// none (every buffer is new, as before the pool).
func newFramePool(maxBytes int, counters *Counters) *framePool {
	p := &framePool{max: max(0, maxBytes), counters: counters}
	for step := minPooledFrame; step < maxPooledFrame; step *= 2 {
		for i := range classesPerStep {
			p.classes = append(p.classes, step+i*step/classesPerStep+frameSlack)
		}
	}
	p.classes = append(p.classes, maxPooledFrame+frameSlack)
	p.free = make([][][]byte, len(p.classes))
	p.low = make([]int, len(p.classes))
	return p
}

// class is the index of the smallest class that holds size bytes, or -1
// for a size not pooled (small ones cost the allocator little).
func (p *framePool) class(size int) int {
	if size < minPooledFrame || size > p.classes[len(p.classes)-1] {
		return -1
	}
	lo, hi := 0, len(p.classes)-1
	for lo < hi {
		mid := (lo + hi) / 2
		if p.classes[mid] >= size {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// get returns a buffer of size bytes (its capacity is its class's) with
// one reference, the caller's. Its contents are undefined.
func (p *framePool) get(size int) *frameBuf {
	ci := p.class(size)
	if ci < 0 || p.max == 0 {
		return unpooled(make([]byte, size))
	}
	p.live.Add(1)
	p.mu.Lock()
	var b []byte
	if free := p.free[ci]; len(free) > 0 {
		b = free[len(free)-1]
		free[len(free)-1] = nil
		p.free[ci] = free[:len(free)-1]
		p.bytes -= cap(b)
		p.low[ci] = min(p.low[ci], len(p.free[ci]))
	}
	p.mu.Unlock()
	if b == nil {
		b = make([]byte, p.classes[ci])
		p.counters.NodeBuffersNew.Add(1)
	} else {
		p.counters.NodeBuffersReused.Add(1)
	}
	f := &frameBuf{b: b[:size], pool: p, class: ci}
	f.refs.Store(1)
	return f
}

// put takes back a buffer whose last reference went.
func (p *framePool) put(f *frameBuf) {
	b := f.b[:cap(f.b)]
	f.b = nil
	p.live.Add(-1)
	if p.poison && len(b) > 0 {
		// Doubling copies: one instrumented range each under -race,
		// where a byte loop costs a check per byte.
		b[0] = 0xdb
		for i := 1; i < len(b); i *= 2 {
			copy(b[i:], b[:i])
		}
	}
	if f.escaped.Load() {
		p.counters.NodeBuffersEscaped.Add(1)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bytes+cap(b) > p.max {
		return // full: the garbage collector has it
	}
	p.free[f.class] = append(p.free[f.class], b)
	p.bytes += cap(b)
}

// trim lets go of the buffers not needed since the last trim, at most
// every framePoolTrim: those that stayed free all along. A pool unused
// for two trims is empty.
func (p *framePool) trim(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now.Sub(p.trimmed) < framePoolTrim {
		return
	}
	p.trimmed = now
	for ci, free := range p.free {
		n := len(free) - p.low[ci]
		for i := n; i < len(free); i++ {
			p.bytes -= cap(free[i])
			free[i] = nil
		}
		p.free[ci] = free[:n]
		p.low[ci] = n
	}
}

// freeBytes is the memory the free buffers take.
func (p *framePool) freeBytes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes
}

// frameBuf is one node message's buffer and the count of its holders.
type frameBuf struct {
	b    []byte
	refs atomic.Int32
	// escaped is set once the bytes were handed to code that does not
	// count references: the buffer is then never reused.
	escaped atomic.Bool
	pool    *framePool // nil: not pooled (a buffer of its own)
	class   int
}

// unpooled wraps a buffer that is not the pool's (tests, fuzzing).
func unpooled(b []byte) *frameBuf {
	f := &frameBuf{b: b[:len(b):len(b)]}
	f.refs.Store(1)
	return f
}

// retain adds a holder; only a holder may call it.
func (f *frameBuf) retain() {
	if f.refs.Add(1) <= 1 {
		panic("bitswap: a node message buffer retained after its last release")
	}
}

// release drops a holder's reference; the last one returns the buffer
// to its pool. Released more often than retained is a bug that would
// send one client's bytes to another: it panics, as sync.WaitGroup does
// for a negative count.
func (f *frameBuf) release() {
	switch n := f.refs.Add(-1); {
	case n > 0:
		return
	case n < 0:
		panic("bitswap: a node message buffer released more often than retained")
	}
	if f.pool != nil {
		f.pool.put(f)
	}
}

// The holders' side: a block parsed in place (frameBlock) holds its
// message's buffer; any other block holds nothing of the pool's.

// retainBlock takes a reference for a holder that keeps b.
func retainBlock(b blocks.Block) {
	if fb, ok := b.(*frameBlock); ok {
		fb.buf.retain()
	}
}

// releaseBlock gives back a reference retainBlock took.
func releaseBlock(b blocks.Block) {
	if fb, ok := b.(*frameBlock); ok {
		fb.buf.release()
	}
}

// escapeBlock marks b's buffer as handed to code that does not count
// references: it is never reused. Only a holder may call it.
func escapeBlock(b blocks.Block) {
	if fb, ok := b.(*frameBlock); ok {
		fb.buf.escaped.Store(true)
	}
}
