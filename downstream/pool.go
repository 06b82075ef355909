// Package downstream manages the Kubo fleet behind Kitsune: membership,
// learning each node's identity from its RPC API, keeping the back host
// connected, health (active checks and passive outlier detection), load,
// and choosing a node for each want.
package downstream

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
)

// protectTag keeps the connection manager away from fleet connections:
// trimming one would drop every want in flight on that node.
const protectTag = "kitsune-downstream"

// Listener hears about nodes becoming usable and unusable, so the relay can
// move wants off a node that failed and drain its queue onto one that
// joined. Calls come from one goroutine, in order, never while the pool
// holds a lock, so the listener may call back into the pool.
type Listener interface {
	NodeUp(peer.ID)
	// NodeDown says the node must get no more wants. connected tells
	// whether the connection is still open (an ejection) or gone.
	NodeDown(id peer.ID, connected bool)
}

// Outcome is how a want sent to a node ended.
type Outcome int

// Outcomes reported by the relay.
const (
	OutcomeBlock Outcome = iota
	OutcomeHave
	OutcomeDontHave
	// OutcomeCancelled: nobody wanted it any more; says nothing of the node.
	OutcomeCancelled
	// OutcomeFailed: a timeout or a send error; counts towards ejection.
	OutcomeFailed
)

// Options tune the pool. Zero values get the defaults noted.
type Options struct {
	// Policy chooses a node per want; affinity when nil.
	Policy Policy
	// DialTimeout bounds one connection attempt (10s).
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnections
	// (250ms, 30s).
	MinBackoff, MaxBackoff time.Duration
	// HealthInterval and HealthTimeout pace the active checks (5s, 2s).
	HealthInterval, HealthTimeout time.Duration
	// EjectAfter consecutive failures eject a node (3).
	EjectAfter int
	// EjectBase is the first ejection's length; each ejection in a row
	// doubles it up to EjectMax (10s, 5m).
	EjectBase, EjectMax time.Duration
	// MinTimeout and MaxTimeout bound the per-node want timeout derived
	// from its latency (2s, 10s). The floor lets a node ride out a stall
	// (a GC pause, a slow disk) of a second or so.
	MinTimeout, MaxTimeout time.Duration
	// Observer, when set, hears how every want ended (metrics).
	Observer Observer
}

// Observer hears how each want sent to a node ended, with the time it
// took: what a per-node latency histogram needs and the pool's counters
// cannot give. It is called from Done, outside the pool's locks but
// possibly under the caller's, so it must be quick and must not call back
// into the pool.
type Observer interface {
	WantDone(nodeURL string, o Outcome, latency time.Duration)
}

func (o *Options) fill() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.Policy == nil {
		o.Policy = &Affinity{Epsilon: 0.25}
	}
	def(&o.DialTimeout, 10*time.Second)
	def(&o.MinBackoff, 250*time.Millisecond)
	def(&o.MaxBackoff, 30*time.Second)
	def(&o.HealthInterval, 5*time.Second)
	def(&o.HealthTimeout, 2*time.Second)
	def(&o.EjectBase, 10*time.Second)
	def(&o.EjectMax, 5*time.Minute)
	def(&o.MinTimeout, 2*time.Second)
	def(&o.MaxTimeout, 10*time.Second)
	if o.EjectAfter <= 0 {
		o.EjectAfter = 3
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.MaxTimeout < o.MinTimeout {
		o.MaxTimeout = o.MinTimeout
	}
}

// Pool is the set of downstream nodes.
type Pool struct {
	host   host.Host
	log    *zap.Logger
	opts   Options
	client *http.Client

	mu       sync.Mutex
	sources  map[string][]string // membership source -> RPC URLs
	nodes    []*Node             // in the order they joined the pool
	byURL    map[string]*Node
	byID     map[peer.ID]*Node
	runCtx   context.Context
	wg       sync.WaitGroup
	listener Listener
	lastWarn time.Time
	// pick is Pick's scratch space, under mu.
	pick struct {
		healthy, ejected []Candidate
		fails            []int
	}

	evMu   sync.Mutex
	events []func(Listener)
	evWake chan struct{}
}

// New makes an empty pool; members come from SetMembers.
func New(h host.Host, log *zap.Logger, opts Options) *Pool {
	opts.fill()
	// One client for every node with keep-alives on (client/rpc.NewApi
	// turns them off): health checks hit the same few hosts every second.
	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	return &Pool{
		host:    h,
		log:     log,
		opts:    opts,
		client:  client,
		sources: make(map[string][]string),
		byURL:   make(map[string]*Node),
		byID:    make(map[peer.ID]*Node),
		evWake:  make(chan struct{}, 1),
	}
}

