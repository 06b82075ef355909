package proxy

// The back host's resource manager. go-libp2p's (rcmgr) accounts every
// stream in five scopes (stream, peer, protocol, protocol-peer, system)
// under as many locks, names every yamux stream's memory span with
// fmt.Sprintf, and keeps the limits of services and protocols the back
// host never serves. A Kubo node opens a stream for every message it
// sends, so that was paid once per block relayed: about 20 µs of CPU per
// small block on the two hosts (docs/performance.md, scenario 2).
//
// The back host needs less. It listens nowhere and dials only the fleet
// the operator listed (downstream/), so every peer it has is one of the
// operator's own Kubo nodes, and this manager refuses any inbound
// connection to keep it so. What a node can still make Kitsune hold is
// what it sends on the connections Kitsune made:
//   - streams: each holds up to backStreamWindow of data in yamux's
//     buffer before Kitsune reads it, of which yamux reserves only the
//     first 256 KiB, so their number is capped per node;
//   - memory: those first windows, the message buffers the relay reads
//     (inbound.go reserves each one in its stream's scope while it reads
//     and parses it) and yamux's window growth, capped per node together,
//     with rcmgr's priorities.
//
// A node past either cap has its stream reset, as rcmgr did. Everything
// else the relay keeps of a node's messages is bounded by the relay's own
// budgets (wants in flight per node, reply queues).

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
)

// fleetLimits bound one fleet node.
type fleetLimits struct {
	// streamsIn is how many streams one node may have open towards
	// Kitsune at once. Kubo opens one per message and closes it once
	// written; they pile up only while Kitsune reads slower than the node
	// sends. rcmgr's default on a machine of 24 GiB allowed 75 Bitswap
	// streams per node (its protocol-peer scope).
	streamsIn int
	// memory is what one node's streams and connections may reserve at
	// once: yamux's first 256 KiB of every stream's window and its window
	// growth, and message buffers (up to network.MessageSizeMax each).
	// rcmgr allowed 16 MiB of message buffers per node (protocol-peer)
	// and 440 MiB in all (peer), on a machine of 24 GiB.
	memory int64
}

// defaultFleetLimits keep a node within about 224 MiB of Kitsune's memory
// (128 MiB reserved, and 768 KiB of each of 128 streams' windows
// unreserved), less than rcmgr allowed, with room for a busy node's
// bursts of replies: 128 first windows take a quarter of the budget.
var defaultFleetLimits = fleetLimits{streamsIn: 128, memory: 128 << 20}

// errInboundConn refuses connections nobody should be able to make: the
// back host listens nowhere.
var errInboundConn = errors.New("back host: inbound connections are refused: it only dials its fleet")

// fleetResources is a network.ResourceManager for the back host.
type fleetResources struct {
	limits fleetLimits

	mu sync.Mutex
	// peers holds the nodes that have a connection or a stream open;
	// the last one to end removes its node.
	peers map[peer.ID]*fleetPeer
}

var _ network.ResourceManager = (*fleetResources)(nil)

func newFleetResources(l fleetLimits) *fleetResources {
	return &fleetResources{limits: l, peers: map[peer.ID]*fleetPeer{}}
}

// acquire returns p's scope with one more reference held.
func (m *fleetResources) acquire(p peer.ID) *fleetPeer {
	m.mu.Lock()
	defer m.mu.Unlock()
	fp := m.peers[p]
	if fp == nil {
		fp = &fleetPeer{m: m, id: p}
		m.peers[p] = fp
	}
	fp.refs++
	return fp
}

func (m *fleetResources) release(fp *fleetPeer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fp.refs--
	if fp.refs == 0 && m.peers[fp.id] == fp {
		delete(m.peers, fp.id)
	}
}

func (m *fleetResources) OpenConnection(dir network.Direction, _ bool, endpoint ma.Multiaddr) (network.ConnManagementScope, error) {
	if dir == network.DirInbound {
		return nil, fmt.Errorf("%w (from %s)", errInboundConn, endpoint)
	}
	return &fleetConn{m: m}, nil
}

