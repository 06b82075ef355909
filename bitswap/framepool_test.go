package bitswap

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// Every pooled size gets a buffer at most an eighth plus frameSlack
// larger; Kubo's 256 KiB and 1 MiB blocks, with their message's header
// bytes, fit the class of their size; small and oversized messages are
// not pooled.
func TestFramePoolClasses(t *testing.T) {
	p := newFramePool(8<<20, &Counters{})
	for _, tc := range []struct {
		size, want int // want: the buffer's capacity; 0 for not pooled
	}{
		{0, 0},
		{minPooledFrame - 1, 0},
		{minPooledFrame, minPooledFrame + frameSlack},
		{minPooledFrame + frameSlack + 1, minPooledFrame + minPooledFrame/8 + frameSlack},
		{256<<10 + 20, 256<<10 + frameSlack},
		{256<<10 + frameSlack, 256<<10 + frameSlack},
		{256<<10 + frameSlack + 1, 288<<10 + frameSlack},
		{1<<20 + 30, 1<<20 + frameSlack},
		{4 << 20, 4<<20 + frameSlack},
		{4<<20 + frameSlack + 1, 0},
	} {
		ci := p.class(tc.size)
		got := 0
		if ci >= 0 {
			got = p.classes[ci]
		}
		if got != tc.want {
			t.Errorf("a message of %d bytes gets a buffer of %d, want %d", tc.size, got, tc.want)
		}
	}
	for size := minPooledFrame; size <= maxPooledFrame; size += 997 {
		c := p.classes[p.class(size)]
		if c < size || c > size+size/8+frameSlack {
			t.Fatalf("a message of %d bytes gets a buffer of %d", size, c)
		}
	}
}

// A buffer goes back to the pool with its last reference, not before;
// one whose block escaped never does; the poison overwrites a buffer as
// its last reference goes.
func TestFrameBufReferences(t *testing.T) {
	c := &Counters{}
	p := newFramePool(8<<20, c)
	p.poison = true
	f := p.get(100 << 10)
	copy(f.b, bytes.Repeat([]byte{1}, len(f.b)))
	mem := f.b[:cap(f.b)]
	f.retain() // a holder
	f.release()
	if p.freeBytes() != 0 || mem[0] != 1 {
		t.Fatalf("buffer back in the pool (%d bytes free) or poisoned while a holder has it", p.freeBytes())
	}
	f.release()
	if p.freeBytes() != cap(mem) || !bytes.Equal(mem, bytes.Repeat([]byte{0xdb}, len(mem))) {
		t.Fatalf("after the last release: %d bytes free, want %d, and the buffer poisoned throughout", p.freeBytes(), cap(mem))
	}
	if g := p.get(100 << 10); &g.b[:1][0] != &mem[0] || c.NodeBuffersReused.Load() != 1 {
		t.Fatalf("the next message of the same class did not reuse the buffer")
	} else {
		g.release()
	}

	esc := p.get(100 << 10)
	escMem := esc.b[:1]
	esc.escaped.Store(true)
	esc.release()
	if got := p.get(100 << 10); &got.b[:1][0] == &escMem[0] {
		t.Fatal("an escaped buffer was reused")
	}
	if c.NodeBuffersEscaped.Load() != 1 {
		t.Fatalf("escaped buffers counted %d, want 1", c.NodeBuffersEscaped.Load())
	}

	over := p.get(100 << 10)
	over.release()
	func() {
		defer func() {
			if recover() == nil {
				t.Error("a release past the last did not panic")
			}
		}()
		over.release()
	}()
	func() {
		defer func() {
			if recover() == nil {
				t.Error("a retain after the last release did not panic")
			}
		}()
		over.retain()
	}()
}

// The free buffers never pass the pool's bound, whatever comes back, and
// a pool no longer used empties within two trims.
func TestFramePoolBoundedAndEmpties(t *testing.T) {
	const bound = 2 << 20
	c := &Counters{}
	p := newFramePool(bound, c)
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Unix(0, 0)
	var held []*frameBuf
	for i := range 5000 {
		if rng.IntN(2) == 0 || len(held) == 0 {
			held = append(held, p.get(minPooledFrame+rng.IntN(600<<10)))
		} else {
			j := rng.IntN(len(held))
			held[j].release()
			held[j] = held[len(held)-1]
			held = held[:len(held)-1]
		}
		if free := p.freeBytes(); free > bound {
			t.Fatalf("step %d: %d bytes free, over the bound %d", i, free, bound)
		}
		if i%100 == 0 {
			now = now.Add(framePoolTrim / 3)
			p.trim(now)
		}
	}
	for _, f := range held {
		f.release()
	}
	if p.live.Load() != 0 {
		t.Fatalf("%d buffers still out after every release", p.live.Load())
	}
	if c.NodeBuffersReused.Load() == 0 {
		t.Fatal("no buffer was ever reused")
	}
	if p.freeBytes() == 0 {
		t.Fatal("nothing free after every buffer came back: the test shows nothing")
	}
	for i := range 2 {
		now = now.Add(framePoolTrim)
		p.trim(now)
		t.Logf("after trim %d: %d bytes free", i+1, p.freeBytes())
	}
	if free := p.freeBytes(); free != 0 {
		t.Fatalf("%d bytes still free two trims after the last use", free)
	}
}

// A trim keeps the buffers that were in use since the previous one: a
// steady stream of messages finds its buffers after a trim.
func TestFramePoolTrimKeepsWhatIsUsed(t *testing.T) {
	p := newFramePool(8<<20, &Counters{})
	now := time.Unix(0, 0)
	for range 3 {
		// Four messages at once, then their buffers back, per interval.
		var fs []*frameBuf
		for range 4 {
			fs = append(fs, p.get(256<<10+20))
		}
		for _, f := range fs {
			f.release()
		}
		now = now.Add(framePoolTrim)
		p.trim(now)
	}
	if got, want := p.freeBytes(), 4*(256<<10+frameSlack); got != want {
		t.Fatalf("%d bytes free after a trim, want the %d in steady use", got, want)
	}
}

// A pool of 0 bytes (NodeBufferPoolBytes negative) keeps nothing: every
// buffer is new.
func TestFramePoolOff(t *testing.T) {
	c := &Counters{}
	p := newFramePool(0, c)
	for range 3 {
		f := p.get(256 << 10)
		f.release()
	}
	if p.freeBytes() != 0 || c.NodeBuffersReused.Load() != 0 {
		t.Fatal(fmt.Sprintf("pool off keeps %d bytes, reused %d", p.freeBytes(), c.NodeBuffersReused.Load()))
	}
}
