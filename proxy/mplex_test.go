package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

// Which muxer a client ends up with: an mplex-only client (deployed
// js-ipfs) gets mplex, a client offering yamux first keeps yamux, and
// NoMplex turns mplex away.
func TestMplexNegotiation(t *testing.T) {
	for _, tc := range []struct {
		name    string
		noMplex bool
		client  []libp2p.Option
		want    string // muxer, or "" for a failed connection
	}{
		{"mplex only", false, []libp2p.Option{libp2p.Muxer(MplexID, mplexTransport{})}, MplexID},
		{"yamux then mplex", false, []libp2p.Option{libp2p.Muxer(yamux.ID, yamux.DefaultTransport), libp2p.Muxer(MplexID, mplexTransport{})}, yamux.ID},
		{"mplex then yamux", false, []libp2p.Option{libp2p.Muxer(MplexID, mplexTransport{}), libp2p.Muxer(yamux.ID, yamux.DefaultTransport)}, MplexID},
		{"mplex only, NoMplex", true, []libp2p.Option{libp2p.Muxer(MplexID, mplexTransport{})}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			front := newFront(t, FrontConfig{ListenAddrs: addrs(t, "/ip4/127.0.0.1/tcp/0"), NoMplex: tc.noMplex})
			c := client(t, nil, tc.client...)
			err := connectWithin(c, front, 5*time.Second)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("connected with mplex only although NoMplex is set (muxer %s)", c.Network().ConnsToPeer(front.ID())[0].ConnState().StreamMultiplexer)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			conns := c.Network().ConnsToPeer(front.ID())
			if len(conns) != 1 {
				t.Fatalf("%d connections, want 1", len(conns))
			}
			if got := string(conns[0].ConnState().StreamMultiplexer); got != tc.want {
				t.Fatalf("muxer %s, want %s", got, tc.want)
			}
			// Streams work both ways over it: ping out, identify back.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if r := <-ping.Ping(ctx, c, front.ID()); r.Error != nil {
				t.Fatalf("ping over %s: %v", tc.want, r.Error)
			}
		})
	}
}

// hostileMplex is a client-side muxer that negotiates mplex and then hands
// the raw secured connection to the test, which writes mplex frames into
// it and never reads.
type hostileMplex struct{ conns chan net.Conn }

func (h hostileMplex) NewConn(nc net.Conn, _ bool, _ network.PeerScope) (network.MuxedConn, error) {
	select {
	case h.conns <- nc:
	default:
	}
	return &deafConn{nc: nc, closed: make(chan struct{})}, nil
}

type deafConn struct {
	nc     net.Conn
	closed chan struct{}
}

func (c *deafConn) Close() error {
	select {
	case <-c.closed:
	default:
		close(c.closed)
	}
	return c.nc.Close()
}
func (c *deafConn) CloseWithError(network.ConnErrorCode) error { return c.Close() }
func (c *deafConn) IsClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}
func (c *deafConn) OpenStream(context.Context) (network.MuxedStream, error) {
	return nil, errors.New("deaf")
}
func (c *deafConn) AcceptStream() (network.MuxedStream, error) {
	<-c.closed
	return nil, errors.New("closed")
}
func (c *deafConn) As(any) bool { return false }

// smallReceiveBuffer dials with a 4 KiB socket receive buffer, so what
// Kitsune writes to a peer that does not read backs up in Kitsune, not in
// the kernel's buffers.
func smallReceiveBuffer(ma.Multiaddr) (tcp.ContextDialer, error) {
	return &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		return errors.Join(err, serr)
	}}, nil
}

func heapAndGoroutines() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, runtime.NumGoroutine()
}

