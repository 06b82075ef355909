package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/kitsune-lb/kitsune/internal/testkit"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	ma "github.com/multiformats/go-multiaddr"
)

// fleetStat is the back host's account of one node.
func fleetStat(h host.Host, p peer.ID) (st network.ScopeStat) {
	_ = h.Network().ResourceManager().ViewPeer(p, func(s network.PeerScope) error {
		st = s.Stat()
		return nil
	})
	return st
}

// A node may hold only so many streams open to the back host: the one
// past the cap is reset, and a slot freed is a slot for the next.
func TestBackHostCapsNodeStreams(t *testing.T) {
	const proto = "/kitsune/test/hold"
	back, err := newBackHost(BackConfig{Key: newKey(t)}, newFleetResources(fleetLimits{streamsIn: 2, memory: 64 << 20}))
	if err != nil {
		t.Fatal(err)
	}
	negotiateWithoutDeadline(back)
	t.Cleanup(func() { _ = back.Close() })
	held := make(chan network.Stream, 3)
	back.SetStreamHandler(proto, func(s network.Stream) { held <- s })
	node := client(t, nil, libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err := connect(back, node); err != nil {
		t.Fatal(err)
	}
	// Identify's streams come and go on their own; wait for them.
	testkit.Eventually(t, 10*time.Second, func() string {
		return fmt.Sprintf("identify's streams to end: %+v", fleetStat(back, node.ID()))
	}, func() bool { return fleetStat(back, node.ID()).NumStreamsInbound == 0 })

	// open writes a byte on a new stream and waits for the back host's
	// handler to take it, or for the stream to fail.
	// It returns the back host's end.
	open := func() (network.Stream, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := node.NewStream(ctx, back.ID(), proto)
		if err != nil {
			return nil, err
		}
		if _, err := s.Write([]byte{1}); err != nil {
			return nil, err
		}
		select {
		case bs := <-held:
			return bs, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-readErr(s):
			return nil, err
		}
	}
	first, err := open()
	if err != nil {
		t.Fatalf("first stream: %v", err)
	}
	if _, err := open(); err != nil {
		t.Fatalf("second stream: %v", err)
	}
	if _, err := open(); err == nil {
		t.Fatal("a third stream got through a cap of two")
	}
	_ = first.Reset() // the back host is done with it
	testkit.Eventually(t, 10*time.Second, testkit.Say("the first stream's slot to free"), func() bool {
		return fleetStat(back, node.ID()).NumStreamsInbound < 2
	})
	if _, err := open(); err != nil {
		t.Fatalf("a stream after one was freed: %v", err)
	}
}

// readErr reports the error that ends reading s (the back host resetting
// it); a stream the back host holds open reports nothing.
func readErr(s network.Stream) <-chan error {
	c := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(s)
		if err == nil {
			err = io.EOF
		}
		c <- err
	}()
	return c
}

// The back host listens nowhere; its resource manager also refuses any
// inbound connection, so its peers are only the nodes it dialled.
func TestFleetResourcesRefuseInbound(t *testing.T) {
	m := newFleetResources(defaultFleetLimits)
	if _, err := m.OpenConnection(network.DirInbound, true, ma.StringCast("/ip4/192.0.2.1/tcp/4001")); !errors.Is(err, errInboundConn) {
		t.Fatalf("inbound connection: got %v, want it refused", err)
	}
	c, err := m.OpenConnection(network.DirOutbound, true, ma.StringCast("/ip4/192.0.2.1/tcp/4001"))
	if err != nil {
		t.Fatalf("outbound connection: %v", err)
	}
	c.Done()
}