// SetListener registers the one listener; call it before Run.
func (p *Pool) SetListener(l Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.listener = l
}

// SetMembers replaces the addresses one source (flags, a DNS name, a file)
// contributes. The pool's members are the union of all sources. Addresses
// are validated first: on any error nothing changes.
func (p *Pool) SetMembers(source string, addrs []string) error {
	urls := make([]string, 0, len(addrs))
	given := make(map[string]string) // URL -> the operator's spelling
	for _, a := range addrs {
		u, err := APIURL(a)
		if err != nil {
			return err
		}
		if _, dup := given[u]; dup {
			return fmt.Errorf("downstream %s given twice", u)
		}
		given[u] = strings.TrimSpace(a)
		urls = append(urls, u)
	}

	p.mu.Lock()
	p.sources[source] = urls
	want := make(map[string]bool)
	for _, us := range p.sources {
		for _, u := range us {
			want[u] = true
		}
	}
	var added, removed []*Node
	for u := range want {
		if p.byURL[u] != nil {
			continue
		}
		spelling := given[u]
		if spelling == "" {
			spelling = u // listed by another source
		}
		n, err := newNode(spelling, p.client)
		if err != nil {
			p.mu.Unlock()
			return err // cannot happen: validated above
		}
		p.byURL[u] = n
		p.nodes = append(p.nodes, n)
		added = append(added, n)
	}
	p.nodes = slices.DeleteFunc(p.nodes, func(n *Node) bool {
		if want[n.URL] {
			return false
		}
		removed = append(removed, n)
		delete(p.byURL, n.URL)
		return true
	})
	ctx := p.runCtx
	p.mu.Unlock()

	for _, n := range added {
		p.log.Info("downstream added", zap.String("node", n.URL), zap.String("source", source))
		if ctx != nil {
			p.startNode(ctx, n)
		}
	}
	for _, n := range removed {
		p.log.Info("downstream removed", zap.String("node", n.URL), zap.String("source", source))
		n.mu.Lock()
		cancel := n.cancel
		n.mu.Unlock()
		if cancel != nil {
			cancel() // its maintenance loop disconnects and reports it down
		}
	}
	return nil
}

// Len is the number of member nodes.
func (p *Pool) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.nodes)
}

// Nodes returns a snapshot of every member node.
func (p *Pool) Nodes() []NodeStatus {
	p.mu.Lock()
	nodes := slices.Clone(p.nodes)
	p.mu.Unlock()
	out := make([]NodeStatus, len(nodes))
	for i, n := range nodes {
		out[i] = n.Status()
	}
	return out
}

func (p *Pool) node(id peer.ID) *Node {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.byID[id]
}

// IsNode reports whether id is a fleet node Kitsune knows.
func (p *Pool) IsNode(id peer.ID) bool { return p.node(id) != nil }

// Pick chooses a node for c among those skip does not exclude: a healthy
// one when there is any. When none is healthy the pool is never emptied by
// ejection: it routes to the least bad connected nodes and says so.
// It runs for every want, so it allocates nothing: the candidate lists are
// the pool's own, reused under its lock. skip is called under that lock
// and must not call back into the pool.
func (p *Pool) Pick(c cid.Cid, skip func(peer.ID) bool) (peer.ID, bool) {
	p.mu.Lock()
	healthy, ejected, fails := p.pick.healthy[:0], p.pick.ejected[:0], p.pick.fails[:0]
	for _, n := range p.nodes {
		n.mu.Lock()
		id, up, st, failures := n.id, n.connected, n.health.state, n.health.failures
		cand := Candidate{ID: id, URL: n.URL, InFlight: n.inFlight, Latency: n.ewma}
		n.mu.Unlock()
		if !up || (skip != nil && skip(id)) {
			continue
		}
		if st == StateEjected {
			ejected = append(ejected, cand)
			fails = append(fails, failures)
		} else {
			healthy = append(healthy, cand)
		}
	}
	p.pick.healthy, p.pick.ejected, p.pick.fails = healthy, ejected, fails
	cands := healthy
	warn := false
	if len(cands) == 0 && len(ejected) > 0 {
		least := slices.Min(fails)
		for i, c := range ejected {
			if fails[i] == least {
				cands = append(cands, c)
			}
		}
		p.pick.healthy = cands
		if warn = time.Since(p.lastWarn) > 10*time.Second; warn {
			p.lastWarn = time.Now()
		}
	}
	var id peer.ID
	if len(cands) > 0 {
		id = p.opts.Policy.Select(cands, c).ID
	}
	p.mu.Unlock()
	if warn {
		p.log.Warn("no healthy downstream node; routing to the least bad ejected ones", zap.Int("nodes", len(cands)))
	}
	return id, len(cands) > 0
}

// ChooseAPI returns the RPC base URL of the node the policy picks for c,
// for callers that talk to the fleet over HTTP (preload).
func (p *Pool) ChooseAPI(c cid.Cid) (string, bool) {
	id, ok := p.Pick(c, nil)
	if !ok {
		return "", false
	}
	n := p.node(id)
	if n == nil {
		return "", false
	}
	return n.URL, true
}

// Sent records a want sent to id.
func (p *Pool) Sent(id peer.ID) {
	if n := p.node(id); n != nil {
		n.mu.Lock()
		n.inFlight++
		n.stats.WantsSent++
		n.mu.Unlock()
	}
}

// ewmaWeight is how much one new latency sample moves the average.
const ewmaWeight = 0.2

// Done records how a want sent to id ended and how long it took. Failures
// in a row eject the node; any answer resets the count.
func (p *Pool) Done(id peer.ID, o Outcome, latency time.Duration) {
	n := p.node(id)
	if n == nil {
		return
	}
	if p.opts.Observer != nil {
		defer p.opts.Observer.WantDone(n.URL, o, latency)
	}
	n.mu.Lock()
	if n.inFlight > 0 {
		n.inFlight--
	}
	switch o {
	case OutcomeBlock, OutcomeHave, OutcomeDontHave:
		switch o {
		case OutcomeBlock:
			n.stats.Blocks++
		case OutcomeHave:
			n.stats.Haves++
		default:
			n.stats.DontHaves++
		}
		n.health.ok(time.Now(), p.opts.ejectPolicy())
		if n.ewma == 0 {
			n.ewma = latency
		} else {
			n.ewma = time.Duration(ewmaWeight*float64(latency) + (1-ewmaWeight)*float64(n.ewma))
		}
		n.mu.Unlock()
	case OutcomeFailed:
		n.mu.Unlock()
		p.fail(n, "wants timing out or failing")
	default:
		n.mu.Unlock()
	}
}

// Penalise counts a misbehaviour of node id as a failure, towards its
// ejection, without touching its in-flight count.
func (p *Pool) Penalise(id peer.ID, why string) {
	n := p.node(id)
	if n == nil {
		return
	}
	p.fail(n, why)
}

// Timeout is how long a want may wait on id before it is moved elsewhere:
// a multiple of the node's smoothed latency, within bounds.
func (p *Pool) Timeout(id peer.ID) time.Duration {
	n := p.node(id)
	if n == nil {
		return p.opts.MinTimeout
	}
	n.mu.Lock()
	lat := n.ewma
	n.mu.Unlock()
	t := 10 * lat
	if lat == 0 {
		t = 2 * p.opts.MinTimeout
	}
	return min(max(t, p.opts.MinTimeout), p.opts.MaxTimeout)
}

// Fetch asks node id to fetch block c itself, from whatever it is connected
// to, through its RPC API. Kubo does not fetch a block because a peer asked
// for it over Bitswap, but `block/stat` makes it.
func (p *Pool) Fetch(ctx context.Context, id peer.ID, c cid.Cid) error {
	n := p.node(id)
	if n == nil {
		return fmt.Errorf("node %s is not in the pool", id)
	}
	n.mu.Lock()
	n.stats.MissFetches++
	n.mu.Unlock()
	var out struct{ Key string }
	if err := n.API.Request("block/stat", c.String()).Exec(ctx, &out); err != nil {
		return fmt.Errorf("downstream %s: block/stat %s: %w", n.URL, c, err)
	}
	return nil
}

// ConnectedCount is how many nodes are connected now.
func (p *Pool) ConnectedCount() int {
	c := 0
	for _, s := range p.Nodes() {
		if s.Connected {
			c++
		}
	}
	return c
}

// HealthyCount is how many nodes are connected and healthy now.
func (p *Pool) HealthyCount() int {
	c := 0
	for _, s := range p.Nodes() {
		if s.Connected && s.State == StateHealthy {
			c++
		}
	}
	return c
}
