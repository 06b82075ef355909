package provide

import (
	"container/list"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// Keys is the bounded set of roots to announce: each node's pins (as last
// listed) and the roots preload calls pulled in (each kept for PreloadTTL
// after its last call). Not safe for concurrent use; the clock is passed
// in. The set is at most Max keys: pins first (in node order), then the
// most recent preloaded roots.
type Keys struct {
	max        int
	preloadTTL time.Duration
	pins       map[string][]mh.Multihash // node → its pinned roots
	order      []string                  // nodes in the order first seen
	preload    *list.List                // of *preloaded, front most recent
	byKey      map[string]*list.Element
}

type preloaded struct {
	key     mh.Multihash
	expires time.Time
}

// NewKeys returns an empty set bounded to max keys, keeping preloaded
// roots for ttl.
func NewKeys(max int, ttl time.Duration) *Keys {
	return &Keys{max: max, preloadTTL: ttl, pins: map[string][]mh.Multihash{},
		preload: list.New(), byKey: map[string]*list.Element{}}
}

// SetPins replaces node's pinned roots. At most Max are kept.
func (k *Keys) SetPins(node string, roots []cid.Cid) {
	if _, ok := k.pins[node]; !ok {
		k.order = append(k.order, node)
	}
	keys := make([]mh.Multihash, 0, min(len(roots), k.max))
	for _, c := range roots {
		if len(keys) >= k.max {
			break
		}
		keys = append(keys, c.Hash())
	}
	k.pins[node] = keys
}

// KeepNodes drops the pins of every node not in nodes (gone from the
// fleet).
func (k *Keys) KeepNodes(nodes []string) {
	keep := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		keep[n] = true
	}
	order := k.order[:0]
	for _, n := range k.order {
		if keep[n] {
			order = append(order, n)
		} else {
			delete(k.pins, n)
		}
	}
	k.order = order
}

// AddPreloaded records a root a preload call pulled into the fleet at now.
func (k *Keys) AddPreloaded(c cid.Cid, now time.Time) {
	key := c.Hash()
	if e, ok := k.byKey[string(key)]; ok {
		e.Value.(*preloaded).expires = now.Add(k.preloadTTL)
		k.preload.MoveToFront(e)
		return
	}
	k.byKey[string(key)] = k.preload.PushFront(&preloaded{key: key, expires: now.Add(k.preloadTTL)})
	for k.preload.Len() > k.max {
		k.dropPreloaded(k.preload.Back())
	}
}

func (k *Keys) dropPreloaded(e *list.Element) {
	k.preload.Remove(e)
	delete(k.byKey, string(e.Value.(*preloaded).key))
}

// Want returns the keys to announce at now, deduplicated, at most Max;
// truncated says some were left out. Expired preloaded roots are dropped.
func (k *Keys) Want(now time.Time) (want map[string]mh.Multihash, truncated bool) {
	for e := k.preload.Back(); e != nil && !now.Before(e.Value.(*preloaded).expires); e = k.preload.Back() {
		k.dropPreloaded(e)
	}
	want = make(map[string]mh.Multihash)
	add := func(key mh.Multihash) bool {
		if _, ok := want[string(key)]; ok {
			return true
		}
		if len(want) >= k.max {
			truncated = true
			return false
		}
		want[string(key)] = key
		return true
	}
	for _, n := range k.order {
		for _, key := range k.pins[n] {
			if !add(key) {
				return want, true
			}
		}
	}
	for e := k.preload.Front(); e != nil; e = e.Next() {
		if !add(e.Value.(*preloaded).key) {
			return want, true
		}
	}
	return want, truncated
}

// Len is the number of entries held (pins per node plus preloaded roots),
// duplicates counted.
func (k *Keys) Len() int {
	n := k.preload.Len()
	for _, p := range k.pins {
		n += len(p)
	}
	return n
}
