package proxy

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/x/rate"
)

// Limits are the front host's resource-manager limits. go-libp2p's defaults
// suit a desktop node: a few hundred connections and 8 per IPv4 address.
// A proxy holds thousands of idle browser connections, and every browser
// behind one NAT or load balancer shares one address.
type Limits struct {
	// Conns caps all connections; Streams all streams.
	Conns, Streams int
	// StreamsPerPeer caps one peer's streams, whatever their protocol.
	StreamsPerPeer int
	// ConnsPerIP caps connections from one IPv4 address or IPv6 /56 (an
	// IPv6 /48 gets eight times as many). New connections from one address
	// are also rate limited: a burst of 2 × ConnsPerIP (at least 8), then
	// ConnsPerIP a minute.
	ConnsPerIP int
	// Networks override ConnsPerIP for whole prefixes: the addresses of a
	// load balancer or NAT in front of many clients (raise), or a network
	// to hold to a budget (lower). All addresses in a prefix share its
	// count. Loopback is unlimited unless a prefix here covers it.
	Networks []NetworkLimit
}

// NetworkLimit is a connection budget shared by every address in Prefix.
type NetworkLimit struct {
	Prefix netip.Prefix
	Conns  int
}

// DefaultLimits are Kitsune's defaults, also the flags' defaults.
func DefaultLimits() Limits {
	return Limits{Conns: 8192, Streams: 65536, StreamsPerPeer: 1024, ConnsPerIP: 16}
}

// withDefaults fills zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	for _, f := range []struct{ v, d *int }{{&l.Conns, &d.Conns}, {&l.Streams, &d.Streams}, {&l.StreamsPerPeer, &d.StreamsPerPeer}, {&l.ConnsPerIP, &d.ConnsPerIP}} {
		if *f.v == 0 {
			*f.v = *f.d
		}
	}
	return l
}

// Validate reports the first limit that cannot work.
func (l Limits) Validate() error {
	for _, v := range []struct {
		name string
		n    int
	}{{"connection limit", l.Conns}, {"stream limit", l.Streams}, {"per-peer stream limit", l.StreamsPerPeer}, {"per-IP connection limit", l.ConnsPerIP}} {
		if v.n <= 0 {
			return fmt.Errorf("%s must be positive, got %d", v.name, v.n)
		}
	}
	if l.StreamsPerPeer > l.Streams {
		return fmt.Errorf("per-peer stream limit %d is above the stream limit %d", l.StreamsPerPeer, l.Streams)
	}
	seen := map[netip.Prefix]bool{}
	for _, n := range l.Networks {
		if !n.Prefix.IsValid() {
			return fmt.Errorf("invalid network prefix in %v", n)
		}
		if n.Conns < 0 {
			return fmt.Errorf("%s: connection limit must not be negative, got %d", n.Prefix, n.Conns)
		}
		if seen[n.Prefix.Masked()] {
			return fmt.Errorf("%s is given twice", n.Prefix)
		}
		seen[n.Prefix.Masked()] = true
	}
	return nil
}

// connManagerWatermarks keeps the connection manager's trimming below the
// resource manager's hard limit, so idle connections are closed before new
// ones are refused.
func (l Limits) connManagerWatermarks() (low, high int) {
	high = l.Conns - l.Conns/8
	low = high * 3 / 4
	return max(low, 1), max(high, 2)
}

