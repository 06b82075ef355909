package bitswap

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"go.uber.org/zap/zaptest"
)

func testPeers(n int) []peer.ID {
	ps := make([]peer.ID, n)
	for i := range ps {
		ps[i] = peer.ID(fmt.Sprintf("peer-%d", i))
	}
	return ps
}

func TestGreetBookSteps(t *testing.T) {
	const confirmed, retry = time.Minute, 5 * time.Second
	t0 := time.Unix(1_000_000, 0)
	ps := testPeers(3)
	a, b, c := ps[0], ps[1], ps[2]
	type step struct {
		name     string
		do       func(*greetBook) greetActions
		greet    []peer.ID
		check    bool
		overflow bool
	}
	at := func(s time.Duration) time.Time { return t0.Add(s) }
	steps := []step{
		{"first peer before any check: it waits, the fleet is checked", func(g *greetBook) greetActions { return g.connected(a, at(0)) }, nil, true, false},
		{"second peer waits for the same check", func(g *greetBook) greetActions { return g.connected(b, at(0)) }, nil, false, false},
		{"a third cannot wait: the queue is full", func(g *greetBook) greetActions { return g.connected(c, at(0)) }, nil, false, true},
		{"check fails: nobody greeted", func(g *greetBook) greetActions { return g.checked(false, at(1*time.Second)) }, nil, false, false},
		{"no new check before the retry delay", func(g *greetBook) greetActions { return g.tick(at(2 * time.Second)) }, nil, false, false},
		{"a node joining is a reason to check before the delay", func(g *greetBook) greetActions { return g.nodeUp(at(3 * time.Second)) }, nil, true, false},
		{"but only one check at a time", func(g *greetBook) greetActions { return g.nodeUp(at(3 * time.Second)) }, nil, false, false},
		{"failed again", func(g *greetBook) greetActions { return g.checked(false, at(4*time.Second)) }, nil, false, false},
		{"retry after the delay", func(g *greetBook) greetActions { return g.tick(at(9 * time.Second)) }, nil, true, false},
		{"check passes: the waiting are greeted", func(g *greetBook) greetActions { return g.checked(true, at(8*time.Second)) }, []peer.ID{a, b}, false, false},
		{"a node joining changes nothing while confirmed", func(g *greetBook) greetActions { return g.nodeUp(at(8 * time.Second)) }, nil, false, false},
		{"a new peer is greeted at once, inside its connection's notification", func(g *greetBook) greetActions { return g.connected(c, at(9*time.Second)) }, []peer.ID{c}, false, false},
		{"once per peer", func(g *greetBook) greetActions { return g.connected(a, at(10*time.Second)) }, nil, false, false},
		{"a reconnecting peer is greeted again", func(g *greetBook) greetActions {
			g.gone(a)
			return g.connected(a, at(11*time.Second))
		}, []peer.ID{a}, false, false},
		{"no renewal before half the confirmation", func(g *greetBook) greetActions { return g.tick(at(8*time.Second + confirmed/2 - time.Second)) }, nil, false, false},
		{"renewed at half its life, greeting goes on meanwhile", func(g *greetBook) greetActions {
			acts := g.tick(at(8*time.Second + confirmed/2))
			g.gone(b)
			more := g.connected(b, at(9*time.Second+confirmed/2))
			acts.greet = more.greet
			return acts
		}, []peer.ID{b}, true, false},
		{"a renewal that fails stops greeting at once", func(g *greetBook) greetActions {
			g.checked(false, at(10*time.Second+confirmed/2))
			g.gone(b)
			return g.connected(b, at(11*time.Second+confirmed/2))
		}, nil, false, false},
		{"an unrenewed confirmation expires", func(g *greetBook) greetActions {
			g2 := newGreetBook(confirmed, retry, 2)
			g2.checked(true, at(0))
			g2.checking = true // a renewal hangs
			return g2.connected(a, at(confirmed))
		}, nil, false, false},
	}
	g := newGreetBook(confirmed, retry, 2)
	for _, s := range steps {
		got := s.do(g)
		slices.Sort(got.greet)
		if !slices.Equal(got.greet, s.greet) || got.check != s.check || got.overflow != s.overflow {
			t.Fatalf("%s: got greet %v check %v overflow %v, want greet %v check %v overflow %v",
				s.name, got.greet, got.check, got.overflow, s.greet, s.check, s.overflow)
		}
	}
}

