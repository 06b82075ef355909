package downstream

import (
	"math"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Candidate is a node a policy may choose, with the load figures policies
// weigh.
type Candidate struct {
	ID       peer.ID
	URL      string
	InFlight int
	// Latency is the node's smoothed want latency; zero until measured.
	Latency time.Duration
}

// Policy chooses one of the candidates for a block. The pool only offers
// usable nodes not excluded by the caller, and never an empty list. Like
// Caddy's selection policies, a policy is one small type with one method
// and no knowledge of health: that is decided before it is asked.
type Policy interface {
	Select(cands []Candidate, c cid.Cid) Candidate
}

// NewPolicy returns the policy by its flag name.
func NewPolicy(name string, epsilon float64) (Policy, bool) {
	switch name {
	case "affinity", "":
		return &Affinity{Epsilon: epsilon}, true
	case "least-loaded":
		return LeastLoaded{}, true
	case "round-robin":
		return &RoundRobin{}, true
	}
	return nil, false
}

// PolicyNames lists the accepted policy names.
func PolicyNames() []string { return []string{"affinity", "least-loaded", "round-robin"} }

// RoundRobin spreads wants evenly, ignoring content and load.
type RoundRobin struct {
	next atomic.Uint64
}

// Select implements Policy.
func (r *RoundRobin) Select(cands []Candidate, _ cid.Cid) Candidate {
	i := r.next.Add(1) - 1
	return cands[i%uint64(len(cands))]
}

// Affinity sends each block to the same node every time, so repeated
// fetches of the same content hit that node's cache: rendezvous hashing on
// the block's multihash (not the CID, so CIDv0 and CIDv1 of one block land
// together), with bounded load: a node already carrying more than
// (1+Epsilon) times the average in-flight wants is passed over for the
// next node in the block's ranking.
type Affinity struct {
	Epsilon float64
}

// Select implements Policy. It ranks the candidates by score without
// sorting or allocating (it runs for every want): the choice is the
// highest-scoring candidate under the load bound, or the highest-scoring
// of all when every one is over it.
func (a *Affinity) Select(cands []Candidate, c cid.Cid) Candidate {
	if len(cands) == 1 {
		return cands[0]
	}
	mh := multihashOf(c)
	total := 0
	for _, cand := range cands {
		total += cand.InFlight
	}
	// The bound counts the want being placed, so an idle pool always
	// accepts the first choice.
	bound := int(math.Ceil((1 + a.Epsilon) * float64(total+1) / float64(len(cands))))
	best, bestUnder := -1, -1
	var bestScore, bestUnderScore uint64
	for i, cand := range cands {
		score := affinityScore(mh, cand.ID)
		if best < 0 || score > bestScore {
			best, bestScore = i, score
		}
		if cand.InFlight < bound && (bestUnder < 0 || score > bestUnderScore) {
			bestUnder, bestUnderScore = i, score
		}
	}
	if bestUnder >= 0 {
		return cands[bestUnder]
	}
	return cands[best]
}

// affinityScore is a node's rendezvous score for a block: FNV-1a over the
// multihash then the peer ID, mixed. Written out rather than through
// hash/fnv, whose hasher and byte conversion allocate on every call.
func affinityScore(mh string, id peer.ID) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	for i := 0; i < len(mh); i++ {
		h ^= uint64(mh[i])
		h *= prime64
	}
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= prime64
	}
	return mix64(h)
}

// multihashOf is c.Hash() without its copy: the multihash is the whole
// of a CIDv0, and what follows the version and codec varints of a CIDv1.
func multihashOf(c cid.Cid) string {
	s := c.KeyString()
	if c.Version() == 0 {
		return s
	}
	for range 2 {
		i := 0
		for i < len(s) && s[i]&0x80 != 0 {
			i++
		}
		s = s[min(i+1, len(s)):]
	}
	return s
}

// mix64 is MurmurHash3's 64-bit finalizer. Peer IDs share long prefixes,
// and FNV-1a's raw sum of such keys ranks some nodes first far more often
// than others; mixing spreads blocks evenly without losing the rendezvous
// property (each score still depends only on the block and the node).
func mix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}

// LeastLoaded picks the better of two random candidates ("power of two
// choices"), where better means fewer wants in flight weighted by latency:
// nearly as good as scanning every node, without herding all wants onto
// whichever node looked idlest a moment ago.
type LeastLoaded struct{}

// Select implements Policy.
func (LeastLoaded) Select(cands []Candidate, _ cid.Cid) Candidate {
	if len(cands) == 1 {
		return cands[0]
	}
	i := rand.IntN(len(cands))
	j := rand.IntN(len(cands) - 1)
	if j >= i {
		j++
	}
	if cost(cands[j]) < cost(cands[i]) {
		return cands[j]
	}
	return cands[i]
}

// cost estimates how long a new want would wait on a node: the wants ahead
// of it times how long each takes. Unmeasured nodes count as 1 ms so a new
// node is tried rather than avoided.
func cost(c Candidate) float64 {
	lat := c.Latency
	if lat <= 0 {
		lat = time.Millisecond
	}
	return float64(c.InFlight+1) * float64(lat)
}