func (m *fleetResources) OpenStream(p peer.ID, dir network.Direction) (network.StreamManagementScope, error) {
	fp := m.acquire(p)
	if dir == network.DirInbound {
		if int(fp.streamsIn.Add(1)) > m.limits.streamsIn {
			fp.streamsIn.Add(-1)
			m.release(fp)
			return nil, fmt.Errorf("node %s: %d inbound streams: %w", p, m.limits.streamsIn, network.ErrResourceLimitExceeded)
		}
	} else {
		fp.streamsOut.Add(1)
	}
	return &fleetStream{peer: fp, dir: dir, lightSpan: lightSpan{owner: fp}}, nil
}

// VerifySourceAddress is for listeners (QUIC's address validation); the
// back host has none.
func (m *fleetResources) VerifySourceAddress(net.Addr) bool { return false }

func (m *fleetResources) Close() error { return nil }

// ViewPeer shows a node's streams and memory; the other views are empty:
// this manager keeps no system, service or protocol accounts.
func (m *fleetResources) ViewPeer(p peer.ID, f func(network.PeerScope) error) error {
	m.mu.Lock()
	fp := m.peers[p]
	m.mu.Unlock()
	if fp == nil {
		fp = &fleetPeer{m: m, id: p}
	}
	return f(fp)
}

func (m *fleetResources) ViewSystem(f func(network.ResourceScope) error) error {
	return f(&network.NullScope{})
}

func (m *fleetResources) ViewTransient(f func(network.ResourceScope) error) error {
	return f(&network.NullScope{})
}

func (m *fleetResources) ViewService(_ string, f func(network.ServiceScope) error) error {
	return f(&network.NullScope{})
}

func (m *fleetResources) ViewProtocol(_ protocol.ID, f func(network.ProtocolScope) error) error {
	return f(&network.NullScope{})
}

// fleetPeer is one node's account.
type fleetPeer struct {
	m  *fleetResources
	id peer.ID
	// refs counts the connections and streams holding it, under m.mu.
	refs int

	streamsIn, streamsOut atomic.Int32
	memory                atomic.Int64
}

var _ network.PeerScope = (*fleetPeer)(nil)

func (p *fleetPeer) Peer() peer.ID { return p.id }

// ReserveMemory grants size bytes while the node's total stays within its
// budget's share for prio, as rcmgr does: (prio+1)/256 of it. So yamux's
// window growth (priority 128) stops at half the budget and message
// buffers (ReservationPriorityHigh) at four fifths, and the rest stays for
// a new stream's first window (255), whose refusal would make yamux close
// the node's whole connection. Two reservations racing past the limit may
// both be refused where rcmgr's lock would have granted one; each is
// retried with the node's next message or window update.
func (p *fleetPeer) ReserveMemory(size int, prio uint8) error {
	if p.memory.Add(int64(size)) > p.m.limits.memory*(int64(prio)+1)/256 {
		p.memory.Add(-int64(size))
		return fmt.Errorf("node %s: memory: %w", p.id, network.ErrResourceLimitExceeded)
	}
	return nil
}

func (p *fleetPeer) ReleaseMemory(size int) { p.memory.Add(-int64(size)) }

func (p *fleetPeer) Stat() network.ScopeStat {
	return network.ScopeStat{
		NumStreamsInbound:  int(p.streamsIn.Load()),
		NumStreamsOutbound: int(p.streamsOut.Load()),
		Memory:             p.memory.Load(),
	}
}

func (p *fleetPeer) BeginSpan() (network.ResourceScopeSpan, error) {
	return &lightSpan{owner: p}, nil
}

