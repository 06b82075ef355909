package provide

import (
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/kitsune-lb/kitsune/internal/testkit"
	mh "github.com/multiformats/go-multihash"
)

func testCID(t testing.TB, i int) cid.Cid { return testkit.CID(t, i) }

func cids(t testing.TB, from, to int) []cid.Cid {
	var out []cid.Cid
	for i := from; i < to; i++ {
		out = append(out, testCID(t, i))
	}
	return out
}

func has(want map[string]mh.Multihash, c cid.Cid) bool {
	_, ok := want[string(c.Hash())]
	return ok
}

func TestKeysUnionDedupAndCIDVersions(t *testing.T) {
	now := time.Unix(1000, 0)
	k := NewKeys(100, time.Hour)
	k.SetPins("a", cids(t, 0, 3))
	k.SetPins("b", cids(t, 2, 5))
	// The same content as a CIDv0 and a CIDv1 is one key (providing is by
	// multihash).
	v0 := cid.NewCidV0(testCID(t, 1).Hash())
	k.AddPreloaded(v0, now)
	want, truncated := k.Want(now)
	if len(want) != 5 || truncated {
		t.Fatalf("want %d keys (truncated %v), expected 5", len(want), truncated)
	}
	for _, c := range cids(t, 0, 5) {
		if !has(want, c) {
			t.Fatalf("%s missing", c)
		}
	}
}

func TestKeysBoundedPinsFirst(t *testing.T) {
	now := time.Unix(1000, 0)
	k := NewKeys(10, time.Hour)
	k.SetPins("a", cids(t, 0, 50)) // more than the bound: only 10 kept
	if k.Len() != 10 {
		t.Fatalf("%d entries held, bound is 10", k.Len())
	}
	k.SetPins("b", cids(t, 100, 105))
	for i := range 20 {
		k.AddPreloaded(testCID(t, 200+i), now)
	}
	if k.preload.Len() > 10 {
		t.Fatalf("%d preloaded roots held, bound is 10", k.preload.Len())
	}
	want, truncated := k.Want(now)
	if len(want) != 10 || !truncated {
		t.Fatalf("%d keys (truncated %v), want 10 and truncated", len(want), truncated)
	}
	// a's pins came first and fill the set.
	for _, c := range cids(t, 0, 10) {
		if !has(want, c) {
			t.Fatalf("pinned %s left out for a later key", c)
		}
	}
}

func TestKeysPreloadedExpireAndNodesLeave(t *testing.T) {
	t0 := time.Unix(1000, 0)
	k := NewKeys(100, time.Hour)
	k.SetPins("a", cids(t, 0, 2))
	k.SetPins("b", cids(t, 2, 4))
	k.AddPreloaded(testCID(t, 10), t0)
	k.AddPreloaded(testCID(t, 11), t0)
	k.AddPreloaded(testCID(t, 10), t0.Add(30*time.Minute)) // preloaded again: kept longer
	want, _ := k.Want(t0.Add(time.Hour))
	if has(want, testCID(t, 11)) || !has(want, testCID(t, 10)) {
		t.Fatal("expiry: want 10 kept (called again) and 11 dropped")
	}
	k.KeepNodes([]string{"b"})
	want, _ = k.Want(t0.Add(2 * time.Hour))
	if len(want) != 2 || !has(want, testCID(t, 2)) || !has(want, testCID(t, 3)) {
		t.Fatalf("after a left and every preload expired: %d keys, want b's 2", len(want))
	}
	// Everything gone: the set empties.
	k.KeepNodes(nil)
	if want, _ = k.Want(t0.Add(2 * time.Hour)); len(want) != 0 || k.Len() != 0 || len(k.byKey) != 0 || len(k.order) != 0 {
		t.Fatalf("emptied set still holds %d keys, %d entries", len(want), k.Len())
	}
}