// Random event sequences: a peer is greeted at most once per connection,
// only while a check is fresh, and the tables empty once everyone left.
func TestGreetBookRandom(t *testing.T) {
	const confirmed, retry = 30 * time.Second, 2 * time.Second
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 1))
		g := newGreetBook(confirmed, retry, 8)
		ps := testPeers(12)
		now := time.Unix(0, 0)
		connected := map[peer.ID]bool{}
		greetedThisConn := map[peer.ID]bool{}
		var lastOK time.Time
		checking := false
		apply := func(a greetActions) {
			for _, p := range a.greet {
				if !connected[p] {
					t.Fatalf("seed %d: greeted %s, not connected", seed, p)
				}
				if greetedThisConn[p] {
					t.Fatalf("seed %d: greeted %s twice on one connection", seed, p)
				}
				if lastOK.IsZero() || now.Sub(lastOK) >= confirmed {
					t.Fatalf("seed %d: greeted %s without a fresh check", seed, p)
				}
				greetedThisConn[p] = true
			}
			if a.check {
				if checking {
					t.Fatalf("seed %d: two checks at once", seed)
				}
				checking = true
			}
		}
		for range 400 {
			now = now.Add(time.Duration(rng.IntN(4000)) * time.Millisecond)
			p := ps[rng.IntN(len(ps))]
			switch rng.IntN(5) {
			case 0, 1:
				connected[p] = true
				apply(g.connected(p, now))
			case 2:
				connected[p] = false
				greetedThisConn[p] = false
				g.gone(p)
			case 3:
				if checking {
					checking = false
					ok := rng.IntN(3) != 0
					if ok {
						lastOK = now
					}
					apply(g.checked(ok, now))
				}
			case 4:
				if rng.IntN(2) == 0 {
					apply(g.tick(now))
				} else {
					apply(g.nodeUp(now))
				}
			}
			if len(g.waiting) > 8 || len(g.greeted)+len(g.waiting) > len(ps) {
				t.Fatalf("seed %d: tables %d waiting %d greeted", seed, len(g.waiting), len(g.greeted))
			}
		}
		for _, p := range ps {
			g.gone(p)
		}
		if len(g.waiting) != 0 || len(g.greeted) != 0 {
			t.Fatalf("seed %d: tables not empty after every peer left: %d waiting, %d greeted", seed, len(g.waiting), len(g.greeted))
		}
	}
}

// presenceLog records the HAVEs a peer's Bitswap network received.
type presenceLog struct {
	mu       sync.Mutex
	msgs     int
	haves    []cid.Cid
	other    int // blocks, wants, DONT_HAVEs
	protocol protocol.ID
}

func (l *presenceLog) ReceiveMessage(_ context.Context, _ peer.ID, msg bsmsg.BitSwapMessage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs++
	l.haves = append(l.haves, msg.Haves()...)
	l.other += len(msg.Blocks()) + len(msg.Wantlist()) + len(msg.DontHaves())
}
func (l *presenceLog) ReceiveError(error)       {}
func (l *presenceLog) PeerConnected(peer.ID)    {}
func (l *presenceLog) PeerDisconnected(peer.ID) {}

func (l *presenceLog) snapshot() (msgs int, haves []cid.Cid, other int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.msgs, slices.Clone(l.haves), l.other
}

// greetEnv is a front host with a greeter, and the fleet's answer to the
// greeter's check.
type greetEnv struct {
	front   *Greeter
	holds   func() (bool, error)
	checked chan cid.Cid
}

