package httpfront

import (
	"container/list"
	"time"

	"github.com/ipfs/go-cid"
)

// holdCache remembers recent "does the fleet hold c" answers: yes for
// PositiveTTL, no for NegativeTTL (shorter: content is added all the
// time). It is bounded to Size entries, evicting the least recently
// stored. Not safe for concurrent use; Holdings locks around it. The
// clock is passed in, so tests drive expiry.
type holdCache struct {
	size     int
	pos, neg time.Duration
	ll       *list.List // front: most recently stored
	m        map[cid.Cid]*list.Element
}

type holdEntry struct {
	c       cid.Cid
	holds   bool
	expires time.Time
}

func newHoldCache(size int, pos, neg time.Duration) *holdCache {
	return &holdCache{size: size, pos: pos, neg: neg, ll: list.New(), m: make(map[cid.Cid]*list.Element)}
}

// get returns the cached answer for c, if one is still fresh at now. An
// expired entry is dropped.
func (h *holdCache) get(c cid.Cid, now time.Time) (holds, ok bool) {
	e, found := h.m[c]
	if !found {
		return false, false
	}
	ent := e.Value.(*holdEntry)
	if !now.Before(ent.expires) {
		h.ll.Remove(e)
		delete(h.m, c)
		return false, false
	}
	return ent.holds, true
}

// put stores an answer for c at now, evicting the oldest entries past size.
func (h *holdCache) put(c cid.Cid, holds bool, now time.Time) {
	ttl := h.neg
	if holds {
		ttl = h.pos
	}
	if ttl <= 0 || h.size <= 0 {
		return
	}
	if e, found := h.m[c]; found {
		ent := e.Value.(*holdEntry)
		ent.holds, ent.expires = holds, now.Add(ttl)
		h.ll.MoveToFront(e)
		return
	}
	h.m[c] = h.ll.PushFront(&holdEntry{c: c, holds: holds, expires: now.Add(ttl)})
	// Drop expired entries from the old end, so a burst of one-off
	// queries does not stay in memory until it is pushed out by size.
	for old := h.ll.Back(); old != nil && !now.Before(old.Value.(*holdEntry).expires); old = h.ll.Back() {
		h.ll.Remove(old)
		delete(h.m, old.Value.(*holdEntry).c)
	}
	for h.ll.Len() > h.size {
		old := h.ll.Back()
		h.ll.Remove(old)
		delete(h.m, old.Value.(*holdEntry).c)
	}
}

// len is the number of entries, fresh or not yet swept.
func (h *holdCache) len() int { return h.ll.Len() }
