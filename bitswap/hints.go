package bitswap

import (
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// hintCache remembers which node last said HAVE for a CID, so the want-block
// that usually follows a HAVE goes to that node. It is bounded: the oldest
// hint goes first, and a lost hint only costs a DONT_HAVE round trip.
type hintCache struct {
	max   int
	m     map[cid.Cid]peer.ID
	order []cid.Cid // ring of insertion order
	next  int
}

func newHintCache(max int) hintCache {
	return hintCache{max: max, m: make(map[cid.Cid]peer.ID, max), order: make([]cid.Cid, max)}
}

func (h *hintCache) put(c cid.Cid, p peer.ID) {
	if _, ok := h.m[c]; ok {
		h.m[c] = p
		return
	}
	if old := h.order[h.next]; old.Defined() {
		delete(h.m, old)
	}
	h.order[h.next] = c
	h.next = (h.next + 1) % h.max
	h.m[c] = p
}

func (h *hintCache) get(c cid.Cid) (peer.ID, bool) {
	p, ok := h.m[c]
	return p, ok
}

// forget drops every hint pointing at a node that left.
func (h *hintCache) forget(p peer.ID) {
	for c, q := range h.m {
		if q == p {
			delete(h.m, c)
		}
	}
}

func (h *hintCache) len() int { return len(h.m) }