// resourceManager builds a go-libp2p resource manager from l, on top of
// go-libp2p's auto-scaled defaults (memory and file descriptors follow the
// machine) and its per-service limits (identify, ping, relay).
func (l Limits) resourceManager() (network.ResourceManager, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	scaling := rcmgr.DefaultLimits
	libp2p.SetDefaultServiceLimits(&scaling)

	all := func(conns, streams int) rcmgr.ResourceLimits {
		r := rcmgr.ResourceLimits{}
		if conns > 0 {
			c := rcmgr.LimitVal(conns)
			r.Conns, r.ConnsInbound, r.ConnsOutbound = c, c, c
		}
		if streams > 0 {
			s := rcmgr.LimitVal(streams)
			r.Streams, r.StreamsInbound, r.StreamsOutbound = s, s, s
		}
		return r
	}
	partial := rcmgr.PartialLimitConfig{
		System: all(l.Conns, l.Streams),
		// Connections sit in the transient scope until their handshake
		// ends, streams until their protocol is negotiated: room for a
		// crowd of browsers reconnecting after a restart.
		Transient:       all(max(64, l.Conns/8), max(256, l.Streams/8)),
		ServiceDefault:  all(0, l.Streams),
		ProtocolDefault: all(0, l.Streams),
		// Bitswap registers no service and no protocol limit of its own,
		// so the defaults below are what bounds it per peer.
		PeerDefault:         all(0, l.StreamsPerPeer),
		ServicePeerDefault:  all(0, l.StreamsPerPeer),
		ProtocolPeerDefault: all(0, l.StreamsPerPeer),
		// The private DHT (--private-dht), when it runs: its own budget,
		// so lookups cannot crowd out Bitswap.
		Protocol: map[protocol.ID]rcmgr.ResourceLimits{
			DHTProtocol: all(0, dhtStreams), DHTLANProtocol: all(0, dhtStreams),
		},
		ProtocolPeer: map[protocol.ID]rcmgr.ResourceLimits{
			DHTProtocol: all(0, dhtStreamsPerPeer), DHTLANProtocol: all(0, dhtStreamsPerPeer),
		},
	}
	limits := partial.Build(scaling.AutoScale())

	perIP := l.ConnsPerIP
	var v4, v6 []rcmgr.NetworkPrefixLimit
	var ratePrefixes []rate.PrefixLimit
	covered := map[netip.Prefix]bool{}
	for _, n := range l.Networks {
		p := n.Prefix.Masked()
		covered[p] = true
		lim := rcmgr.NetworkPrefixLimit{Network: p, ConnCount: n.Conns}
		if p.Addr().Is4() {
			v4 = append(v4, lim)
		} else {
			v6 = append(v6, lim)
		}
		ratePrefixes = append(ratePrefixes, rate.PrefixLimit{Prefix: p, Limit: connRate(n.Conns)})
	}
	// go-libp2p leaves loopback unlimited (local tools, a TLS terminator
	// on the same machine); keep that unless the operator named it.
	for _, lo := range []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")} {
		if covered[lo] {
			continue
		}
		lim := rcmgr.NetworkPrefixLimit{Network: lo, ConnCount: math.MaxInt}
		if lo.Addr().Is4() {
			v4 = append(v4, lim)
		} else {
			v6 = append(v6, lim)
		}
		ratePrefixes = append(ratePrefixes, rate.PrefixLimit{Prefix: lo}) // zero: unlimited
	}
	// A non-nil empty slice still replaces go-libp2p's defaults.
	if v4 == nil {
		v4 = []rcmgr.NetworkPrefixLimit{}
	}
	if v6 == nil {
		v6 = []rcmgr.NetworkPrefixLimit{}
	}
	subnetRate := connRate(perIP)
	connRates := &rate.Limiter{
		NetworkPrefixLimits: ratePrefixes,
		SubnetRateLimiter: rate.SubnetLimiter{
			IPv4SubnetLimits: []rate.SubnetLimit{{PrefixLength: 32, Limit: subnetRate}},
			IPv6SubnetLimits: []rate.SubnetLimit{
				{PrefixLength: 56, Limit: subnetRate},
				{PrefixLength: 48, Limit: connRate(8 * perIP)},
			},
			GracePeriod: time.Minute,
		},
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits),
		rcmgr.WithNetworkPrefixLimit(v4, v6),
		rcmgr.WithLimitPerSubnet(
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: perIP}},
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 56, ConnCount: perIP}, {PrefixLength: 48, ConnCount: 8 * perIP}},
		),
		rcmgr.WithConnRateLimiters(connRates),
		// The hosts run with libp2p's metrics off, yet a resource manager
		// still feeds its Prometheus collectors from a trace of every
		// reservation, each event stamped with a formatted time: an eighth
		// of Kitsune's CPU while it relays small blocks, for collectors
		// no registry holds (docs/performance.md).
		rcmgr.WithMetricsDisabled(),
	)
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	return rm, nil
}

// connRate lets n connections open at once twice over (at least 8, so a
// small budget's clients can retry after a refusal), then n a minute: a page
// reload or a reconnect after a restart gets through, a flood does not.
func connRate(n int) rate.Limit {
	if n <= 0 {
		// A blocked network needs no rate: its connection count is 0.
		return rate.Limit{}
	}
	return rate.Limit{RPS: float64(n) / 60, Burst: max(2*n, 8)}
}