// One node's streams and connections share one memory budget; whatever a
// stream, span or connection still holds when it ends is given back, and
// a node with nothing open leaves no account behind.
func TestFleetResourcesMemoryPerNode(t *testing.T) {
	const limit = 1024
	m := newFleetResources(fleetLimits{streamsIn: 4, memory: limit})
	p, other := peer.ID("node-a"), peer.ID("node-b")
	conn, err := m.OpenConnection(network.DirOutbound, true, ma.StringCast("/ip4/192.0.2.1/tcp/4001"))
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.SetPeer(p); err != nil {
		t.Fatal(err)
	}
	s1, err := m.OpenStream(p, network.DirInbound)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := m.OpenStream(p, network.DirInbound)
	if err != nil {
		t.Fatal(err)
	}
	so, err := m.OpenStream(other, network.DirInbound)
	if err != nil {
		t.Fatal(err)
	}
	span, err := conn.PeerScope().BeginSpan() // as yamux does for a stream
	if err != nil {
		t.Fatal(err)
	}
	always := network.ReservationPriorityAlways
	mustReserve := func(s network.ResourceScope, n int) {
		t.Helper()
		if err := s.ReserveMemory(n, always); err != nil {
			t.Fatalf("reserve %d: %v", n, err)
		}
	}
	mustReserve(s1, 600)
	mustReserve(span, 200)
	mustReserve(conn, 100)
	// rcmgr's priorities: window growth (128) only below half the budget.
	if err := s2.ReserveMemory(1, 128); !errors.Is(err, network.ErrResourceLimitExceeded) {
		t.Fatalf("reserving at priority 128 past half the budget: got %v", err)
	}
	if err := s2.ReserveMemory(limit-900+1, always); !errors.Is(err, network.ErrResourceLimitExceeded) {
		t.Fatalf("reserving past the node's budget: got %v", err)
	}
	mustReserve(so, limit) // another node's budget is its own
	mustReserve(s2, limit-900)
	if got := fleetStat2(m, p).Memory; got != limit {
		t.Fatalf("node holds %d, want %d", got, limit)
	}

	s1.Done()
	s1.Done()             // twice: given back once
	s1.ReleaseMemory(600) // after Done: nothing more to give
	span.Done()
	if st := fleetStat2(m, p); st.Memory != limit-800 || st.NumStreamsInbound != 1 {
		t.Fatalf("after a stream and a span ended: %+v, want %d bytes and one stream", st, limit-800)
	}
	s2.Done()
	conn.Done()
	so.Done()
	if left := accountedNodes(m); left != 0 {
		t.Fatalf("%d nodes still accounted with nothing open", left)
	}
}

// Memory a connection reserves before the handshake names its node
// (none today over TCP, but the scope allows it) moves to the node when it
// is named, and goes back from there: the node's account never goes below
// what its streams hold.
func TestFleetConnCarriesEarlyReservationsToItsNode(t *testing.T) {
	m := newFleetResources(fleetLimits{streamsIn: 4, memory: 1024})
	p := peer.ID("node-a")
	s, err := m.OpenStream(p, network.DirInbound) // keeps the node's account open
	if err != nil {
		t.Fatal(err)
	}
	conn, err := m.OpenConnection(network.DirOutbound, true, ma.StringCast("/ip4/192.0.2.1/tcp/4001"))
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.ReserveMemory(100, network.ReservationPriorityAlways); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetPeer(p); err != nil {
		t.Fatal(err)
	}
	if got := fleetStat2(m, p).Memory; got != 100 {
		t.Fatalf("node holds %d once the connection is named, want its 100", got)
	}
	conn.ReleaseMemory(40)
	if got := fleetStat2(m, p).Memory; got != 60 {
		t.Fatalf("node holds %d after the connection gave back 40, want 60", got)
	}
	conn.Done()
	if got := fleetStat2(m, p).Memory; got != 0 {
		t.Fatalf("node holds %d after the connection ended, want 0", got)
	}
	s.Done()

	// A node without room for the early reservation: the connection is
	// refused its peer, and the node's account is let go.
	full := newFleetResources(fleetLimits{streamsIn: 4, memory: 64})
	conn, err = full.OpenConnection(network.DirOutbound, true, ma.StringCast("/ip4/192.0.2.1/tcp/4001"))
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.ReserveMemory(100, network.ReservationPriorityAlways); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetPeer(p); !errors.Is(err, network.ErrResourceLimitExceeded) {
		t.Fatalf("naming a node without room for the connection's 100 bytes: got %v", err)
	}
	conn.Done()
	if left := accountedNodes(full); left != 0 {
		t.Fatalf("%d nodes still accounted after a refused connection ended", left)
	}
}

// accountedNodes is how many nodes m keeps an account for.
func accountedNodes(m *fleetResources) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.peers)
}

func fleetStat2(m *fleetResources, p peer.ID) (st network.ScopeStat) {
	_ = m.ViewPeer(p, func(s network.PeerScope) error {
		st = s.Stat()
		return nil
	})
	return st
}

