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
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
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
			g2 := newGreetBook(GreetConfig{Confirmed: confirmed, Retry: retry, MaxWaiting: 2})
			g2.checked(true, at(0))
			g2.checking = true // a renewal hangs
			return g2.connected(a, at(confirmed))
		}, nil, false, false},
	}
	g := newGreetBook(GreetConfig{Confirmed: confirmed, Retry: retry, MaxWaiting: 2})
	for _, s := range steps {
		got := s.do(g)
		slices.Sort(got.greet)
		if !slices.Equal(got.greet, s.greet) || got.check != s.check || got.overflow != s.overflow {
			t.Fatalf("%s: got greet %v check %v overflow %v, want greet %v check %v overflow %v",
				s.name, got.greet, got.check, got.overflow, s.greet, s.check, s.overflow)
		}
	}
}

// A greeting that fails is sent again with a doubling backoff while the
// peer stays connected and a check is fresh, a bounded number of times;
// one that succeeds, or a peer leaving, ends the retries.
func TestGreetBookRetries(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ms := time.Millisecond
	ps := testPeers(3)
	a, b, c := ps[0], ps[1], ps[2]
	cfg := GreetConfig{Confirmed: time.Minute, Retry: 5 * time.Second, MaxWaiting: 2, RetryFirst: 100 * ms, MaxRetries: 3}
	type step struct {
		name    string
		do      func(*greetBook) (greetActions, greetFailure)
		greet   []peer.ID
		retries int
		failure greetFailure // checked when the step reports a failure
		next    time.Duration
	}
	fail := func(p peer.ID, d time.Duration) func(*greetBook) (greetActions, greetFailure) {
		return func(g *greetBook) (greetActions, greetFailure) { return greetActions{}, g.failed(p, at(d)) }
	}
	tick := func(d time.Duration) func(*greetBook) (greetActions, greetFailure) {
		return func(g *greetBook) (greetActions, greetFailure) { return g.tick(at(d)), -1 }
	}
	steps := []step{
		{"confirmed, a and b greeted at once", func(g *greetBook) (greetActions, greetFailure) {
			g.checked(true, at(0))
			x := g.connected(a, at(0))
			y := g.connected(b, at(0))
			x.greet = append(x.greet, y.greet...)
			return x, -1
		}, []peer.ID{a, b}, 0, -1, 0},
		{"a's greeting fails: retried after 100 ms", fail(a, 10*ms), nil, 0, greetRetrying, 110 * ms},
		{"not before", tick(109 * ms), nil, 0, -1, 110 * ms},
		{"then", tick(110 * ms), []peer.ID{a}, 1, -1, 0},
		{"once only while it is out", tick(500 * ms), nil, 0, -1, 0},
		{"fails again: 200 ms", fail(a, 600*ms), nil, 0, greetRetrying, 800 * ms},
		{"b fails too: its own 100 ms", fail(b, 700*ms), nil, 0, greetRetrying, 800 * ms},
		{"both due", tick(800 * ms), []peer.ID{a, b}, 2, -1, 0},
		{"b got through: its retries end", func(g *greetBook) (greetActions, greetFailure) { g.sent(b); return greetActions{}, -1 }, nil, 0, -1, 0},
		{"a's third failure: 400 ms", fail(a, 900*ms), nil, 0, greetRetrying, 1300 * ms},
		{"no retry without a fresh check", func(g *greetBook) (greetActions, greetFailure) {
			g.checking = true
			g.checked(false, at(1000*ms))
			return g.tick(at(1300 * ms)), -1
		}, nil, 0, -1, 0},
		{"the check passing sends what is due", func(g *greetBook) (greetActions, greetFailure) {
			return g.checked(true, at(1400*ms)), -1
		}, []peer.ID{a}, 1, -1, 0},
		{"a's fourth failure is past MaxRetries: given up", fail(a, 1500*ms), nil, 0, greetGaveUp, 0},
		{"a peer that left is not retried", func(g *greetBook) (greetActions, greetFailure) {
			g.connected(c, at(1600*ms))
			g.gone(c)
			return greetActions{}, g.failed(c, at(1600*ms))
		}, nil, 0, greetForgotten, 0},
		{"leaving ends pending retries", func(g *greetBook) (greetActions, greetFailure) {
			g.connected(c, at(1700*ms))
			f := g.failed(c, at(1700*ms))
			g.gone(c)
			return g.tick(at(5 * time.Second)), f
		}, nil, 0, greetRetrying, 0},
		{"at most MaxWaiting retrying", func(g *greetBook) (greetActions, greetFailure) {
			for _, p := range ps {
				g.connected(p, at(6*time.Second))
			}
			g.failed(a, at(6*time.Second))
			g.failed(b, at(6*time.Second))
			return greetActions{}, g.failed(c, at(6*time.Second))
		}, nil, 0, greetGaveUp, 6*time.Second + 100*ms},
	}
	g := newGreetBook(cfg)
	for _, s := range steps {
		got, f := s.do(g)
		slices.Sort(got.greet)
		if !slices.Equal(got.greet, s.greet) || got.retries != s.retries {
			t.Fatalf("%s: greet %v (%d retries), want %v (%d)", s.name, got.greet, got.retries, s.greet, s.retries)
		}
		if s.failure >= 0 && f != s.failure {
			t.Fatalf("%s: failure handled as %v, want %v", s.name, f, s.failure)
		}
		var want time.Time
		if s.next > 0 {
			want = at(s.next)
		}
		if next := g.nextRetry(at(s.next)); !next.Equal(want) {
			t.Fatalf("%s: next retry at %v, want %v", s.name, next.Sub(t0), s.next)
		}
	}
	for _, p := range ps {
		g.gone(p)
	}
	if len(g.retrying) != 0 {
		t.Fatalf("%d peers still retrying after every peer left", len(g.retrying))
	}
}

