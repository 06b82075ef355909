// Package downstream manages the Kubo fleet behind Kitsune: learning each
// node's identity from its RPC API, keeping the back host connected to it,
// and choosing a node for each want.
package downstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"go.uber.org/zap"
)

// protectTag keeps the connection manager away from fleet connections:
// trimming one would drop every want in flight on that node.
const protectTag = "kitsune-downstream"

// Listener hears about nodes becoming usable and unusable, so the relay can
// move wants off a node that left and drain its queue onto one that joined.
type Listener interface {
	NodeUp(peer.ID)
	NodeDown(peer.ID)
}

// Options tune the pool.
type Options struct {
	// Policy chooses a node per want; round-robin when nil.
	Policy Policy
	// DialTimeout bounds one RPC call or one connection attempt.
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnection tries.
	MinBackoff, MaxBackoff time.Duration
}

// Pool is the set of downstream nodes.
type Pool struct {
	host   host.Host
	log    *zap.Logger
	opts   Options
	nodes  []*Node
	policy Policy

	mu       sync.Mutex
	byID     map[peer.ID]*Node
	wake     map[*Node]chan struct{}
	listener Listener
}

// New makes a pool for the given RPC addresses. Nothing is dialled until Run.
func New(h host.Host, addrs []string, log *zap.Logger, opts Options) (*Pool, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no downstream nodes given")
	}
	if opts.Policy == nil {
		opts.Policy = &RoundRobin{}
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 10 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 250 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = 30 * time.Second
	}
	// One client for every node: keep-alives on (client/rpc.NewApi turns them
	// off), since health checks and preload calls hit the same few hosts.
	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	p := &Pool{
		host:   h,
		log:    log,
		opts:   opts,
		policy: opts.Policy,
		byID:   make(map[peer.ID]*Node),
		wake:   make(map[*Node]chan struct{}),
	}
	seen := make(map[string]bool)
	for _, a := range addrs {
		n, err := newNode(a, client)
		if err != nil {
			return nil, err
		}
		if seen[n.URL] {
			return nil, fmt.Errorf("downstream %s given twice", n.URL)
		}
		seen[n.URL] = true
		p.nodes = append(p.nodes, n)
		p.wake[n] = make(chan struct{}, 1)
	}
	return p, nil
}

// SetListener registers the one listener; call it before Run.
func (p *Pool) SetListener(l Listener) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.listener = l
}

// Run keeps every node connected until ctx ends.
func (p *Pool) Run(ctx context.Context) {
	notifiee := &network.NotifyBundle{DisconnectedF: func(n network.Network, c network.Conn) {
		if n.Connectedness(c.RemotePeer()) == network.Connected {
			return
		}
		p.mu.Lock()
		node := p.byID[c.RemotePeer()]
		p.mu.Unlock()
		if node != nil {
			p.poke(node)
		}
	}}
	p.host.Network().Notify(notifiee)
	defer p.host.Network().StopNotify(notifiee)

	var wg sync.WaitGroup
	for _, n := range p.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.maintain(ctx, n)
		}()
	}
	wg.Wait()
}

func (p *Pool) poke(n *Node) {
	select {
	case p.wake[n] <- struct{}{}:
	default:
	}
}

// maintain connects to one node, and reconnects with backoff when the
// connection drops, re-learning the peer ID each time so a node rebuilt
// behind the same API address is followed rather than lost.
func (p *Pool) maintain(ctx context.Context, n *Node) {
	b := backoff{min: p.opts.MinBackoff, max: p.opts.MaxBackoff}
	log := p.log.With(zap.String("node", n.URL))
	for ctx.Err() == nil {
		err := p.connect(ctx, n, log)
		if err != nil {
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
		p.waitDisconnect(ctx, n)
		p.setDown(n, log)
	}
	p.setDown(n, log)
	if id := n.ID(); id != "" {
		p.host.ConnManager().Unprotect(id, protectTag)
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
		delete(p.byID, old)
		p.mu.Unlock()
	}
	p.host.Peerstore().AddAddrs(id, addrs, peerstore.PermanentAddrTTL)
	if err := p.host.Connect(cctx, peer.AddrInfo{ID: id, Addrs: addrs}); err != nil {
		return fmt.Errorf("downstream %s: connect to %s: %w", n.URL, id, err)
	}
	p.host.ConnManager().Protect(id, protectTag)

	p.mu.Lock()
	p.byID[id] = n
	l := p.listener
	p.mu.Unlock()
	n.mu.Lock()
	n.id, n.addrs, n.connected, n.lastErr = id, addrs, true, ""
	n.mu.Unlock()
	log.Info("downstream joined", zap.Stringer("peer", id), zap.Stringers("addrs", addrs))
	if l != nil {
		l.NodeUp(id)
	}
	return nil
}

// waitDisconnect returns when the back host has no connection left to n or
// ctx ends. The notifiee wakes it; the ticker covers a missed event.
func (p *Pool) waitDisconnect(ctx context.Context, n *Node) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if p.host.Network().Connectedness(n.ID()) != network.Connected {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-p.wake[n]:
		case <-t.C:
		}
	}
}

func (p *Pool) setDown(n *Node, log *zap.Logger) {
	n.mu.Lock()
	was, id := n.connected, n.id
	n.connected = false
	n.mu.Unlock()
	if !was {
		return
	}
	log.Info("downstream left", zap.Stringer("peer", id))
	p.mu.Lock()
	l := p.listener
	p.mu.Unlock()
	if l != nil {
		l.NodeDown(id)
	}
}

// Nodes returns a snapshot of every configured node.
func (p *Pool) Nodes() []NodeStatus {
	out := make([]NodeStatus, len(p.nodes))
	for i, n := range p.nodes {
		out[i] = n.Status()
	}
	return out
}

// IsNode reports whether id is a fleet node Kitsune knows.
func (p *Pool) IsNode(id peer.ID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.byID[id]
	return ok
}

// Pick chooses a connected node for c among those skip does not exclude.
func (p *Pool) Pick(c cid.Cid, skip func(peer.ID) bool) (peer.ID, bool) {
	cands := make([]Candidate, 0, len(p.nodes))
	for _, n := range p.nodes {
		n.mu.Lock()
		id, up := n.id, n.connected
		n.mu.Unlock()
		if !up || (skip != nil && skip(id)) {
			continue
		}
		cands = append(cands, Candidate{ID: id, URL: n.URL})
	}
	if len(cands) == 0 {
		return "", false
	}
	return p.policy.Select(cands, c).ID, true
}

// ConnectedCount is how many nodes are usable now.
func (p *Pool) ConnectedCount() int {
	c := 0
	for _, n := range p.nodes {
		if n.Status().Connected {
			c++
		}
	}
	return c
}
