package metrics

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kitsune-lb/kitsune/downstream"
)

// Status is the document served at /api/status: what the dashboard shows,
// in a form scripts can read. Durations are in milliseconds, rates per
// second, times in RFC 3339 (UTC). Fields are only ever added.
type Status struct {
	Time          time.Time `json:"time"`
	Version       string    `json:"version"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	// PeerID is the front host's (the identity clients dial).
	PeerID string `json:"peer_id,omitempty"`
	// Ready and NotReadyReason are what /readyz answers.
	Ready          bool   `json:"ready"`
	NotReadyReason string `json:"not_ready_reason,omitempty"`

	Nodes      []NodeInfo     `json:"nodes"`
	Upstream   UpstreamInfo   `json:"upstream"`
	Relay      RelayInfo      `json:"relay"`
	Throughput ThroughputInfo `json:"throughput"`
	Preload    PreloadInfo    `json:"preload"`
	// Geo is where upstream peers connect from; only with --geoip-db.
	Geo *GeoStatus `json:"geo,omitempty"`
}

// NodeInfo is one downstream Kubo node.
type NodeInfo struct {
	// URL is the node's RPC API base URL: its name in metric labels.
	URL       string  `json:"url"`
	PeerID    string  `json:"peer_id,omitempty"`
	Connected bool    `json:"connected"`
	State     string  `json:"state"` // healthy, ejected or unknown
	InFlight  int     `json:"in_flight"`
	LatencyMS float64 `json:"latency_ms"` // smoothed want latency
	PingMS    float64 `json:"ping_ms"`    // last libp2p ping
	// Failures is the current run of consecutive failures.
	Failures  int    `json:"failures"`
	LastError string `json:"last_error,omitempty"`
	WantsSent uint64 `json:"wants_sent"`
	// BlocksServed, Haves and DontHaves are its answers to Kitsune.
	BlocksServed uint64 `json:"blocks_served"`
	Haves        uint64 `json:"haves"`
	DontHaves    uint64 `json:"dont_haves"`
	Ejections    uint64 `json:"ejections"`
}

// UpstreamInfo counts the peers connected to the front host.
type UpstreamInfo struct {
	Peers int `json:"peers"`
	// ByTransport counts distinct peers per transport of their
	// connections; only transports in use appear.
	ByTransport map[string]int `json:"by_transport"`
	// Wanting is how many peers the relay keeps a wantlist for.
	Wanting int `json:"wanting"`
}

// RelayInfo is the relay's tables and cumulative totals. "In" is
// received by Kitsune (wants from upstream, blocks from the fleet), "out"
// sent by it.
type RelayInfo struct {
	Wants  int `json:"wants"`
	Queued int `json:"queued"`
	// Replies answered but not yet delivered: block bytes queued or being
	// written to upstream peers, and messages whose stream has not ended.
	// A graceful stop waits for them as for wants.
	ReplyBytes     int    `json:"reply_bytes"`
	ReplyStreams   int    `json:"reply_streams"`
	WantsIn        uint64 `json:"wants_in"`
	WantsOut       uint64 `json:"wants_out"`
	BlocksIn       uint64 `json:"blocks_in"`
	BytesIn        uint64 `json:"bytes_in"`
	BlocksOut      uint64 `json:"blocks_out"`
	BytesOut       uint64 `json:"bytes_out"`
	HavesOut       uint64 `json:"haves_out"`
	DontHavesOut   uint64 `json:"dont_haves_out"`
	Failovers      uint64 `json:"failovers"`
	Timeouts       uint64 `json:"timeouts"`
	ReverseBlocks  uint64 `json:"reverse_blocks"`
	ReverseBytes   uint64 `json:"reverse_bytes"`
	DroppedWants   uint64 `json:"dropped_wants"`
	DroppedMessage uint64 `json:"dropped_messages"`
}

// ThroughputInfo is the relayed traffic over the last minutes, one sample
// per interval, oldest first.
type ThroughputInfo struct {
	IntervalSeconds float64            `json:"interval_seconds"`
	WindowSeconds   float64            `json:"window_seconds"`
	Samples         []ThroughputSample `json:"samples"`
}

// ThroughputSample is the average rate over the interval ending at Time.
type ThroughputSample struct {
	Time time.Time `json:"time"`
	// BytesOut is block bytes per second sent to upstream peers, BytesIn
	// received from the fleet; BlocksOut blocks per second sent upstream.
	BytesOut  float64 `json:"bytes_out_per_second"`
	BytesIn   float64 `json:"bytes_in_per_second"`
	BlocksOut float64 `json:"blocks_out_per_second"`
}

// PreloadInfo is the preload port's activity.
type PreloadInfo struct {
	Enabled bool `json:"enabled"`
	Active  int  `json:"active"`
	// Recent are the last finished calls, newest first.
	Recent []PreloadCall `json:"recent"`
}

// PreloadCall is one finished refs call.
type PreloadCall struct {
	Time       time.Time `json:"time"` // when it arrived
	Root       string    `json:"root,omitempty"`
	Path       string    `json:"path,omitempty"`
	Node       string    `json:"node,omitempty"`
	Client     string    `json:"client,omitempty"`
	Outcome    string    `json:"outcome"`
	Status     int       `json:"status"`
	DurationMS float64   `json:"duration_ms"`
}

// counterSample is a reading of the cumulative counters.
type counterSample struct {
	t                            time.Time
	bytesOut, bytesIn, blocksOut uint64
}

func (m *Metrics) sample(now time.Time) {
	src := m.sources()
	if src == nil {
		return
	}
	c := src.Relay.Counters()
	s := counterSample{t: now, bytesOut: c.BytesOut.Load(), bytesIn: c.BytesIn.Load(), blocksOut: c.BlocksOut.Load()}
	m.mu.Lock()
	m.samples.push(s)
	m.mu.Unlock()
}

// Run samples throughput, and drops the latency series of nodes gone from
// the fleet, until ctx ends.
func (m *Metrics) Run(ctx context.Context) {
	t := time.NewTicker(m.opts.SampleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.sample(now)
			m.prune()
		}
	}
}

// prune deletes the want latency histograms of nodes no longer in the
// pool, as the pulled per-node series vanish with them: label values stay
// bounded by the fleet as it is, not as it ever was.
func (m *Metrics) prune() {
	src := m.sources()
	if src == nil {
		return
	}
	members := make(map[string]bool)
	for _, n := range src.Pool.Nodes() {
		members[n.URL] = true
	}
	m.latencyNodes.Range(func(k, _ any) bool {
		if u := k.(string); !members[u] {
			m.latencyNodes.Delete(u)
			m.wantLatency.DeleteLabelValues(u)
		}
		return true
	})
}

// Ready reports whether Kitsune can serve: listening for upstream peers
// and at least one healthy downstream node. When not, it says why.
func (m *Metrics) Ready() (bool, string) {
	src := m.sources()
	switch {
	case m.closing.Load():
		return false, "shutting down"
	case src == nil:
		return false, "starting"
	}
	return ready(src, src.Pool.Nodes())
}

func ready(src *Sources, nodes []downstream.NodeStatus) (bool, string) {
	if src.Front != nil && len(src.Front.Network().ListenAddresses()) == 0 {
		return false, "not listening for upstream peers"
	}
	count := make(map[downstream.State]int)
	disconnected := 0
	for _, n := range nodes {
		if n.Connected && n.State == downstream.StateHealthy {
			return true, ""
		}
		if !n.Connected {
			disconnected++
		}
		count[n.State]++
	}
	if len(nodes) == 0 {
		return false, "no downstream nodes configured"
	}
	var parts []string
	if c := count[downstream.StateEjected]; c > 0 {
		parts = append(parts, fmt.Sprintf("%d ejected", c))
	}
	if disconnected > 0 {
		parts = append(parts, fmt.Sprintf("%d not connected", disconnected))
	}
	return false, fmt.Sprintf("no healthy downstream node (%d in the fleet: %s)", len(nodes), strings.Join(parts, ", "))
}

// Status builds the /api/status document.
func (m *Metrics) Status() Status {
	now := time.Now()
	s := Status{
		Time:          now.UTC(),
		Version:       m.version,
		UptimeSeconds: now.Sub(m.started).Seconds(),
		Nodes:         []NodeInfo{},
		Upstream:      UpstreamInfo{ByTransport: map[string]int{}},
		Throughput: ThroughputInfo{
			IntervalSeconds: m.opts.SampleInterval.Seconds(),
			WindowSeconds:   m.opts.SampleWindow.Seconds(),
			Samples:         []ThroughputSample{},
		},
		Preload: PreloadInfo{Recent: []PreloadCall{}},
	}
	m.mu.Lock()
	samples := m.samples.items()
	calls := m.calls.items()
	s.Preload.Active = m.activeCall
	m.mu.Unlock()
	for i := len(calls) - 1; i >= 0; i-- {
		s.Preload.Recent = append(s.Preload.Recent, calls[i])
	}
	for i := 1; i < len(samples); i++ {
		a, b := samples[i-1], samples[i]
		dt := b.t.Sub(a.t).Seconds()
		if dt <= 0 {
			continue
		}
		s.Throughput.Samples = append(s.Throughput.Samples, ThroughputSample{
			Time:      b.t.UTC(),
			BytesOut:  float64(b.bytesOut-a.bytesOut) / dt,
			BytesIn:   float64(b.bytesIn-a.bytesIn) / dt,
			BlocksOut: float64(b.blocksOut-a.blocksOut) / dt,
		})
	}

	src := m.sources()
	if src == nil {
		s.NotReadyReason = "starting"
		return s
	}
	s.Preload.Enabled = src.Preload
	nodes := src.Pool.Nodes()
	if m.closing.Load() {
		s.NotReadyReason = "shutting down"
	} else {
		s.Ready, s.NotReadyReason = ready(src, nodes)
	}
	for _, n := range nodes {
		ni := NodeInfo{
			URL: n.URL, Connected: n.Connected, State: n.State.String(), InFlight: n.InFlight,
			LatencyMS: ms(n.Latency), PingMS: ms(n.PingRTT), Failures: n.Failures, LastError: n.LastError,
			WantsSent: n.Counters.WantsSent, BlocksServed: n.Counters.Blocks, Haves: n.Counters.Haves,
			DontHaves: n.Counters.DontHaves, Ejections: n.Counters.Ejections,
		}
		if n.ID != "" {
			ni.PeerID = n.ID.String()
		}
		s.Nodes = append(s.Nodes, ni)
	}
	if src.Front != nil {
		s.PeerID = src.Front.ID().String()
		s.Upstream.Peers = upstreamPeers(src.Front.Network())
		s.Upstream.ByTransport = upstreamByTransport(src.Front.Network())
	}
	if src.Geo != nil {
		s.Geo = src.Geo.status(now)
	}
	st := src.Relay.Stats()
	c := src.Relay.Counters()
	s.Upstream.Wanting = st.Peers
	s.Relay = RelayInfo{
		Wants: st.Wants, Queued: st.Queued,
		ReplyBytes: st.ReplyBytes, ReplyStreams: st.ReplyStreams,
		WantsIn: c.WantsReceived.Load(), WantsOut: c.WantsForwarded.Load(),
		BlocksIn: c.BlocksIn.Load(), BytesIn: c.BytesIn.Load(),
		BlocksOut: c.BlocksOut.Load(), BytesOut: c.BytesOut.Load(),
		HavesOut: c.HavesOut.Load(), DontHavesOut: c.DontHavesOut.Load(),
		Failovers: c.Failovers.Load(), Timeouts: c.Timeouts.Load(),
		ReverseBlocks: c.ReverseBlocks.Load(), ReverseBytes: c.ReverseBytes.Load(),
		DroppedWants: c.DroppedWants.Load(), DroppedMessage: c.DroppedMessages.Load(),
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
