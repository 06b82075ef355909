package downstream

import (
	"fmt"
	"hash/fnv"
	"math"
	mrand "math/rand/v2"
	"slices"
	"testing"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// affinityBySort is Affinity.Select as it was written first: every
// candidate scored with hash/fnv, sorted, the first under the bound taken.
// The allocation-free version must choose the same.
func affinityBySort(a *Affinity, cands []Candidate, c cid.Cid) Candidate {
	if len(cands) == 1 {
		return cands[0]
	}
	type ranked struct {
		Candidate
		score uint64
	}
	rs := make([]ranked, len(cands))
	total := 0
	for i, cand := range cands {
		h := fnv.New64a()
		h.Write(c.Hash())
		h.Write([]byte(cand.ID))
		rs[i] = ranked{cand, mix64(h.Sum64())}
		total += cand.InFlight
	}
	slices.SortFunc(rs, func(x, y ranked) int {
		switch {
		case x.score > y.score:
			return -1
		case x.score < y.score:
			return 1
		}
		return 0
	})
	bound := int(math.Ceil((1 + a.Epsilon) * float64(total+1) / float64(len(cands))))
	for _, r := range rs {
		if r.InFlight < bound {
			return r.Candidate
		}
	}
	return rs[0].Candidate
}

func TestAffinityMatchesSortedRanking(t *testing.T) {
	rng := mrand.New(mrand.NewPCG(3, 4))
	ids := testPeerIDs(t, 8)
	for _, c := range randCIDs(t, 2000) {
		n := 1 + rng.IntN(len(ids))
		cands := make([]Candidate, n)
		for i := range cands {
			cands[i] = Candidate{ID: ids[i], InFlight: rng.IntN(12)}
		}
		a := &Affinity{Epsilon: []float64{0, 0.25, 1}[rng.IntN(3)]}
		if got, want := a.Select(cands, c), affinityBySort(a, cands, c); got.ID != want.ID {
			t.Fatalf("%s over %+v: chose %s, the sorted ranking %s", c, cands, got.ID, want.ID)
		}
	}
}

// A pool of n connected, healthy nodes, without a host: Pick reads only
// the pool's tables.
func pickPool(t testing.TB, n int) *Pool {
	p := &Pool{opts: Options{Policy: &Affinity{Epsilon: 0.25}}}
	for _, id := range testPeerIDs(t, n) {
		p.nodes = append(p.nodes, &Node{id: id, connected: true})
	}
	return p
}

func TestMultihashOf(t *testing.T) {
	for _, c := range append(randCIDs(t, 50), cid.NewCidV0(randCID(t).Hash()), cid.NewCidV1(0x300001, randCID(t).Hash())) {
		if got := multihashOf(c); got != string(c.Hash()) {
			t.Fatalf("%s: %x, want %x", c, got, []byte(c.Hash()))
		}
	}
}

func TestPickDoesNotAllocate(t *testing.T) {
	p := pickPool(t, 4)
	c := randCID(t)
	skip := func(id peer.ID) bool { return id == p.nodes[0].id }
	if a := testing.AllocsPerRun(100, func() { p.Pick(c, skip) }); a != 0 {
		t.Errorf("Pick allocates %.0f times per want", a)
	}
}

// go test -run '^$' -bench Pick -benchmem ./downstream
func BenchmarkPick(b *testing.B) {
	for _, n := range []int{1, 4, 16} {
		p := pickPool(b, n)
		cs := randCIDs(b, 256)
		b.Run(fmt.Sprintf("%d-nodes", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p.Pick(cs[i%len(cs)], nil)
				i++
			}
		})
	}
}