// Random event sequences: a peer is greeted once per connection, again
// only after a failure and at most MaxRetries times, only while a check is
// fresh, and the tables stay bounded and empty once everyone left.
func TestGreetBookRandom(t *testing.T) {
	const confirmed, retry = 30 * time.Second, 2 * time.Second
	retried := 0
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 1))
		const maxRetries = 3
		g := newGreetBook(GreetConfig{Confirmed: confirmed, Retry: retry, MaxWaiting: 8, RetryFirst: 300 * time.Millisecond, MaxRetries: maxRetries})
		ps := testPeers(12)
		now := time.Unix(0, 0)
		connected := map[peer.ID]bool{}
		greetedThisConn := map[peer.ID]bool{}
		out := map[peer.ID]bool{}     // a greeting on its way
		failures := map[peer.ID]int{} // on this connection
		var lastOK time.Time
		checking := false
		apply := func(a greetActions) {
			retried += a.retries
			for _, p := range a.greet {
				if !connected[p] {
					t.Fatalf("seed %d: greeted %s, not connected", seed, p)
				}
				if out[p] {
					t.Fatalf("seed %d: greeted %s while a greeting was out", seed, p)
				}
				if greetedThisConn[p] && failures[p] == 0 {
					t.Fatalf("seed %d: greeted %s twice on one connection without a failure", seed, p)
				}
				if failures[p] > maxRetries {
					t.Fatalf("seed %d: greeted %s after %d failures", seed, p, failures[p])
				}
				out[p] = true
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
			switch rng.IntN(6) {
			case 0, 1:
				connected[p] = true
				apply(g.connected(p, now))
			case 2:
				connected[p] = false
				greetedThisConn[p] = false
				out[p] = false
				failures[p] = 0
				g.gone(p)
			case 5:
				if out[p] {
					out[p] = false
					if rng.IntN(2) == 0 {
						failures[p]++
						g.failed(p, now)
					} else {
						failures[p] = 0
						g.sent(p)
					}
				}
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
			if len(g.waiting) > 8 || len(g.retrying) > 8 || len(g.greeted)+len(g.waiting) > len(ps) {
				t.Fatalf("seed %d: tables %d waiting %d greeted %d retrying", seed, len(g.waiting), len(g.greeted), len(g.retrying))
			}
		}
		for _, p := range ps {
			g.gone(p)
		}
		if len(g.waiting) != 0 || len(g.greeted) != 0 || len(g.retrying) != 0 {
			t.Fatalf("seed %d: tables not empty after every peer left: %d waiting, %d greeted", seed, len(g.waiting), len(g.greeted))
		}
	}
	if retried == 0 {
		t.Fatal("no greeting was ever retried: the sequences do not exercise retries")
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

// A greeting the peer cut off (here: it resets the first Bitswap stream
// it gets) is sent again while the peer stays connected. Before retries,
// such a peer was never greeted: a Kubo client off the LAN then never
// asks Kitsune for anything (the CI hang of scenario 5).
func TestGreeterRetriesAFailedGreeting(t *testing.T) {
	e, front := newGreetEnv(t, func() (bool, error) { return true, nil })
	p := newHost(t)
	var mu sync.Mutex
	streams := 0
	var haves []cid.Cid
	p.SetStreamHandler(greetProtocol, func(s network.Stream) {
		mu.Lock()
		streams++
		first := streams == 1
		mu.Unlock()
		if first {
			_ = s.Reset()
			return
		}
		msg, _, err := bsmsg.FromMsgReader(msgio.NewVarintReaderSize(s, network.MessageSizeMax))
		if err != nil {
			_ = s.Reset()
			return
		}
		mu.Lock()
		haves = append(haves, msg.Haves()...)
		mu.Unlock()
		_ = s.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Connect(ctx, front()); err != nil {
		t.Fatal(err)
	}
	c := e.front.Counters()
	eventually(t, 10*time.Second, func() string {
		return fmt.Sprintf("a greeting read after a failed one: greeted %d, failed %d, retried %d", c.Greeted.Load(), c.Failed.Load(), c.Retried.Load())
	}, func() bool { return c.Greeted.Load() == 1 })
	mu.Lock()
	defer mu.Unlock()
	if streams != 2 || len(haves) != 1 || !haves[0].Equals(EmptyDirCID) {
		t.Fatalf("peer saw %d greeting streams and HAVEs %v; want 2 streams (the first reset), one HAVE for %s", streams, haves, EmptyDirCID)
	}
	if f, r, g := c.Failed.Load(), c.Retried.Load(), c.GaveUp.Load(); f != 1 || r != 1 || g != 0 {
		t.Fatalf("counters failed %d retried %d gave up %d; want 1, 1, 0", f, r, g)
	}
	e.front.mu.Lock()
	left := len(e.front.book.retrying)
	e.front.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d peers still retrying after the greeting got through", left)
	}
}
