package downstream

// Connection upkeep: keeping every node connected and checked, learning
// its identity again after a reconnect, and telling the listener.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"go.uber.org/zap"
)

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
	up := n.health.joined(time.Now())
	n.mu.Unlock()
	log.Info("downstream joined", zap.Stringer("peer", id), zap.Stringers("addrs", addrs))
	p.checkTwins(cctx, n, id, log)
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
	if err != nil {
		log.Debug("health check failed", zap.Error(err))
		p.fail(n, "health checks failing: "+err.Error())
		return
	}
	now := time.Now()
	n.mu.Lock()
	id := n.id
	readmitted := n.health.readmit(now)
	if !readmitted {
		n.health.ok(now, p.opts.ejectPolicy())
	}
	n.mu.Unlock()
	if readmitted {
		log.Info("downstream re-admitted", zap.Stringer("peer", id))
		p.emit(func(l Listener) { l.NodeUp(id) })
	}
}

// fail counts a failure of n's (a check, a want, a misbehaviour) and
// takes it out of rotation when that makes too many in a row (health.go).
func (p *Pool) fail(n *Node, why string) {
	n.mu.Lock()
	n.stats.Failures++
	n.lastErr = why
	d := n.health.fail(time.Now(), p.opts.ejectPolicy())
	if d > 0 {
		n.stats.Ejections++
	}
	id, connected := n.id, n.connected
	n.mu.Unlock()
	if d == 0 {
		return
	}
	p.log.Warn("downstream ejected", zap.String("node", n.URL), zap.Stringer("peer", id),
		zap.String("reason", why), zap.Duration("for", d))
	p.emit(func(l Listener) { l.NodeDown(id, connected) })
}

func (p *Pool) setDisconnected(n *Node, log *zap.Logger) {
	n.mu.Lock()
	was, id := n.connected, n.id
	n.connected = false
	n.inFlight = 0
	n.health.left()
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
