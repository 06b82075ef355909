package geoip

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// window is how far back "connections in the last hour" looks, counted in
// whole minutes.
const windowMinutes = 60

// Country is one country's upstream traffic.
type Country struct {
	Code string `json:"code"` // ISO 3166-1 alpha-2, or "unknown"
	// Peers is the upstream peers connected now whose first connection
	// came from this country.
	Peers int `json:"peers"`
	// ConnectionsLastHour counts connections opened in the last hour
	// (by the minute); Connections all since start.
	ConnectionsLastHour uint64 `json:"connections_last_hour"`
	Connections         uint64 `json:"connections"`
	// BytesSent is what the front host sent to this country's peers
	// since start (every protocol, as libp2p's bandwidth counter sees
	// streams), up to the last time it was counted.
	BytesSent uint64 `json:"bytes_sent"`
}

// Tracker keeps per-country counts from connection events. It holds one
// entry per connected peer (removed with its last connection) and one per
// country code ever seen: at most 26×26+1, since DB.Country returns only
// two-letter codes or Unknown.
//
// Time comes in with each call, so tests drive it with a fake clock.
type Tracker struct {
	sent func(peer.ID) uint64

	mu        sync.Mutex
	peers     map[peer.ID]*peerState
	countries map[string]*countryState
}

type peerState struct {
	country string
	conns   int
	// credited is the peer's sent-bytes counter as last added to its
	// country.
	credited uint64
}

type countryState struct {
	peers   int
	conns   uint64
	bytes   uint64
	minutes [windowMinutes]minuteCount // ring indexed by minute % windowMinutes
}

type minuteCount struct {
	minute int64 // Unix minute the count is for
	n      uint64
}

// NewTracker makes a tracker. sent reports how many bytes the front host
// has sent to a peer so far (libp2p's per-peer bandwidth counter); nil
// counts no bytes.
func NewTracker(sent func(peer.ID) uint64) *Tracker {
	if sent == nil {
		sent = func(peer.ID) uint64 { return 0 }
	}
	return &Tracker{sent: sent, peers: map[peer.ID]*peerState{}, countries: map[string]*countryState{}}
}

func (t *Tracker) country(code string) *countryState {
	c := t.countries[code]
	if c == nil {
		c = &countryState{}
		t.countries[code] = c
	}
	return c
}

// Connected records a new connection from p, from country. A peer is
// counted under the country of its first open connection.
func (t *Tracker) Connected(p peer.ID, country string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.country(country)
	c.conns++
	m := now.Unix() / 60
	slot := &c.minutes[m%windowMinutes]
	if slot.minute != m {
		*slot = minuteCount{minute: m}
	}
	slot.n++

	ps := t.peers[p]
	if ps == nil {
		// The bandwidth counter remembers a peer across reconnections:
		// only what is sent from now on is this visit's.
		ps = &peerState{country: country, credited: t.sent(p)}
		t.peers[p] = ps
		c.peers++
	}
	ps.conns++
}

// Disconnected records the end of one of p's connections; with its last,
// the peer's bytes are counted and it is forgotten.
func (t *Tracker) Disconnected(p peer.ID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.peers[p]
	if ps == nil {
		return // connected before the tracker was watching
	}
	ps.conns--
	if ps.conns > 0 {
		return
	}
	t.credit(p, ps)
	t.countries[ps.country].peers--
	delete(t.peers, p)
}

// credit adds what p was sent since the last credit to its country. A
// counter lower than last time was reset (an idle meter trimmed), so all
// of it is new.
func (t *Tracker) credit(p peer.ID, ps *peerState) {
	cur := t.sent(p)
	if cur < ps.credited {
		ps.credited = 0
	}
	t.countries[ps.country].bytes += cur - ps.credited
	ps.credited = cur
}

// Snapshot counts the bytes sent to connected peers so far and returns
// every country seen, most peers first, then most connections in the
// last hour, then by code.
func (t *Tracker) Snapshot(now time.Time) []Country {
	t.mu.Lock()
	defer t.mu.Unlock()
	for p, ps := range t.peers {
		t.credit(p, ps)
	}
	cur := now.Unix() / 60
	out := make([]Country, 0, len(t.countries))
	for code, c := range t.countries {
		var hour uint64
		for _, s := range c.minutes {
			if s.minute > cur-windowMinutes && s.minute <= cur {
				hour += s.n
			}
		}
		out = append(out, Country{Code: code, Peers: c.peers, ConnectionsLastHour: hour, Connections: c.conns, BytesSent: c.bytes})
	}
	slices.SortFunc(out, func(a, b Country) int {
		return cmp.Or(cmp.Compare(b.Peers, a.Peers), cmp.Compare(b.ConnectionsLastHour, a.ConnectionsLastHour), cmp.Compare(a.Code, b.Code))
	})
	return out
}

// Peers is how many connected peers the tracker holds: what a test checks
// returns to zero.
func (t *Tracker) Peers() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.peers)
}
