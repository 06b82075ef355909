package httpfront

import (
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

func testCID(t testing.TB, i int) cid.Cid { return testkit.CID(t, i) }

func TestHoldCacheExpiry(t *testing.T) {
	t0 := time.Unix(1000, 0)
	a, b := testCID(t, 1), testCID(t, 2)
	for _, tc := range []struct {
		name  string
		holds bool
		at    time.Duration
		hit   bool
	}{
		{"yes fresh", true, 59 * time.Second, true},
		{"yes expired", true, time.Minute, false},
		{"no fresh", false, 4 * time.Second, true},
		{"no expired", false, 5 * time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newHoldCache(10, time.Minute, 5*time.Second)
			c.put(a, tc.holds, t0)
			holds, ok := c.get(a, t0.Add(tc.at))
			if ok != tc.hit || (ok && holds != tc.holds) {
				t.Fatalf("get after %v = (%v, %v), want hit %v holds %v", tc.at, holds, ok, tc.hit, tc.holds)
			}
			if _, ok := c.get(b, t0); ok {
				t.Fatal("a CID never stored was found")
			}
			if !tc.hit && c.len() != 0 {
				t.Fatalf("expired entry kept: len %d", c.len())
			}
		})
	}
}

func TestHoldCacheBoundedAndEmpties(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := newHoldCache(100, time.Minute, time.Second)
	for i := range 1000 {
		c.put(testCID(t, i), i%2 == 0, t0)
		if c.len() > 100 {
			t.Fatalf("cache grew to %d entries, bound is 100", c.len())
		}
	}
	// The newest 100 are kept, the oldest gone.
	if _, ok := c.get(testCID(t, 999), t0); !ok {
		t.Fatal("newest entry evicted")
	}
	if _, ok := c.get(testCID(t, 0), t0); ok {
		t.Fatal("oldest entry kept past the bound")
	}
	// Once everything is stale, one more put sweeps the stale tail.
	c.put(testCID(t, 5000), true, t0.Add(2*time.Minute))
	if c.len() != 1 {
		t.Fatalf("after expiry the cache holds %d entries, want 1", c.len())
	}
}