// lightSpan reserves in its owner and gives back, when done, whatever it
// still holds. Each yamux stream gets one (from the connection's peer
// scope) for its window growth, on both hosts (muxer.go). The one in a
// fleetConn has no owner until the handshake names the connection's node,
// and until then only counts what it holds.
type lightSpan struct {
	owner network.ResourceScope

	mu       sync.Mutex
	reserved int64
	done     bool
}

func (s *lightSpan) ReserveMemory(size int, prio uint8) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return network.ErrResourceScopeClosed
	}
	if s.owner != nil {
		if err := s.owner.ReserveMemory(size, prio); err != nil {
			return err
		}
	}
	s.reserved += int64(size)
	return nil
}

func (s *lightSpan) ReleaseMemory(size int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	s.reserved -= int64(size)
	if s.owner != nil {
		s.owner.ReleaseMemory(size)
	}
}

func (s *lightSpan) Stat() network.ScopeStat {
	s.mu.Lock()
	defer s.mu.Unlock()
	return network.ScopeStat{Memory: s.reserved}
}

func (s *lightSpan) BeginSpan() (network.ResourceScopeSpan, error) {
	return &lightSpan{owner: s}, nil
}

// Done gives back what is still reserved; later calls are no-ops.
func (s *lightSpan) Done() { s.finish() }

// finish is Done, telling whether this call was the one that ended it.
func (s *lightSpan) finish() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return false
	}
	s.done = true
	if s.reserved != 0 && s.owner != nil {
		s.owner.ReleaseMemory(int(s.reserved))
		s.reserved = 0
	}
	return true
}

// fleetConn is a connection's scope: its reservations go to its node once
// the handshake has told which node it is.
type fleetConn struct {
	m *fleetResources
	lightSpan
}

var _ network.ConnManagementScope = (*fleetConn)(nil)

func (c *fleetConn) SetPeer(p peer.ID) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return network.ErrResourceScopeClosed
	}
	if c.owner != nil {
		return errors.New("back host: connection scope already has a peer")
	}
	fp := c.m.acquire(p)
	// What the connection reserved before the handshake named its node
	// moves to the node, as rcmgr's SetPeer does: Done gives everything
	// the connection holds back to the node, which must have had it.
	if c.reserved > 0 {
		if err := fp.ReserveMemory(int(c.reserved), network.ReservationPriorityAlways); err != nil {
			c.m.release(fp)
			return err
		}
	}
	c.owner = fp
	return nil
}

func (c *fleetConn) PeerScope() network.PeerScope {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fp, ok := c.owner.(*fleetPeer); ok {
		return fp
	}
	return nil // an untyped nil: the upgrader checks for it
}

// Done gives back what the connection still holds and its reference to
// its node. Its owner is set for good by then: SetPeer refuses a done
// scope.
func (c *fleetConn) Done() {
	if !c.finish() {
		return
	}
	if fp, ok := c.owner.(*fleetPeer); ok {
		c.m.release(fp)
	}
}

// fleetStream is a stream's scope: a span of its node's. Protocols and
// services keep no accounts here: every stream counts against its node.
type fleetStream struct {
	peer *fleetPeer
	dir  network.Direction
	lightSpan
}

var (
	_ network.StreamManagementScope = (*fleetStream)(nil)
	_ network.StreamScope           = (*fleetStream)(nil)
)

// Done gives back the stream's memory and its place in its node's count.
func (s *fleetStream) Done() {
	if !s.finish() {
		return
	}
	if s.dir == network.DirInbound {
		s.peer.streamsIn.Add(-1)
	} else {
		s.peer.streamsOut.Add(-1)
	}
	s.peer.m.release(s.peer)
}

func (s *fleetStream) PeerScope() network.PeerScope         { return s.peer }
func (s *fleetStream) ProtocolScope() network.ProtocolScope { return &network.NullScope{} }
func (s *fleetStream) ServiceScope() network.ServiceScope   { return &network.NullScope{} }
func (s *fleetStream) SetProtocol(protocol.ID) error        { return nil }
func (s *fleetStream) SetService(string) error              { return nil }
