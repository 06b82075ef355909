package provide

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
	"go.uber.org/zap"
)

// Provider announces keys and keeps reannouncing them until told to stop:
// go-libp2p-kad-dht's sweep provider (provider.SweepingProvider, or the
// dual one) is one.
type Provider interface {
	StartProviding(force bool, keys ...mh.Multihash) error
	StopProviding(keys ...mh.Multihash) error
}

// PinLister lists a fleet node's recursively pinned roots, at most max.
type PinLister interface {
	Pins(ctx context.Context, nodeURL string, max int) ([]cid.Cid, error)
}

// Config configures an Announcer. Zero durations and sizes take the
// defaults.
type Config struct {
	Provider Provider
	Pins     PinLister
	// Nodes returns the RPC URLs of the fleet's member nodes now.
	Nodes func() []string
	// MaxKeys bounds the keys announced (DefaultMaxKeys).
	MaxKeys int
	// Refresh is how often every node's pins are listed again
	// (DefaultRefresh).
	Refresh time.Duration
	// ListTimeout bounds one node's pin listing (DefaultListTimeout).
	ListTimeout time.Duration
	// PreloadTTL is how long a preloaded root stays announced after its
	// last preload call (DefaultPreloadTTL).
	PreloadTTL time.Duration
	Log        *zap.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Defaults for Config.
const (
	DefaultMaxKeys     = 200_000
	DefaultRefresh     = 10 * time.Minute
	DefaultListTimeout = time.Minute
	DefaultPreloadTTL  = 24 * time.Hour
)

// Announcer keeps the provider's key set equal to what the fleet holds:
// it lists each node's pins every Refresh, hears preloaded roots as they
// come, and starts or stops providing the difference.
type Announcer struct {
	cfg  Config
	wake chan struct{}

	mu        sync.Mutex
	keys      *Keys
	announced map[string]mh.Multihash
	truncated bool
}

// New checks cfg and returns an Announcer; Run starts it.
func New(cfg Config) (*Announcer, error) {
	if cfg.Provider == nil || cfg.Pins == nil || cfg.Nodes == nil {
		return nil, errors.New("provide: Config needs a Provider, a PinLister and Nodes")
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.ListTimeout <= 0 {
		cfg.ListTimeout = DefaultListTimeout
	}
	if cfg.PreloadTTL <= 0 {
		cfg.PreloadTTL = DefaultPreloadTTL
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Announcer{cfg: cfg, wake: make(chan struct{}, 1),
		keys: NewKeys(cfg.MaxKeys, cfg.PreloadTTL), announced: map[string]mh.Multihash{}}, nil
}

// Preloaded records that a preload call pulled root into the fleet; it is
// announced at once. Safe from any goroutine; never blocks.
func (a *Announcer) Preloaded(root cid.Cid) {
	a.mu.Lock()
	a.keys.AddPreloaded(root, a.cfg.Now())
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Announced is the number of keys being provided now, and whether the
// bound left some out.
func (a *Announcer) Announced() (int, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.announced), a.truncated
}

// Run lists the pins now and every Refresh, and follows preloads, until
// ctx ends.
func (a *Announcer) Run(ctx context.Context) {
	tick := time.NewTicker(a.cfg.Refresh)
	defer tick.Stop()
	a.RefreshPins(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			a.RefreshPins(ctx)
		case <-a.wake:
			a.sync()
		}
	}
}

// RefreshPins lists every member node's pins (one at a time: a fleet is
// a handful of nodes, and a listing can be long), then syncs. A node that
// cannot be listed keeps its last listing; a node gone from the fleet
// loses it.
func (a *Announcer) RefreshPins(ctx context.Context) {
	nodes := a.cfg.Nodes()
	for _, n := range nodes {
		lctx, cancel := context.WithTimeout(ctx, a.cfg.ListTimeout)
		roots, err := a.cfg.Pins.Pins(lctx, n, a.cfg.MaxKeys)
		cancel()
		if err != nil {
			a.cfg.Log.Warn("listing a node's pins; its last listing stays announced", zap.String("node", n), zap.Error(err))
			continue
		}
		a.mu.Lock()
		a.keys.SetPins(n, roots)
		a.mu.Unlock()
	}
	a.mu.Lock()
	a.keys.KeepNodes(nodes)
	a.mu.Unlock()
	a.sync()
}

// sync starts providing wanted keys not yet announced and stops those no
// longer wanted.
func (a *Announcer) sync() {
	a.mu.Lock()
	want, truncated := a.keys.Want(a.cfg.Now())
	var add, drop []mh.Multihash
	for s, k := range want {
		if _, ok := a.announced[s]; !ok {
			add = append(add, k)
		}
	}
	for s, k := range a.announced {
		if _, ok := want[s]; !ok {
			drop = append(drop, k)
		}
	}
	if truncated && !a.truncated {
		a.cfg.Log.Warn("the fleet holds more roots than --provide-max-keys; some are not announced", zap.Int("max", a.cfg.MaxKeys))
	}
	a.truncated = truncated
	a.mu.Unlock()

	// The provider is called outside the lock: it may take a while, and
	// Preloaded must never wait on it.
	if len(drop) > 0 {
		if err := a.cfg.Provider.StopProviding(drop...); err != nil {
			a.cfg.Log.Warn("stop providing", zap.Int("keys", len(drop)), zap.Error(err))
			drop = nil
		}
	}
	if len(add) > 0 {
		if err := a.cfg.Provider.StartProviding(false, add...); err != nil {
			a.cfg.Log.Warn("start providing", zap.Int("keys", len(add)), zap.Error(err))
			add = nil
		}
	}
	a.mu.Lock()
	for _, k := range drop {
		delete(a.announced, string(k))
	}
	for _, k := range add {
		a.announced[string(k)] = k
	}
	a.mu.Unlock()
	if len(add)+len(drop) > 0 {
		a.cfg.Log.Debug("provided keys updated", zap.Int("added", len(add)), zap.Int("dropped", len(drop)))
	}
}