// The front host's yamux streams reserve their window growth straight in
// the connection's peer scope (muxer.go) instead of a span of go-libp2p's:
// the peer's limit still holds, the peer's account shows what they hold,
// and a stream's end gives it back.
func TestLightSpanKeepsPeerLimit(t *testing.T) {
	limits := rcmgr.PartialLimitConfig{
		PeerDefault: rcmgr.ResourceLimits{Memory: 1 << 20},
	}.Build(rcmgr.DefaultLimits.AutoScale())
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits), rcmgr.WithMetricsDisabled())
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()
	conn, err := rm.OpenConnection(network.DirInbound, true, ma.StringCast("/ip4/192.0.2.1/tcp/4001"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Done()
	p := peer.ID("client")
	if err := conn.SetPeer(p); err != nil {
		t.Fatal(err)
	}
	peerMemory := func() (n int64) {
		_ = rm.ViewPeer(p, func(s network.PeerScope) error {
			n = s.Stat().Memory
			return nil
		})
		return n
	}
	a, b := &lightSpan{owner: conn.PeerScope()}, &lightSpan{owner: conn.PeerScope()}
	if err := a.ReserveMemory(768<<10, network.ReservationPriorityAlways); err != nil {
		t.Fatal(err)
	}
	if err := b.ReserveMemory(512<<10, network.ReservationPriorityAlways); !errors.Is(err, network.ErrResourceLimitExceeded) {
		t.Fatalf("past the peer's limit: got %v", err)
	}
	if err := b.ReserveMemory(128<<10, network.ReservationPriorityAlways); err != nil {
		t.Fatal(err)
	}
	if got := peerMemory(); got != 896<<10 {
		t.Fatalf("peer scope holds %d, want %d", got, 896<<10)
	}
	a.Done()
	b.ReleaseMemory(64 << 10)
	b.Done()
	b.Done()
	if err := b.ReserveMemory(1, network.ReservationPriorityAlways); err == nil {
		t.Fatal("a span took memory after it was done")
	}
	if got := peerMemory(); got != 0 {
		t.Fatalf("peer scope holds %d after its spans ended", got)
	}
}

// What a node's message costs the back host: a stream opened by the node,
// one 1 KiB message read through a memory reservation, both ends closed,
// as Kubo sends every reply. go-libp2p's resource manager (with the
// limits the back host had) against the fleet's, and go-libp2p's
// negotiation against negotiateWithoutDeadline's.
func BenchmarkBackHostNodeStream(b *testing.B) {
	stock := func(tb testing.TB) network.ResourceManager {
		limits := rcmgr.DefaultLimits
		libp2p.SetDefaultServiceLimits(&limits)
		rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()), rcmgr.WithMetricsDisabled())
		if err != nil {
			tb.Fatal(err)
		}
		return rm
	}
	fleet := func(testing.TB) network.ResourceManager { return newFleetResources(defaultFleetLimits) }
	for _, tc := range []struct {
		name     string
		rm       func(testing.TB) network.ResourceManager
		deadline bool
	}{
		{"rcmgr", stock, true},
		{"fleet", fleet, true},
		{"fleet-nodeadline", fleet, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			const proto = "/kitsune/test/msg"
			back, err := newBackHost(BackConfig{Key: newKey(b)}, tc.rm(b))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = back.Close() })
			if !tc.deadline {
				negotiateWithoutDeadline(back)
			}
			done := make(chan error, 1)
			back.SetStreamHandler(proto, func(s network.Stream) {
				msg := make([]byte, 1024)
				err := s.Scope().ReserveMemory(len(msg), network.ReservationPriorityHigh)
				if err == nil {
					_, err = io.ReadFull(s, msg)
					s.Scope().ReleaseMemory(len(msg))
				}
				if err == nil {
					err = s.Close()
				}
				done <- err
			})
			node := client(b, nil, libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
			if err := connect(back, node); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			msg := make([]byte, 1024)
			b.ReportAllocs()
			cpu0 := cpuTime(b)
			for b.Loop() {
				s, err := node.NewStream(ctx, back.ID(), proto)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.Write(msg); err != nil {
					b.Fatal(err)
				}
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			}
			// Both hosts run in this process; the node's side is the same
			// in every case.
			b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// cpuTime is the CPU time this process has used.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
