package httpfront

import (
	"context"
	"errors"
	"github.com/kitsune-lb/kitsune/internal/testkit"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// fakeChecker answers from a table per node URL; a node missing from the
// table fails. gate, when set, holds every answer until closed.
type fakeChecker struct {
	has   map[string]map[cid.Cid]bool
	calls atomic.Int64
	gate  chan struct{}
}

func (f *fakeChecker) Has(ctx context.Context, node string, c cid.Cid) (bool, error) {
	f.calls.Add(1)
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	m, ok := f.has[node]
	if !ok {
		return false, errors.New("node down")
	}
	return m[c], nil
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestHoldsDecisions(t *testing.T) {
	held, missing := testCID(t, 1), testCID(t, 2)
	idHash, _ := mh.Sum([]byte("inline"), mh.IDENTITY, -1)
	inline := cid.NewCidV1(cid.Raw, idHash)
	for _, tc := range []struct {
		name  string
		nodes []string
		has   map[string]map[cid.Cid]bool
		c     cid.Cid
		want  bool
		out   Outcome
		calls int64 // node calls; -1 when it depends on which answers first
	}{
		{"first node holds", []string{"a", "b"}, map[string]map[cid.Cid]bool{"a": {held: true}, "b": {}}, held, true, Asked, -1},
		{"second node holds", []string{"a", "b"}, map[string]map[cid.Cid]bool{"a": {}, "b": {held: true}}, held, true, Asked, -1},
		{"nobody holds", []string{"a", "b"}, map[string]map[cid.Cid]bool{"a": {}, "b": {}}, missing, false, Asked, 2},
		{"one down, other no", []string{"a", "b"}, map[string]map[cid.Cid]bool{"b": {}}, missing, false, Unsure, 2},
		{"one down, other yes", []string{"a", "b"}, map[string]map[cid.Cid]bool{"b": {held: true}}, held, true, Asked, -1},
		{"no nodes", nil, nil, held, false, Unsure, 0},
		{"only MaxNodes asked", []string{"a", "b", "c", "d"}, map[string]map[cid.Cid]bool{"a": {}, "b": {}, "c": {}, "d": {held: true}}, held, false, Asked, 3},
		{"identity CID", nil, nil, inline, true, Inline, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := &fakeChecker{has: tc.has}
			h, err := NewHoldings(HoldingsConfig{Checker: fc, Locator: LocatorFunc(func(cid.Cid) []string { return tc.nodes }), MaxNodes: 3})
			if err != nil {
				t.Fatal(err)
			}
			got, out := h.Holds(context.Background(), tc.c)
			if got != tc.want || out != tc.out {
				t.Fatalf("Holds = (%v, %v), want (%v, %v)", got, out, tc.want, tc.out)
			}
			if tc.calls >= 0 && fc.calls.Load() != tc.calls {
				t.Fatalf("%d node calls, want %d", fc.calls.Load(), tc.calls)
			}
			// A sure answer is cached, an unsure one is not.
			before := fc.calls.Load()
			_, out2 := h.Holds(context.Background(), tc.c)
			switch tc.out {
			case Asked:
				if out2 != Cached || fc.calls.Load() != before {
					t.Fatalf("second query: %v with %d more calls, want cached", out2, fc.calls.Load()-before)
				}
			case Unsure:
				if out2 == Cached {
					t.Fatal("an unsure answer was cached")
				}
			}
		})
	}
}

func TestHoldsCacheExpiresOnClock(t *testing.T) {
	c := testCID(t, 1)
	fc := &fakeChecker{has: map[string]map[cid.Cid]bool{"a": {}}}
	clk := &fakeClock{t: time.Unix(1000, 0)}
	h, err := NewHoldings(HoldingsConfig{Checker: fc, Locator: LocatorFunc(func(cid.Cid) []string { return []string{"a"} }),
		PositiveTTL: time.Minute, NegativeTTL: 5 * time.Second, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := h.Holds(context.Background(), c); got {
		t.Fatal("holds before the node has it")
	}
	fc.has["a"][c] = true // the node gets it; the cached no still stands
	if got, out := h.Holds(context.Background(), c); got || out != Cached {
		t.Fatalf("within the negative TTL: (%v, %v), want cached no", got, out)
	}
	clk.add(5 * time.Second)
	if got, out := h.Holds(context.Background(), c); !got || out != Asked {
		t.Fatalf("after the negative TTL: (%v, %v), want asked yes", got, out)
	}
	clk.add(59 * time.Second)
	if _, out := h.Holds(context.Background(), c); out != Cached {
		t.Fatalf("within the positive TTL: %v, want cached", out)
	}
}

func TestHoldsSharesConcurrentLookups(t *testing.T) {
	c := testCID(t, 1)
	fc := &fakeChecker{has: map[string]map[cid.Cid]bool{"a": {c: true}}, gate: make(chan struct{})}
	h, err := NewHoldings(HoldingsConfig{Checker: fc, Locator: LocatorFunc(func(cid.Cid) []string { return []string{"a"} }), CheckTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	results := make(chan bool, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, _ := h.Holds(context.Background(), c)
			results <- got
		}()
	}
	// Wait until the one lookup is at the node, then let it answer.
	testkit.Eventually(t, 10*time.Second, testkit.Say("the lookup at the node"),
		func() bool { return fc.calls.Load() > 0 })
	close(fc.gate)
	wg.Wait()
	close(results)
	for got := range results {
		if !got {
			t.Fatal("a waiter got no")
		}
	}
	// Late arrivals after the lookup are answered from the cache, so the
	// node is asked once or, if a goroutine started after the answer was
	// cached, still once.
	if fc.calls.Load() != 1 {
		t.Fatalf("node asked %d times for %d concurrent queries, want 1", fc.calls.Load(), n)
	}
}

func TestHoldsTimeoutIsUnsure(t *testing.T) {
	c := testCID(t, 1)
	fc := &fakeChecker{has: map[string]map[cid.Cid]bool{"a": {c: true}}, gate: make(chan struct{})} // never opened
	h, err := NewHoldings(HoldingsConfig{Checker: fc, Locator: LocatorFunc(func(cid.Cid) []string { return []string{"a"} }), CheckTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if got, out := h.Holds(context.Background(), c); got || out != Unsure {
		t.Fatalf("a node that never answers gave (%v, %v), want unsure no", got, out)
	}
	if h.CacheLen() != 0 {
		t.Fatal("a timed-out lookup was cached")
	}
}
