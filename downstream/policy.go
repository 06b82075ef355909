package downstream

import (
	"sync/atomic"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Candidate is a node a policy may choose.
type Candidate struct {
	ID  peer.ID
	URL string
}

// Policy chooses one of the candidates for a block. The pool only offers
// nodes that are connected and not excluded by the caller, and never an
// empty list.
type Policy interface {
	Select(cands []Candidate, c cid.Cid) Candidate
}

// RoundRobin spreads wants evenly, ignoring content and load.
type RoundRobin struct {
	next atomic.Uint64
}

// Select implements Policy.
func (r *RoundRobin) Select(cands []Candidate, _ cid.Cid) Candidate {
	i := r.next.Add(1) - 1
	return cands[i%uint64(len(cands))]
}