func newGreetEnv(t *testing.T, holds func() (bool, error)) (*greetEnv, func() peer.AddrInfo) {
	t.Helper()
	h := newHost(t)
	e := &greetEnv{holds: holds, checked: make(chan cid.Cid, 64)}
	g, err := NewGreeter(GreetConfig{CheckHolds: func(ctx context.Context, c cid.Cid) (bool, error) {
		e.checked <- c
		return e.holds()
	}, Retry: 50 * time.Millisecond}, h, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	e.front = g
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.front.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return e, func() peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }
}

// A peer speaking Bitswap 1.2.0 gets exactly one HAVE for the checked
// block; one speaking only 1.1.0 gets nothing.
func TestGreeterSendsOneTrueHave(t *testing.T) {
	e, front := newGreetEnv(t, func() (bool, error) { return true, nil })

	modern := newHost(t)
	mlog := &presenceLog{}
	mnet := bsnet.NewFromIpfsHost(modern)
	mnet.Start(mlog)
	t.Cleanup(mnet.Stop)

	old := newHost(t)
	olog := &presenceLog{}
	onet := bsnet.NewFromIpfsHost(old, bsnet.SupportedProtocols([]protocol.ID{"/ipfs/bitswap/1.1.0", "/ipfs/bitswap/1.0.0"}))
	onet.Start(olog)
	t.Cleanup(onet.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, h := range []interface {
		Connect(context.Context, peer.AddrInfo) error
	}{modern, old} {
		if err := h.Connect(ctx, front()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, func() string { return "a greeting and a skipped peer" }, func() bool {
		return e.front.Counters().Greeted.Load() == 1 && e.front.Counters().Skipped.Load() >= 1
	})
	if c := <-e.checked; !c.Equals(EmptyDirCID) {
		t.Fatalf("checked %s, want the empty directory", c)
	}
	// Time for anything else to arrive: still one message.
	holds(t, 300*time.Millisecond, func() string { return "more than one greeting per connection" }, func() bool {
		n, _, _ := mlog.snapshot()
		return n <= 1
	})
	n, haves, other := mlog.snapshot()
	if n != 1 || len(haves) != 1 || !haves[0].Equals(EmptyDirCID) || other != 0 {
		t.Fatalf("modern peer got %d messages, HAVEs %v, %d other entries; want one HAVE for %s", n, haves, other, EmptyDirCID)
	}
	if n, _, _ := olog.snapshot(); n != 0 {
		t.Fatalf("a Bitswap 1.1.0 peer got %d messages", n)
	}
	// Reconnected: a new session on the client side, greeted again.
	if err := modern.Network().ClosePeer(front().ID); err != nil {
		t.Fatal(err)
	}
	if err := modern.Connect(ctx, front()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() string { return "a second greeting after reconnecting" }, func() bool {
		n, _, _ := mlog.snapshot()
		return n == 2
	})
}

// No HAVE without a confirmed block: a fleet without it, or a check that
// fails, greets nobody; once it holds the block, the waiting peer is
// greeted.
func TestGreeterNeedsTheFleetToHoldTheBlock(t *testing.T) {
	var mu sync.Mutex
	answer := func() (bool, error) { return false, errors.New("no healthy node") }
	e, front := newGreetEnv(t, func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return answer()
	})
	p := newHost(t)
	plog := &presenceLog{}
	pnet := bsnet.NewFromIpfsHost(p)
	pnet.Start(plog)
	t.Cleanup(pnet.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Connect(ctx, front()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() string { return "two failed checks" }, func() bool {
		return e.front.Counters().NotHeld.Load() >= 2
	})
	mu.Lock()
	answer = func() (bool, error) { return false, nil }
	mu.Unlock()
	eventually(t, 10*time.Second, func() string { return "a check finding the block missing" }, func() bool {
		return e.front.Counters().NotHeld.Load() >= 3
	})
	if n, _, _ := plog.snapshot(); n != 0 {
		t.Fatalf("greeted with an unconfirmed HAVE (%d messages)", n)
	}
	mu.Lock()
	answer = func() (bool, error) { return true, nil }
	mu.Unlock()
	eventually(t, 10*time.Second, func() string { return "the waiting peer greeted" }, func() bool {
		n, _, _ := plog.snapshot()
		return n == 1
	})
}
