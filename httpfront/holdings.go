package httpfront

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
	"golang.org/x/sync/singleflight"
)

// Checker answers whether one fleet node holds a block locally, without
// fetching it from anyone. KuboChecker does it over Kubo's RPC API.
type Checker interface {
	Has(ctx context.Context, nodeURL string, c cid.Cid) (bool, error)
}

// Locator names the fleet nodes to ask about c, as RPC API base URLs: the
// node the pool's policy would send c's wants to first, then other healthy
// nodes. Holdings asks at most MaxNodes of them.
type Locator interface {
	Candidates(c cid.Cid) []string
}

// LocatorFunc adapts a function to Locator.
type LocatorFunc func(c cid.Cid) []string

// Candidates implements Locator.
func (f LocatorFunc) Candidates(c cid.Cid) []string { return f(c) }

// HoldingsConfig configures Holdings. Zero fields take the defaults.
type HoldingsConfig struct {
	Checker Checker
	Locator Locator
	// MaxNodes bounds the nodes asked per CID (3).
	MaxNodes int
	// CheckTimeout bounds one node's answer (2s); a node that does not
	// answer in time counts as not holding the block for this query, and
	// the answer is not cached.
	CheckTimeout time.Duration
	// CacheSize bounds the remembered answers (65536).
	CacheSize int
	// PositiveTTL and NegativeTTL are how long a yes and a no are
	// remembered (1m and 5s).
	PositiveTTL, NegativeTTL time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Holdings decides whether the fleet holds a CID: cheap (one offline
// lookup per node asked), bounded (MaxNodes nodes, CheckTimeout each,
// concurrent queries for one CID share one lookup) and cached.
type Holdings struct {
	cfg   HoldingsConfig
	mu    sync.Mutex
	cache *holdCache
	group singleflight.Group
}

// NewHoldings checks cfg and returns a Holdings.
func NewHoldings(cfg HoldingsConfig) (*Holdings, error) {
	if cfg.Checker == nil || cfg.Locator == nil {
		return nil, errors.New("httpfront: Holdings needs a Checker and a Locator")
	}
	if cfg.MaxNodes <= 0 {
		cfg.MaxNodes = 3
	}
	if cfg.CheckTimeout <= 0 {
		cfg.CheckTimeout = 2 * time.Second
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 1 << 16
	}
	if cfg.PositiveTTL <= 0 {
		cfg.PositiveTTL = time.Minute
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = 5 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Holdings{cfg: cfg, cache: newHoldCache(cfg.CacheSize, cfg.PositiveTTL, cfg.NegativeTTL)}, nil
}

// Outcome says how a Holds answer was reached, for metrics and tests.
type Outcome int

const (
	// Cached: answered from the cache, no node asked.
	Cached Outcome = iota
	// Asked: one or more nodes were asked and answered.
	Asked
	// Unsure: no node could answer (none healthy, errors, timeouts); the
	// answer is no and it is not cached.
	Unsure
	// Inline: an identity CID, which holds its own data.
	Inline
)

// Holds reports whether some fleet node holds c locally.
func (h *Holdings) Holds(ctx context.Context, c cid.Cid) (bool, Outcome) {
	if c.Prefix().MhType == mh.IDENTITY {
		return true, Inline
	}
	h.mu.Lock()
	holds, ok := h.cache.get(c, h.cfg.Now())
	h.mu.Unlock()
	if ok {
		return holds, Cached
	}
	// Concurrent queries for one CID share a lookup. The lookup runs on
	// its own bounded context so one caller going away does not fail the
	// others waiting on it.
	v, _, _ := h.group.Do(c.KeyString(), func() (any, error) {
		holds, sure := h.ask(c)
		if sure {
			h.mu.Lock()
			h.cache.put(c, holds, h.cfg.Now())
			h.mu.Unlock()
		}
		return answer{holds, sure}, nil
	})
	a := v.(answer)
	if !a.sure {
		return false, Unsure
	}
	return a.holds, Asked
}

type answer struct{ holds, sure bool }

// ask queries up to MaxNodes candidates at once; the first yes wins and
// cancels the rest. The answer is sure when some node said yes, or every
// node asked said no.
func (h *Holdings) ask(c cid.Cid) (holds, sure bool) {
	nodes := h.cfg.Locator.Candidates(c)
	if len(nodes) > h.cfg.MaxNodes {
		nodes = nodes[:h.cfg.MaxNodes]
	}
	if len(nodes) == 0 {
		return false, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.CheckTimeout)
	defer cancel()
	type res struct {
		has bool
		err error
	}
	out := make(chan res, len(nodes))
	for _, u := range nodes {
		go func() {
			has, err := h.cfg.Checker.Has(ctx, u, c)
			out <- res{has, err}
		}()
	}
	failed := 0
	for range nodes {
		r := <-out
		switch {
		case r.err != nil:
			failed++
		case r.has:
			return true, true
		}
	}
	return false, failed == 0
}

// CacheLen is the number of remembered answers.
func (h *Holdings) CacheLen() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cache.len()
}

func (o Outcome) String() string {
	switch o {
	case Cached:
		return "cached"
	case Asked:
		return "asked"
	case Unsure:
		return "unsure"
	case Inline:
		return "inline"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}