// A peer on mplex opens streams in a loop, far over the per-peer stream
// limit, and never reads its connection. Every refused stream is reset,
// and go-mplex sends each reset from a goroutine that waits for the
// stalled writer: unguarded, each 4-byte frame leaves a goroutine on
// Kitsune until go-mplex gives up after two minutes. The guard closes the
// connection once 256 resets are waiting, so heap and goroutines stay
// under a ceiling and return to baseline.
func TestMplexFloodIsBounded(t *testing.T) {
	const (
		floodStreams   = 400_000
		heapCeiling    = 48 << 20
		goroutineSlack = 4000 // the per-peer stream limit, pending resets, the hosts' own
	)
	front := newFront(t, FrontConfig{ListenAddrs: addrs(t, "/ip4/127.0.0.1/tcp/0")})
	baseHeap, baseG := heapAndGoroutines()

	run := func(t *testing.T, frames func(nc net.Conn) error) (peakHeap uint64, peakG int) {
		conns := make(chan net.Conn, 1)
		deadline := make(chan struct{})
		timeout := time.AfterFunc(60*time.Second, func() { close(deadline) })
		defer timeout.Stop()
		c, err := libp2p.New(
			libp2p.NoListenAddrs,
			libp2p.Transport(tcp.NewTCPTransport, tcp.WithDialerForAddr(smallReceiveBuffer)),
			libp2p.Muxer(MplexID, hostileMplex{conns: conns}),
			libp2p.ResourceManager(&network.NullResourceManager{}),
			libp2p.DisableRelay(),
			libp2p.DisableMetrics(),
		)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := connect(c, front); err != nil {
			t.Fatal(err)
		}
		nc := <-conns
		// The flood is over when Kitsune has dropped the connection: the
		// frames may sit in socket buffers long after the writes return.
		done := make(chan error, 1)
		go func() {
			err := frames(nc)
			for front.Network().Connectedness(c.ID()) == network.Connected {
				select {
				case <-deadline:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
			done <- err
		}()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		sample := func() {
			h, g := heapAndGoroutines()
			peakHeap, peakG = max(peakHeap, h), max(peakG, g)
		}
		for {
			select {
			case err := <-done:
				sample()
				t.Logf("flood ended: %v; peak heap %.1f MiB over baseline, peak goroutines %d over baseline",
					err, float64(int64(peakHeap)-int64(baseHeap))/(1<<20), peakG-baseG)
				return peakHeap, peakG
			case <-tick.C:
				sample()
			case <-deadline:
				_ = nc.Close()
				t.Fatalf("Kitsune still holds the flooding peer's connection after 60 s; peak heap %.1f MiB over baseline, peak goroutines %d over baseline",
					float64(int64(peakHeap)-int64(baseHeap))/(1<<20), peakG-baseG)
			}
		}
	}
	check := func(t *testing.T, peakHeap uint64, peakG int) {
		t.Helper()
		if peakHeap > baseHeap+heapCeiling {
			t.Errorf("heap peaked at %.1f MiB over baseline, ceiling %d MiB", float64(peakHeap-baseHeap)/(1<<20), heapCeiling>>20)
		}
		if peakG > baseG+goroutineSlack {
			t.Errorf("goroutines peaked at %d over baseline, ceiling %d", peakG-baseG, goroutineSlack)
		}
		// Back to baseline once the peer is gone.
		var h uint64
		var g int
		for range 100 {
			if h, g = heapAndGoroutines(); g <= baseG+20 && h <= baseHeap+8<<20 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if g > baseG+20 || h > baseHeap+8<<20 {
			t.Errorf("after the flood: %d goroutines (baseline %d), heap %.1f MiB (baseline %.1f MiB)", g, baseG, float64(h)/(1<<20), float64(baseHeap)/(1<<20))
		}
	}

	t.Run("streams", func(t *testing.T) {
		peakHeap, peakG := run(t, func(nc net.Conn) error {
			buf := make([]byte, 0, 64<<10)
			for id := uint64(0); id < floodStreams; id++ {
				buf = binary.AppendUvarint(buf, id<<3) // NewStream, initiator
				buf = binary.AppendUvarint(buf, 0)     // no name
				if len(buf) > 60<<10 || id == floodStreams-1 {
					if _, err := nc.Write(buf); err != nil {
						return fmt.Errorf("after %d streams: %w", id, err)
					}
					buf = buf[:0]
				}
			}
			return nil
		})
		check(t, peakHeap, peakG)
	})

}

// A stream Kitsune resets while the peer's data for it is still queued
// must not keep that data's buffer: go-mplex gives a connection at most
// four inbound buffers and returns a queued one only on a later Read, which
// never comes after a reset. With four lost, the connection stops reading
// for a minute and dies. A peer (js-ipfs) whose streams Kitsune resets
// mid-message, which the Bitswap stream guard does, must keep a working
// connection.
func TestMplexResetStreamsFreeTheirBuffers(t *testing.T) {
	front := newFront(t, FrontConfig{ListenAddrs: addrs(t, "/ip4/127.0.0.1/tcp/0")})
	const proto = "/kitsune/test/reset-after-one-byte"
	handled := make(chan struct{}, 64)
	front.SetStreamHandler(proto, func(s network.Stream) {
		var b [1]byte
		_, _ = s.Read(b[:])
		// Let the rest of the peer's data arrive and queue up.
		time.Sleep(100 * time.Millisecond)
		_ = s.Reset()
		handled <- struct{}{}
	})
	c := client(t, nil, libp2p.Muxer(MplexID, mplexTransport{}))
	if err := connect(c, front); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	data := make([]byte, 64<<10)
	for i := range 12 {
		s, err := c.NewStream(ctx, front.ID(), proto)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		_ = s.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = s.Write(data) // may be cut short by the reset
		select {
		case <-handled:
		case <-ctx.Done():
			t.Fatalf("stream %d never reached the handler: the connection stopped reading", i)
		}
		_ = s.Reset()
	}
	// The connection still carries new streams at once.
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	if r := <-ping.Ping(pctx, c, front.ID()); r.Error != nil {
		t.Fatalf("ping after 12 reset streams: %v", r.Error)
	}
}
