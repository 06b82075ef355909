package downstream

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/kubo/client/rpc"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// State is a node's health as the pool sees it.
type State int

// States of a node.
const (
	// StateUnknown: not connected, or not checked yet.
	StateUnknown State = iota
	// StateHealthy: connected and passing checks; receives wants.
	StateHealthy
	// StateEjected: failing; receives wants only when no node is healthy.
	StateEjected
)

func (s State) String() string {
	switch s {
	case StateHealthy:
		return "healthy"
	case StateEjected:
		return "ejected"
	}
	return "unknown"
}

// Node is one Kubo node of the fleet, known by its RPC API address. Its
// peer ID is learnt from the API and may change when the node is rebuilt
// behind the same address.
type Node struct {
	// Addr is the address as the operator gave it; URL its RPC base URL.
	Addr string
	URL  string
	API  *rpc.HttpApi

	cancel context.CancelFunc // stops the node's maintenance when removed
	wake   chan struct{}

	mu        sync.Mutex
	id        peer.ID
	addrs     []ma.Multiaddr
	connected bool
	health    health
	lastErr   string
	inFlight  int
	ewma      time.Duration // smoothed want latency
	rtt       time.Duration // last libp2p ping
	stats     NodeCounters
}

// NodeCounters are a node's cumulative traffic figures.
type NodeCounters struct {
	WantsSent   uint64
	Blocks      uint64
	Haves       uint64
	DontHaves   uint64
	Failures    uint64
	Ejections   uint64
	MissFetches uint64
}

// NodeStatus is a snapshot of a node for logs, tests and status pages.
type NodeStatus struct {
	Addr      string
	URL       string
	ID        peer.ID
	Addrs     []ma.Multiaddr
	Connected bool
	State     State
	InFlight  int
	Latency   time.Duration
	PingRTT   time.Duration
	Failures  int
	LastError string
	Counters  NodeCounters
}

func newNode(addr string, client *http.Client) (*Node, error) {
	u, err := APIURL(addr)
	if err != nil {
		return nil, err
	}
	api, err := rpc.NewURLApiWithClient(u, client)
	if err != nil {
		return nil, fmt.Errorf("downstream %s: %w", addr, err)
	}
	return &Node{Addr: addr, URL: u, API: api, wake: make(chan struct{}, 1)}, nil
}

// ID returns the node's current peer ID, empty until learnt.
func (n *Node) ID() peer.ID {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.id
}

// Status returns a snapshot.
func (n *Node) Status() NodeStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	return NodeStatus{
		Addr: n.Addr, URL: n.URL, ID: n.id, Addrs: n.addrs, Connected: n.connected,
		State: n.health.state, InFlight: n.inFlight, Latency: n.ewma, PingRTT: n.rtt,
		Failures: n.health.failures, LastError: n.lastErr, Counters: n.stats,
	}
}

func (n *Node) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

type idOutput struct {
	ID        string
	Addresses []string
}

// learn asks the node for its peer ID and swarm addresses.
func (n *Node) learn(ctx context.Context) (peer.ID, []ma.Multiaddr, error) {
	var out idOutput
	if err := n.API.Request("id").Exec(ctx, &out); err != nil {
		return "", nil, fmt.Errorf("downstream %s: /api/v0/id: %w", n.URL, err)
	}
	id, err := peer.Decode(out.ID)
	if err != nil {
		return "", nil, fmt.Errorf("downstream %s: bad peer ID %q: %w", n.URL, out.ID, err)
	}
	var addrs []ma.Multiaddr
	for _, s := range out.Addresses {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		// Kubo lists addresses with /p2p/<id>; the peerstore wants them bare.
		a, _ = peer.SplitAddr(a)
		if a == nil {
			continue
		}
		addrs = append(addrs, a)
	}
	return id, preferTCP(preferSameHost(n.URL, addrs)), nil
}

// preferTCP keeps only plain TCP addresses when a node offers any. On the
// short, clean path from Kitsune to its fleet QUIC buys nothing and costs
// CPU: measured with make bench, quic-go was about 30% of Kitsune's CPU
// profile and added about 0.4 ms per block. go-libp2p would pick QUIC
// first if it were offered both.
func preferTCP(addrs []ma.Multiaddr) []ma.Multiaddr {
	var tcp []ma.Multiaddr
	for _, a := range addrs {
		if len(a) > 0 && a[len(a)-1].Protocol().Code == ma.P_TCP {
			tcp = append(tcp, a)
		}
	}
	if len(tcp) == 0 {
		return addrs
	}
	return tcp
}

// preferSameHost keeps the swarm addresses on the API's own host when there
// are any. A Kubo node lists every interface it listens on, and from where
// Kitsune stands the one it reached the API on is the one known to route.
// Relay (circuit) addresses are never used: the back host must reach the
// fleet directly.
func preferSameHost(apiURL string, addrs []ma.Multiaddr) []ma.Multiaddr {
	var direct []ma.Multiaddr
	for _, a := range addrs {
		if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
			continue
		}
		direct = append(direct, a)
	}
	u, err := url.Parse(apiURL)
	if err != nil {
		return direct
	}
	host := u.Hostname()
	if lh := strings.ToLower(host); lh == "localhost" || strings.HasSuffix(lh, ".localhost") {
		// localhost is loopback by definition, not a name a node lists.
		var loop []ma.Multiaddr
		for _, a := range direct {
			if manet.IsIPLoopback(a) {
				loop = append(loop, a)
			}
		}
		if len(loop) > 0 {
			return loop
		}
		return direct
	}
	ip := net.ParseIP(host)
	var same []ma.Multiaddr
	for _, a := range direct {
		if ip != nil {
			if aip, err := manet.ToIP(a); err == nil && aip.Equal(ip) {
				same = append(same, a)
			}
			continue
		}
		for _, code := range []int{ma.P_DNS, ma.P_DNS4, ma.P_DNS6} {
			if v, err := a.ValueForProtocol(code); err == nil && v == host {
				same = append(same, a)
			}
		}
	}
	if len(same) > 0 {
		return same
	}
	if ip != nil && ip.IsLoopback() {
		return direct
	}
	// The API is not on loopback, so the node's loopback addresses are some
	// other machine's loopback from here.
	var routable []ma.Multiaddr
	for _, a := range direct {
		if !manet.IsIPLoopback(a) {
			routable = append(routable, a)
		}
	}
	return routable
}

// backoff doubles a wait up to a ceiling.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur *= 2
		if b.cur > b.max {
			b.cur = b.max
		}
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }
