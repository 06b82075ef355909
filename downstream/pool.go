// Package downstream manages the Kubo fleet behind Kitsune: membership,
// learning each node's identity from its RPC API, keeping the back host
// connected, health (active checks and passive outlier detection), load,
// and choosing a node for each want.
package downstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
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

// Run keeps every node connected and checked until ctx ends.
func (p *Pool) Run(ctx context.Context) {
	notifiee := &network.NotifyBundle{DisconnectedF: func(n network.Network, c network.Conn) {
		if n.Connectedness(c.RemotePeer()) == network.Connected {
			return
		}
		p.mu.Lock()
		node := p.byID[c.RemotePeer()]
		p.mu.Unlock()
		if node != nil {
			node.poke()
		}
	}}
	p.host.Network().Notify(notifiee)
	defer p.host.Network().StopNotify(notifiee)

	evCtx, evCancel := context.WithCancel(context.Background())
	evDone := make(chan struct{})
	go func() {
		defer close(evDone)
		p.deliverEvents(evCtx)
	}()

	p.mu.Lock()
	p.runCtx = ctx
	nodes := slices.Clone(p.nodes)
	p.mu.Unlock()
	for _, n := range nodes {
		p.startNode(ctx, n)
	}
	<-ctx.Done()
	p.wg.Wait()
	// Deliver the last NodeDown events before returning.
	evCancel()
	<-evDone
}

func (p *Pool) startNode(ctx context.Context, n *Node) {
	nctx, cancel := context.WithCancel(ctx)
	n.mu.Lock()
	n.cancel = cancel
	n.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.maintain(nctx, n)
	}()
}

// emit queues a listener call; deliverEvents makes them in order from its
// own goroutine, so nobody calls the listener while holding a lock.
func (p *Pool) emit(f func(Listener)) {
	p.evMu.Lock()
	p.events = append(p.events, f)
	p.evMu.Unlock()
	select {
	case p.evWake <- struct{}{}:
	default:
	}
}

func (p *Pool) deliverEvents(ctx context.Context) {
	for {
		p.evMu.Lock()
		evs := p.events
		p.events = nil
		p.evMu.Unlock()
		p.mu.Lock()
		l := p.listener
		p.mu.Unlock()
		for _, f := range evs {
			if l != nil {
				f(l)
			}
		}
		if len(evs) > 0 {
			continue
		}
		select {
		case <-p.evWake:
		case <-ctx.Done():
			p.evMu.Lock()
			left := len(p.events)
			p.evMu.Unlock()
			if left == 0 {
				return
			}
		}
	}
}

// maintain connects to one node, checks it while connected, and reconnects
// with backoff when the connection drops, re-learning the peer ID each time
// so a node rebuilt behind the same API address is followed rather than
// lost.
func (p *Pool) maintain(ctx context.Context, n *Node) {
	b := backoff{min: p.opts.MinBackoff, max: p.opts.MaxBackoff}
	log := p.log.With(zap.String("node", n.URL))
	for ctx.Err() == nil {
		if err := p.connect(ctx, n, log); err != nil {
			if ctx.Err() != nil {
				break
			}
			n.mu.Lock()
			n.lastErr = err.Error()
			n.mu.Unlock()
			wait := b.next()
			log.Debug("downstream not reachable", zap.Error(err), zap.Duration("retry_in", wait))
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			continue
		}
		b.reset()
		p.watch(ctx, n, log)
		p.setDisconnected(n, log)
	}
	p.setDisconnected(n, log)
	if id := n.ID(); id != "" {
		if other := p.sharing(n, id); other != nil {
			// The same Kubo node is a member under another address (a
			// hostname and its IP): its connection is still in use.
			p.mu.Lock()
			p.byID[id] = other
			p.mu.Unlock()
			return
		}
		p.host.ConnManager().Unprotect(id, protectTag)
		p.mu.Lock()
		if p.byID[id] == n {
			delete(p.byID, id)
		}
		p.mu.Unlock()
		// A node removed from the fleet is let go; one still a member is
		// only here because Kitsune is shutting down.
		p.mu.Lock()
		member := p.byURL[n.URL] == n
		p.mu.Unlock()
		if !member {
			_ = p.host.Network().ClosePeer(id)
		}
	}
}

func (p *Pool) connect(ctx context.Context, n *Node, log *zap.Logger) error {
	cctx, cancel := context.WithTimeout(ctx, p.opts.DialTimeout)
	defer cancel()
	id, addrs, err := n.learn(cctx)
	if err != nil {
		return err
	}
	if len(addrs) == 0 {
		return fmt.Errorf("downstream %s: /api/v0/id lists no usable swarm address", n.URL)
	}
	old := n.ID()
	if old != "" && old != id {
		log.Info("downstream changed peer ID", zap.Stringer("old", old), zap.Stringer("new", id))
		p.host.ConnManager().Unprotect(old, protectTag)
		p.mu.Lock()
		if p.byID[old] == n {
			delete(p.byID, old)
		}
		p.mu.Unlock()
	}
	p.host.Peerstore().AddAddrs(id, addrs, peerstore.PermanentAddrTTL)
	if err := p.host.Connect(cctx, peer.AddrInfo{ID: id, Addrs: addrs}); err != nil {
		return fmt.Errorf("downstream %s: connect to %s: %w", n.URL, id, err)
	}
	p.host.ConnManager().Protect(id, protectTag)

	p.mu.Lock()
	p.byID[id] = n
	p.mu.Unlock()
	n.mu.Lock()
	n.id, n.addrs, n.connected, n.lastErr = id, addrs, true, ""
	n.inFlight = 0
	// A node that was ejected stays ejected across a reconnect until its
	// time is up and it passes a check.
	up := n.state != StateEjected
	if up {
		n.state, n.failures, n.healthySince = StateHealthy, 0, time.Now()
	}
	n.mu.Unlock()
	log.Info("downstream joined", zap.Stringer("peer", id), zap.Stringers("addrs", addrs))
	if up {
		p.emit(func(l Listener) { l.NodeUp(id) })
	}
	return nil
}

// watch runs the active health checks until the connection is gone or ctx
// ends. A disconnect notification wakes it at once.
func (p *Pool) watch(ctx context.Context, n *Node, log *zap.Logger) {
	t := time.NewTicker(p.opts.HealthInterval)
	defer t.Stop()
	for {
		if p.host.Network().Connectedness(n.ID()) != network.Connected {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
			continue
		case <-t.C:
		}
		err := p.check(ctx, n)
		if ctx.Err() != nil {
			return
		}
		p.afterCheck(n, err, log)
	}
}

// check is one active health check: the RPC API answers, the back host is
// connected, and a libp2p ping comes back (its RTT is kept).
func (p *Pool) check(ctx context.Context, n *Node) error {
	cctx, cancel := context.WithTimeout(ctx, p.opts.HealthTimeout)
	defer cancel()
	id := n.ID()
	if p.host.Network().Connectedness(id) != network.Connected {
		return errors.New("back host not connected")
	}
	var v struct{ Version string }
	if err := n.API.Request("version").Exec(cctx, &v); err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			// Nothing listens at the node's RPC address: the daemon is
			// gone (killed, crashed, restarting). Its libp2p connection
			// can linger (QUIC notices a dead peer only after a 30s idle
			// timeout), taking wants and hiding a node that comes back
			// on new ports or as a new peer ID. Dropping it makes the
			// node leave at once and be re-learned when it answers.
			_ = p.host.Network().ClosePeer(id)
		}
		return fmt.Errorf("/api/v0/version: %w", err)
	}
	select {
	case res := <-ping.Ping(cctx, p.host, id):
		if res.Error != nil {
			return fmt.Errorf("ping: %w", res.Error)
		}
		n.mu.Lock()
		n.rtt = res.RTT
		n.mu.Unlock()
	case <-cctx.Done():
		return fmt.Errorf("ping: %w", cctx.Err())
	}
	return nil
}

func (p *Pool) afterCheck(n *Node, err error, log *zap.Logger) {
	n.mu.Lock()
	id := n.id
	if err != nil {
		n.lastErr = err.Error()
		n.stats.Failures++
		n.failures++
		eject := n.state == StateHealthy && n.failures >= p.opts.EjectAfter
		n.mu.Unlock()
		log.Debug("health check failed", zap.Error(err))
		if eject {
			p.eject(n, "health checks failing: "+err.Error())
		}
		return
	}
	now := time.Now()
	switch {
	case n.state == StateEjected && !now.Before(n.ejectedUntil):
		n.state, n.failures, n.healthySince = StateHealthy, 0, now
		n.mu.Unlock()
		log.Info("downstream re-admitted", zap.Stringer("peer", id))
		p.emit(func(l Listener) { l.NodeUp(id) })
		return
	case n.state == StateHealthy:
		n.failures = 0
		// A long healthy stretch forgives past ejections.
		if n.ejections > 0 && now.Sub(n.healthySince) > p.opts.EjectMax {
			n.ejections = 0
		}
	}
	n.mu.Unlock()
}

