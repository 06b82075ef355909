package downstream

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"
)

// testPeerIDs returns n distinct peer IDs of the kind Kubo nodes have
// (Ed25519 keys, identity multihash), so the hash-based policies see
// realistic inputs with their long shared prefix.
func testPeerIDs(t testing.TB, n int) []peer.ID {
	t.Helper()
	ids := make([]peer.ID, n)
	for i := range ids {
		_, pub, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if ids[i], err = peer.IDFromPublicKey(pub); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// seededCandidates is like testCandidates with keys drawn from a fixed seed.
func seededCandidates(t testing.TB, seed uint64, n int) []Candidate {
	t.Helper()
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	r := mrand.NewChaCha8(key)
	cands := make([]Candidate, n)
	for i := range cands {
		_, pub, err := crypto.GenerateEd25519Key(r)
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		cands[i] = Candidate{ID: id, URL: fmt.Sprintf("http://10.0.0.%d:5001", i+1)}
	}
	return cands
}

// seededCIDs returns n raw CIDv1s of sha2-256 multihashes drawn from a
// fixed seed.
func seededCIDs(seed uint64, n int) []cid.Cid {
	r := mrand.New(mrand.NewPCG(seed, seed))
	out := make([]cid.Cid, n)
	for i := range out {
		b := make([]byte, 16)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		h, _ := mh.Sum(b, mh.SHA2_256, -1)
		out[i] = cid.NewCidV1(cid.Raw, h)
	}
	return out
}

func testCandidates(t testing.TB, n int) []Candidate {
	t.Helper()
	cands := make([]Candidate, n)
	for i, id := range testPeerIDs(t, n) {
		cands[i] = Candidate{ID: id, URL: fmt.Sprintf("http://10.0.0.%d:5001", i+1)}
	}
	return cands
}

// randMultihash is the sha2-256 multihash of random bytes.
func randMultihash(t testing.TB) mh.Multihash {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	h, err := mh.Sum(b, mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func randCID(t testing.TB) cid.Cid {
	return cid.NewCidV1(cid.Raw, randMultihash(t))
}

func randCIDs(t testing.TB, n int) []cid.Cid {
	cs := make([]cid.Cid, n)
	for i := range cs {
		cs[i] = randCID(t)
	}
	return cs
}

func shuffled(cands []Candidate) []Candidate {
	out := slices.Clone(cands)
	mrand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func TestNewPolicy(t *testing.T) {
	for _, name := range append([]string{""}, PolicyNames()...) {
		p, ok := NewPolicy(name, 0.5)
		if !ok || p == nil {
			t.Fatalf("NewPolicy(%q) = %v, %v; want a policy", name, p, ok)
		}
		switch name {
		case "", "affinity":
			a, isA := p.(*Affinity)
			if !isA || a.Epsilon != 0.5 {
				t.Errorf("NewPolicy(%q) = %#v; want *Affinity with Epsilon 0.5", name, p)
			}
		case "least-loaded":
			if _, is := p.(LeastLoaded); !is {
				t.Errorf("NewPolicy(%q) = %T; want LeastLoaded", name, p)
			}
		case "round-robin":
			if _, is := p.(*RoundRobin); !is {
				t.Errorf("NewPolicy(%q) = %T; want *RoundRobin", name, p)
			}
		}
	}
	for _, name := range []string{"random", "Affinity", "least_loaded", "rr"} {
		if p, ok := NewPolicy(name, 0.25); ok || p != nil {
			t.Errorf("NewPolicy(%q) = %v, %v; want nil, false", name, p, ok)
		}
	}
	// Two round-robin policies must not share a counter.
	a, _ := NewPolicy("round-robin", 0)
	b, _ := NewPolicy("round-robin", 0)
	if a == b {
		t.Error("NewPolicy returns the same round-robin policy twice")
	}
}

func TestAffinitySameBlockAcrossCIDVersions(t *testing.T) {
	cands := testCandidates(t, 5)
	a := &Affinity{Epsilon: 0.25}
	for range 500 {
		h := randMultihash(t)
		v0 := cid.NewCidV0(h)
		v1 := cid.NewCidV1(cid.DagProtobuf, h)
		if v0.Equals(v1) || v0.String() == v1.String() {
			t.Fatal("test setup: CIDv0 and CIDv1 should differ")
		}
		if g0, g1 := a.Select(cands, v0).ID, a.Select(cands, v1).ID; g0 != g1 {
			t.Fatalf("block %s: CIDv0 went to %s, CIDv1 to %s", h.B58String(), g0, g1)
		}
		// A raw CIDv1 of the same multihash is the same block, too.
		if g0, g2 := a.Select(cands, v0).ID, a.Select(cands, cid.NewCidV1(cid.Raw, h)).ID; g0 != g2 {
			t.Fatalf("block %s: dag-pb went to %s, raw to %s", h.B58String(), g0, g2)
		}
	}
}

func TestAffinityStable(t *testing.T) {
	cands := testCandidates(t, 5)
	a := &Affinity{Epsilon: 0.25}
	for _, c := range randCIDs(t, 1000) {
		first := a.Select(cands, c)
		for range 3 {
			if got := a.Select(cands, c); got.ID != first.ID {
				t.Fatalf("%s: %s then %s on the same candidates", c, first.ID, got.ID)
			}
			// The ranking depends on the node, not on where it is listed.
			if got := a.Select(shuffled(cands), c); got.ID != first.ID {
				t.Fatalf("%s: %s, but %s with the candidates reordered", c, first.ID, got.ID)
			}
		}
		// A fresh policy value agrees: no hidden state.
		if got := (&Affinity{Epsilon: 0.25}).Select(cands, c); got.ID != first.ID {
			t.Fatalf("%s: %s, but %s from another Affinity", c, first.ID, got.ID)
		}
		// The whole candidate is returned, not just the ID.
		if i := slices.IndexFunc(cands, func(x Candidate) bool { return x.ID == first.ID }); i < 0 || cands[i] != first {
			t.Fatalf("%s: Select returned %+v, not one of the candidates", c, first)
		}
	}
}

// affinitySpread gives every node's share of 10,000 seeded blocks, for
// several seeded fleets of n nodes, and the worst relative deviation from
// the fair share. Fixed seeds make the outcome independent of the run.
func affinitySpread(t *testing.T, n, fleets int, tolerance float64) {
	t.Helper()
	const blocks = 10000
	cids := seededCIDs(1, blocks)
	// Several fleets: one lucky set of peer IDs must not hide a hash that
	// spreads badly for others.
	for fleet := range fleets {
		cands := seededCandidates(t, uint64(100*n+fleet), n)
		a := &Affinity{Epsilon: 0.25}
		count := make(map[peer.ID]int)
		for _, c := range cids {
			count[a.Select(cands, c).ID]++
		}
		exp := float64(blocks) / float64(n)
		for i, cand := range cands {
			got := float64(count[cand.ID])
			if math.Abs(got-exp) > tolerance*exp {
				t.Errorf("fleet %d: node %d got %v of %d blocks (%+.1f%% off its fair share %.0f); all: %v",
					fleet, i, got, blocks, 100*(got-exp)/exp, exp, countsOf(cands, count))
			}
		}
	}
}

// TestAffinitySpreadRough catches a grossly uneven hash: no node of 3-5
// gets more than ±25% off its fair share.
func TestAffinitySpreadRough(t *testing.T) {
	for n := 3; n <= 5; n++ {
		t.Run(fmt.Sprintf("%d nodes", n), func(t *testing.T) { affinitySpread(t, n, 8, 0.25) })
	}
}

// TestAffinitySpreadEven asks for what rendezvous hashing with a
// well-mixed hash gives: every node within ±10% of its fair share (5
// standard deviations of a fair split for 5 nodes; with a 64-bit
// finalizer applied to the score, the worst of these fleets is 4.3% off).
// FNV-1a's sum used directly as the score is biased per peer ID: some
// nodes get 15% more or less than their share.
func TestAffinitySpreadEven(t *testing.T) {
	for n := 3; n <= 5; n++ {
		t.Run(fmt.Sprintf("%d nodes", n), func(t *testing.T) { affinitySpread(t, n, 8, 0.10) })
	}
}

func countsOf(cands []Candidate, count map[peer.ID]int) []int {
	out := make([]int, len(cands))
	for i, c := range cands {
		out[i] = count[c.ID]
	}
	return out
}

func TestAffinityRemovalMovesOnlyItsBlocks(t *testing.T) {
	cands := testCandidates(t, 5)
	a := &Affinity{Epsilon: 0.25}
	cids := randCIDs(t, 5000)
	before := make([]peer.ID, len(cids))
	for i, c := range cids {
		before[i] = a.Select(cands, c).ID
	}
	for gone := range cands {
		rest := slices.Delete(slices.Clone(cands), gone, gone+1)
		moved := 0
		for i, c := range cids {
			after := a.Select(rest, c).ID
			switch {
			case before[i] == cands[gone].ID:
				moved++
				if after == cands[gone].ID {
					t.Fatalf("%s still goes to the removed node", c)
				}
			case after != before[i]:
				t.Fatalf("removing node %d moved %s from %s to %s", gone, c, before[i], after)
			}
		}
		if moved == 0 {
			t.Errorf("node %d had no blocks to move", gone)
		}
	}
	// Adding a node back takes back exactly what it had and nothing else.
	extra := testCandidates(t, 1)[0]
	grown := append(slices.Clone(cands), extra)
	took := 0
	for i, c := range cids {
		after := a.Select(grown, c).ID
		if after == extra.ID {
			took++
		} else if after != before[i] {
			t.Fatalf("adding a node moved %s from %s to %s", c, before[i], after)
		}
	}
	if took < len(cids)/6/2 || took > len(cids)/6*2 {
		t.Errorf("a sixth node took %d of %d blocks; want about %d", took, len(cids), len(cids)/6)
	}
}

// affinityBound is the bounded-load ceiling the policy promises.
func affinityBound(eps float64, cands []Candidate) int {
	total := 0
	for _, c := range cands {
		total += c.InFlight
	}
	return int(math.Ceil((1 + eps) * float64(total+1) / float64(len(cands))))
}

func TestAffinityBoundedLoad(t *testing.T) {
	const eps = 0.25
	idle := testCandidates(t, 4)
	a := &Affinity{Epsilon: eps}
	cids := randCIDs(t, 2000)
	first := make([]peer.ID, len(cids))
	for i, c := range cids {
		first[i] = a.Select(idle, c).ID
	}

	// Node 0 is far above the average; the others carry a little.
	busy := slices.Clone(idle)
	busy[0].InFlight = 100
	busy[1].InFlight, busy[2].InFlight, busy[3].InFlight = 2, 3, 1
	bound := affinityBound(eps, busy) // ceil(1.25*107/4) = 34
	if bound != 34 {
		t.Fatalf("test setup: bound = %d", bound)
	}
	ranked0, kept := 0, 0
	for i, c := range cids {
		got := a.Select(busy, c)
		if got.ID == busy[0].ID {
			t.Fatalf("%s went to the overloaded node (InFlight 100, bound %d)", c, bound)
		}
		if first[i] == busy[0].ID {
			ranked0++
			continue
		}
		// A block whose first choice is under the bound stays put: the
		// bound only diverts, it does not reshuffle.
		if got.ID != first[i] {
			t.Fatalf("%s moved from %s to %s though its node is under the bound", c, first[i], got.ID)
		}
		kept++
	}
	if ranked0 == 0 || kept == 0 {
		t.Fatalf("test setup: %d blocks ranked the busy node first, %d others", ranked0, kept)
	}

	// Blocks that ranked the busy node first go to their second choice, the
	// one they move to when the busy node is gone.
	without := idle[1:]
	for i, c := range cids {
		if first[i] != busy[0].ID {
			continue
		}
		if got, want := a.Select(busy, c).ID, a.Select(without, c).ID; got != want {
			t.Fatalf("%s: diverted to %s, but its next choice is %s", c, got, want)
		}
	}

	// When every node but one is at or above the bound, that one takes
	// everything.
	full := slices.Clone(idle)
	for i := range full {
		full[i].InFlight = 10
	}
	full[2].InFlight = 0
	if b := affinityBound(eps, full); full[0].InFlight < b {
		t.Fatalf("test setup: bound %d", b)
	}
	for _, c := range cids[:200] {
		if got := a.Select(full, c); got.ID != full[2].ID {
			t.Fatalf("%s went to %s (InFlight %d) though only %s is under the bound", c, got.ID, got.InFlight, full[2].ID)
		}
	}
}

// TestAffinityBoundProperty checks the promise on random loads: the chosen
// node is under ceil((1+ε)(total+1)/n) unless every node is at or above it.
func TestAffinityBoundProperty(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	base := testCandidates(t, 5)
	for _, eps := range []float64{0, 0.1, 0.25, 1} {
		a := &Affinity{Epsilon: eps}
		for trial := range 3000 {
			n := 2 + r.IntN(4)
			cands := slices.Clone(base[:n])
			for i := range cands {
				switch r.IntN(3) {
				case 0:
					cands[i].InFlight = 0
				case 1:
					cands[i].InFlight = r.IntN(10)
				default:
					cands[i].InFlight = r.IntN(500)
				}
			}
			c := randCID(t)
			got := a.Select(cands, c)
			bound := affinityBound(eps, cands)
			allOver := !slices.ContainsFunc(cands, func(x Candidate) bool { return x.InFlight < bound })
			if got.InFlight >= bound && !allOver {
				t.Fatalf("eps %v trial %d: chose InFlight %d >= bound %d among %v", eps, trial, got.InFlight, bound, inflights(cands))
			}
		}
	}
}

func inflights(cands []Candidate) []int {
	out := make([]int, len(cands))
	for i, c := range cands {
		out[i] = c.InFlight
	}
	return out
}

func TestAffinityOneCandidate(t *testing.T) {
	cands := testCandidates(t, 1)
	cands[0].InFlight = 1000
	a := &Affinity{Epsilon: 0.25}
	for _, c := range randCIDs(t, 10) {
		if got := a.Select(cands, c); got != cands[0] {
			t.Fatalf("Select = %+v; want the only candidate", got)
		}
	}
}

func TestLeastLoadedPrefersFastIdleNodes(t *testing.T) {
	const calls = 30000
	cids := randCIDs(t, 1)
	t.Run("slow node", func(t *testing.T) {
		cands := testCandidates(t, 3)
		cands[0].Latency = 10 * time.Millisecond
		cands[1].Latency = 10 * time.Millisecond
		cands[2].Latency = 200 * time.Millisecond // same InFlight, 20× slower
		for i := range cands {
			cands[i].InFlight = 2
		}
		count := make(map[peer.ID]int)
		for range calls {
			count[LeastLoaded{}.Select(cands, cids[0]).ID]++
		}
		if share := float64(count[cands[2].ID]) / calls; share >= 0.30 {
			t.Errorf("slow node got %.1f%% of wants; want < 30%% (counts %v)", 100*share, countsOf(cands, count))
		}
		// The two equal nodes share the rest about evenly.
		if a, b := count[cands[0].ID], count[cands[1].ID]; math.Abs(float64(a-b)) > 0.1*float64(a+b) {
			t.Errorf("equal nodes got %d and %d wants", a, b)
		}
	})
	t.Run("busy node", func(t *testing.T) {
		cands := testCandidates(t, 3)
		for i := range cands {
			cands[i].Latency = 20 * time.Millisecond
		}
		cands[1].InFlight = 50
		count := make(map[peer.ID]int)
		for range calls {
			count[LeastLoaded{}.Select(cands, cids[0]).ID]++
		}
		if share := float64(count[cands[1].ID]) / calls; share >= 0.30 {
			t.Errorf("busy node got %.1f%% of wants; want < 30%% (counts %v)", 100*share, countsOf(cands, count))
		}
	})
	t.Run("latency times in-flight", func(t *testing.T) {
		// Node 0: 1 in flight at 100ms = cost 200ms; node 1: 9 in flight at
		// 5ms = cost 50ms. The product, not either figure alone, decides.
		cands := testCandidates(t, 2)
		cands[0].InFlight, cands[0].Latency = 1, 100*time.Millisecond
		cands[1].InFlight, cands[1].Latency = 9, 5*time.Millisecond
		for range 1000 {
			if got := (LeastLoaded{}).Select(cands, cids[0]); got.ID != cands[1].ID {
				t.Fatalf("chose the node with 1×100ms over 9×5ms")
			}
		}
	})
	t.Run("unmeasured node is tried", func(t *testing.T) {
		cands := testCandidates(t, 2)
		cands[0].Latency = 50 * time.Millisecond
		// cands[1] has no latency yet: it must not be avoided.
		for range 1000 {
			if got := (LeastLoaded{}).Select(cands, cids[0]); got.ID != cands[1].ID {
				t.Fatalf("an unmeasured idle node lost to one with 50ms latency")
			}
		}
	})
	t.Run("all equal spreads", func(t *testing.T) {
		cands := testCandidates(t, 3)
		count := make(map[peer.ID]int)
		for range calls {
			count[LeastLoaded{}.Select(cands, cids[0]).ID]++
		}
		for i, c := range cands {
			if share := float64(count[c.ID]) / calls; share < 0.25 || share > 0.42 {
				t.Errorf("equal node %d got %.1f%% of wants (counts %v)", i, 100*share, countsOf(cands, count))
			}
		}
	})
}

func TestLeastLoadedOneCandidate(t *testing.T) {
	cands := testCandidates(t, 1)
	cands[0].InFlight, cands[0].Latency = 500, time.Second
	for range 100 {
		if got := (LeastLoaded{}).Select(cands, randCID(t)); got != cands[0] {
			t.Fatalf("Select = %+v; want the only candidate", got)
		}
	}
}

func TestRoundRobinCycles(t *testing.T) {
	cands := testCandidates(t, 3)
	r := &RoundRobin{}
	c := randCID(t)
	for i := range 30 {
		if got := r.Select(cands, c); got.ID != cands[i%3].ID {
			t.Fatalf("call %d chose %s; want candidate %d", i, got.ID, i%3)
		}
	}
	// It ignores load and content.
	cands[0].InFlight = 1000
	count := make(map[peer.ID]int)
	for range 300 {
		count[r.Select(cands, randCID(t)).ID]++
	}
	for i, cand := range cands {
		if count[cand.ID] != 100 {
			t.Errorf("candidate %d got %d of 300", i, count[cand.ID])
		}
	}
	// A shrinking list still gets a valid candidate.
	for range 10 {
		_ = r.Select(cands[:1], c)
		_ = r.Select(cands[:2], c)
	}
}

func TestRoundRobinConcurrent(t *testing.T) {
	cands := testCandidates(t, 4)
	r := &RoundRobin{}
	c := randCID(t)
	const workers, each = 8, 1000
	results := make(chan peer.ID, workers*each)
	done := make(chan struct{})
	for range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for range each {
				results <- r.Select(cands, c).ID
			}
		}()
	}
	for range workers {
		<-done
	}
	close(results)
	count := make(map[peer.ID]int)
	for id := range results {
		count[id]++
	}
	for i, cand := range cands {
		if count[cand.ID] != workers*each/len(cands) {
			t.Errorf("candidate %d got %d of %d", i, count[cand.ID], workers*each)
		}
	}
}
