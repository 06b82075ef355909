package geoip

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func find(cs []Country, code string) Country {
	for _, c := range cs {
		if c.Code == code {
			return c
		}
	}
	return Country{Code: code}
}

func TestTrackerCounts(t *testing.T) {
	sent := map[peer.ID]uint64{}
	tr := NewTracker(func(p peer.ID) uint64 { return sent[p] })
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	a, b, c := peer.ID("a"), peer.ID("b"), peer.ID("c")

	sent[a] = 1000 // sent before: an earlier visit, not this one's
	tr.Connected(a, "DE", t0)
	tr.Connected(a, "JP", t0) // a second connection, from elsewhere: still a German peer
	tr.Connected(b, "DE", t0.Add(10*time.Minute))
	tr.Connected(c, Unknown, t0.Add(30*time.Minute))
	sent[a] += 500
	sent[b] += 70

	s := tr.Snapshot(t0.Add(30 * time.Minute))
	if got := find(s, "DE"); got.Peers != 2 || got.ConnectionsLastHour != 2 || got.Connections != 2 || got.BytesSent != 570 {
		t.Errorf("DE = %+v", got)
	}
	// Connections count where each came from; peers where they first did.
	if got := find(s, "JP"); got.Peers != 0 || got.ConnectionsLastHour != 1 || got.BytesSent != 0 {
		t.Errorf("JP = %+v", got)
	}
	if got := find(s, Unknown); got.Peers != 1 || got.ConnectionsLastHour != 1 {
		t.Errorf("unknown = %+v", got)
	}
	if s[0].Code != "DE" {
		t.Errorf("most peers first: %+v", s)
	}

	// One of a's two connections goes: a stays. Then the other: a's
	// bytes since the last snapshot are counted and a is forgotten.
	tr.Disconnected(a)
	if tr.Peers() != 3 {
		t.Fatalf("peers %d after a's first disconnect", tr.Peers())
	}
	sent[a] += 30
	tr.Disconnected(a)
	tr.Disconnected(peer.ID("never-seen")) // no effect
	s = tr.Snapshot(t0.Add(45 * time.Minute))
	if got := find(s, "DE"); got.Peers != 1 || got.BytesSent != 600 {
		t.Errorf("DE after a left = %+v", got)
	}

	// An hour after the first connections, only the later ones count.
	s = tr.Snapshot(t0.Add(65 * time.Minute))
	if got := find(s, "DE"); got.ConnectionsLastHour != 1 || got.Connections != 2 {
		t.Errorf("DE an hour later = %+v", got)
	}
	if got := find(s, Unknown); got.ConnectionsLastHour != 1 {
		t.Errorf("unknown an hour later = %+v", got)
	}
	s = tr.Snapshot(t0.Add(3 * time.Hour))
	if got := find(s, "DE"); got.ConnectionsLastHour != 0 || got.Peers != 1 {
		t.Errorf("DE three hours later = %+v", got)
	}

	// A trimmed (reset) bandwidth meter: what follows is all new.
	sent[b] = 5
	s = tr.Snapshot(t0.Add(3 * time.Hour))
	if got := find(s, "DE"); got.BytesSent != 605 {
		t.Errorf("DE after a counter reset = %+v", got)
	}
}

// Random connects and disconnects, with a model alongside: peer counts
// match, and once everyone has left the tracker holds no peer.
func TestTrackerRandomEmpties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tr := NewTracker(nil)
	codes := []string{"DE", "JP", "BR", Unknown}
	type model struct {
		country string
		conns   int
	}
	live := map[peer.ID]*model{}
	now := time.Unix(1_700_000_000, 0)
	var total uint64
	for i := range 5000 {
		now = now.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
		p := peer.ID(rune('a' + rng.IntN(40)))
		if m := live[p]; m != nil && rng.IntN(2) == 0 {
			tr.Disconnected(p)
			if m.conns--; m.conns == 0 {
				delete(live, p)
			}
			continue
		}
		code := codes[rng.IntN(len(codes))]
		tr.Connected(p, code, now)
		total++
		if live[p] == nil {
			live[p] = &model{country: code}
		}
		live[p].conns++
		if i%500 == 0 {
			want := map[string]int{}
			for _, m := range live {
				want[m.country]++
			}
			var conns uint64
			for _, c := range tr.Snapshot(now) {
				if c.Peers != want[c.Code] {
					t.Fatalf("step %d: %s has %d peers, model %d", i, c.Code, c.Peers, want[c.Code])
				}
				conns += c.Connections
			}
			if conns != total {
				t.Fatalf("step %d: %d connections counted, %d made", i, conns, total)
			}
		}
	}
	for p, m := range live {
		for range m.conns {
			tr.Disconnected(p)
		}
	}
	if tr.Peers() != 0 {
		t.Fatalf("%d peers left after every connection closed", tr.Peers())
	}
	for _, c := range tr.Snapshot(now) {
		if c.Peers != 0 {
			t.Fatalf("%s still has %d peers", c.Code, c.Peers)
		}
	}
}