// eject takes a failing node out of rotation for a time that doubles with
// each ejection in a row, like Envoy's outlier detection.
func (p *Pool) eject(n *Node, why string) {
	n.mu.Lock()
	if n.state != StateHealthy {
		n.mu.Unlock()
		return
	}
	n.ejections++
	d := p.opts.EjectBase << (n.ejections - 1)
	if d > p.opts.EjectMax || d <= 0 {
		d = p.opts.EjectMax
	}
	n.state = StateEjected
	n.ejectedUntil = time.Now().Add(d)
	n.stats.Ejections++
	id, connected := n.id, n.connected
	n.mu.Unlock()
	p.log.Warn("downstream ejected", zap.String("node", n.URL), zap.Stringer("peer", id),
		zap.String("reason", why), zap.Duration("for", d))
	p.emit(func(l Listener) { l.NodeDown(id, connected) })
}

func (p *Pool) setDisconnected(n *Node, log *zap.Logger) {
	n.mu.Lock()
	was, id := n.connected, n.id
	n.connected = false
	n.inFlight = 0
	if n.state == StateHealthy {
		n.state = StateUnknown
	}
	n.mu.Unlock()
	if !was {
		return
	}
	log.Info("downstream left", zap.Stringer("peer", id))
	if p.sharing(n, id) != nil {
		return // still reachable through the member that shares it
	}
	p.emit(func(l Listener) { l.NodeDown(id, false) })
}

// sharing returns another member that is the same peer as n and is
// connected, if there is one.
func (p *Pool) sharing(n *Node, id peer.ID) *Node {
	p.mu.Lock()
	nodes := slices.Clone(p.nodes)
	p.mu.Unlock()
	for _, o := range nodes {
		if o == n {
			continue
		}
		o.mu.Lock()
		same := o.id == id && o.connected
		o.mu.Unlock()
		if same {
			return o
		}
	}
	return nil
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
func (p *Pool) Pick(c cid.Cid, skip func(peer.ID) bool) (peer.ID, bool) {
	p.mu.Lock()
	nodes := slices.Clone(p.nodes)
	p.mu.Unlock()
	var healthy, ejected []Candidate
	var ejectedFails []int // failures of each ejected candidate
	for _, n := range nodes {
		n.mu.Lock()
		id, up, st, fails := n.id, n.connected, n.state, n.failures
		cand := Candidate{ID: id, URL: n.URL, InFlight: n.inFlight, Latency: n.ewma}
		n.mu.Unlock()
		if !up || (skip != nil && skip(id)) {
			continue
		}
		if st == StateEjected {
			ejected = append(ejected, cand)
			ejectedFails = append(ejectedFails, fails)
		} else {
			healthy = append(healthy, cand)
		}
	}
	cands := healthy
	if len(cands) == 0 && len(ejected) > 0 {
		least := slices.Min(ejectedFails)
		for i, c := range ejected {
			if ejectedFails[i] == least {
				cands = append(cands, c)
			}
		}
		p.mu.Lock()
		warn := time.Since(p.lastWarn) > 10*time.Second
		if warn {
			p.lastWarn = time.Now()
		}
		p.mu.Unlock()
		if warn {
			p.log.Warn("no healthy downstream node; routing to the least bad ejected ones", zap.Int("nodes", len(cands)))
		}
	}
	if len(cands) == 0 {
		return "", false
	}
	return p.opts.Policy.Select(cands, c).ID, true
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
		n.failures = 0
		if n.ewma == 0 {
			n.ewma = latency
		} else {
			n.ewma = time.Duration(ewmaWeight*float64(latency) + (1-ewmaWeight)*float64(n.ewma))
		}
		n.mu.Unlock()
	case OutcomeFailed:
		n.stats.Failures++
		n.failures++
		eject := n.state == StateHealthy && n.failures >= p.opts.EjectAfter
		n.mu.Unlock()
		if eject {
			p.eject(n, "wants timing out or failing")
		}
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
	n.mu.Lock()
	n.stats.Failures++
	n.failures++
	n.lastErr = why
	eject := n.state == StateHealthy && n.failures >= p.opts.EjectAfter
	n.mu.Unlock()
	if eject {
		p.eject(n, why)
	}
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
