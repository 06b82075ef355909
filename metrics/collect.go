package metrics

import (
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kitsune-lb/kitsune/downstream"
)

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// The pulled metrics. "in" and "out" are seen from Kitsune: wants come in
// from upstream peers and go out to the fleet; blocks, HAVEs and
// DONT_HAVEs come in from the fleet and go out to upstream peers.
var (
	descUpstreamConns = desc("kitsune_upstream_connections", "Connections open on the front host (upstream peers), all transports.")
	descConnsLimit    = desc("kitsune_upstream_connections_limit", "The front host's connection limit (--max-conns); new connections are refused at it.")
	descUpstreamPeers = desc("kitsune_upstream_peers", "Upstream peers connected to the front host, by transport of their connection (tcp, quic-v1, ws, wss, webtransport, webrtc-direct, circuit, other).", "transport")

	descWants        = desc("kitsune_relay_wants", "CIDs in the relay's want table (wanted by at least one upstream peer).")
	descQueued       = desc("kitsune_relay_wants_queued", "Wants waiting in Kitsune for a downstream node with room (shared by all nodes).")
	descRelayPeers   = desc("kitsune_relay_peers", "Upstream peers the relay keeps a wantlist for.")
	descReplyMemory  = desc("kitsune_relay_reply_memory_bytes", "Memory the blocks waiting to be sent to upstream peers keep alive, each block once (capped by --reply-memory).")
	descWantsTotal   = desc("kitsune_relay_wants_total", "Want entries: in = received from upstream peers, out = forwarded to downstream nodes.", "direction")
	descBlocksTotal  = desc("kitsune_relay_blocks_total", "Blocks: in = received from downstream nodes, out = sent to upstream peers.", "direction")
	descBytesTotal   = desc("kitsune_relay_bytes_total", "Block bytes: in = received from downstream nodes, out = sent to upstream peers.", "direction")
	descHavesTotal   = desc("kitsune_relay_haves_total", "HAVEs: in = received from downstream nodes, out = sent to upstream peers.", "direction")
	descDontHaves    = desc("kitsune_relay_dont_haves_total", "DONT_HAVEs: in = received from downstream nodes, out = sent to upstream peers.", "direction")
	descFailovers    = desc("kitsune_relay_failovers_total", "Wants moved to another downstream node (DONT_HAVE, node lost or ejected, silence).")
	descTimeouts     = desc("kitsune_relay_timeouts_total", "Wants moved off a downstream node that stayed silent.")
	descRewants      = desc("kitsune_relay_rewants_total", "Wants sent again to a downstream node that left them unanswered for the rewant interval (a want or its answer lost on the way).")
	descNodeSendFail = desc("kitsune_relay_node_send_failures_total", "Wantlist messages to downstream nodes whose send failed (dropped; their wants are sent again by the rewant).")
	descNodeStreamEr = desc("kitsune_relay_node_stream_errors_total", "Streams from downstream nodes reset mid-message (a message that did not parse, or no memory for it within the back host's limits); the node has forgotten the wants its message answered.")
	descRepliesCut   = desc("kitsune_relay_replies_cut_off_total", "Reply messages an upstream peer cut off (reset the stream); their blocks are sent again.")
	descRepliesGone  = desc("kitsune_relay_replies_given_up_blocks_total", "Blocks of reply messages given up after a peer cut off too many in a row (the peer must ask again).")
	descHeldWants    = desc("kitsune_relay_held_wants_total", "Wants held back in Kitsune until an upstream peer's reply queue had room for their blocks (it wanted more than 16 MiB at once, or reads slower than the fleet delivers), rather than fetched and set aside.")
	descDeferred     = desc("kitsune_relay_deferred_blocks_total", "Blocks set aside for an upstream peer whose reply queue was full (it reads slower than the fleet delivers); they are fetched again once it catches up.")
	descRecentHits   = desc("kitsune_relay_recent_hits_total", "Wants answered from the blocks relayed in the last seconds (a flash crowd on the same content), without asking the fleet again.")
	descNodeBuffers  = desc("kitsune_relay_node_buffers_total", "Messages from downstream nodes (8 KiB to 4 MiB) read into a buffer: new = allocated, reused = one an earlier message had, which nobody held any more.", "outcome")
	descUnsolicited  = desc("kitsune_relay_unsolicited_blocks_total", "Blocks from downstream nodes that nobody wanted any more.")
	descDroppedMsgs  = desc("kitsune_relay_dropped_messages_total", "Upstream messages dropped for exceeding --max-message-size.")
	descDroppedWants = desc("kitsune_relay_dropped_wants_total", "Want entries ignored past --max-wants-per-peer.")
	descMissFetches  = desc("kitsune_relay_miss_fetches_total", "Downstream nodes asked to fetch a block that no node had.")
	descMissFetched  = desc("kitsune_relay_miss_fetches_found_total", "Miss fetches that found the block.")
	descRevWants     = desc("kitsune_relay_reverse_wants_total", "Reverse sessions (preload): downstream wants forwarded to upstream peers.")
	descRevBlocks    = desc("kitsune_relay_reverse_blocks_total", "Reverse sessions (preload): blocks relayed from upstream peers to the fleet.")
	descRevBytes     = desc("kitsune_relay_reverse_bytes_total", "Reverse sessions (preload): block bytes relayed from upstream peers to the fleet.")

	descNodes        = desc("kitsune_downstream_nodes", "Downstream nodes by state (healthy, ejected, unknown).", "state")
	descNodeState    = desc("kitsune_downstream_node_state", "1 for the node's current state (healthy, ejected, unknown), 0 for the others.", "node", "state")
	descNodeUp       = desc("kitsune_downstream_node_connected", "1 while the back host is connected to the node.", "node")
	descInFlight     = desc("kitsune_downstream_wants_in_flight", "Wants outstanding on the node.", "node")
	descLatency      = desc("kitsune_downstream_latency_seconds", "The node's smoothed want latency, which sets its want timeout.", "node")
	descPing         = desc("kitsune_downstream_ping_rtt_seconds", "The last libp2p ping round trip to the node.", "node")
	descSent         = desc("kitsune_downstream_wants_sent_total", "Wants sent to the node.", "node")
	descAnswers      = desc("kitsune_downstream_answers_total", "Answers from the node by type (block, have, dont_have).", "node", "type")
	descNodeFailures = desc("kitsune_downstream_failures_total", "Failed health checks and failed or timed-out wants on the node.", "node")
	descEjections    = desc("kitsune_downstream_ejections_total", "Times the node was ejected (taken out of rotation for failing).", "node")
	descNodeMisses   = desc("kitsune_downstream_miss_fetches_total", "Miss fetches asked of the node.", "node")
)

var pulled = []*prometheus.Desc{
	descUpstreamConns, descConnsLimit, descUpstreamPeers, descDeferred, descHeldWants,
	descWants, descQueued, descRelayPeers, descReplyMemory, descWantsTotal, descBlocksTotal, descBytesTotal,
	descHavesTotal, descDontHaves, descFailovers, descTimeouts, descRewants, descNodeSendFail, descNodeStreamEr, descRepliesCut, descRepliesGone, descUnsolicited, descDroppedMsgs,
	descDroppedWants, descMissFetches, descMissFetched, descRevWants, descRevBlocks, descRevBytes,
	descNodes, descNodeState, descNodeUp, descInFlight, descLatency, descPing, descSent, descAnswers,
	descNodeFailures, descEjections, descNodeMisses, descRecentHits, descNodeBuffers,
}

var states = []downstream.State{downstream.StateHealthy, downstream.StateEjected, downstream.StateUnknown}

// pullCollector reads the running parts at scrape time.
type pullCollector struct{ m *Metrics }

func (c pullCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range pulled {
		ch <- d
	}
}

func (c pullCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.m.sources()
	if src == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	if src.MaxConns > 0 {
		gauge(descConnsLimit, float64(src.MaxConns))
	}
	if src.Front != nil {
		gauge(descUpstreamConns, float64(len(src.Front.Network().Conns())))
		byT := upstreamByTransport(src.Front.Network())
		for _, t := range transports {
			gauge(descUpstreamPeers, float64(byT[t]), t)
		}
	}

	nodes := src.Pool.Nodes()
	var havesIn, dontHavesIn uint64
	count := make(map[downstream.State]int)
	for _, n := range nodes {
		count[n.State]++
		for _, s := range states {
			v := 0.0
			if n.State == s {
				v = 1
			}
			gauge(descNodeState, v, n.URL, s.String())
		}
		gauge(descNodeUp, b2f(n.Connected), n.URL)
		gauge(descInFlight, float64(n.InFlight), n.URL)
		gauge(descLatency, n.Latency.Seconds(), n.URL)
		gauge(descPing, n.PingRTT.Seconds(), n.URL)
		nc := n.Counters
		counter(descSent, nc.WantsSent, n.URL)
		counter(descAnswers, nc.Blocks, n.URL, "block")
		counter(descAnswers, nc.Haves, n.URL, "have")
		counter(descAnswers, nc.DontHaves, n.URL, "dont_have")
		counter(descNodeFailures, nc.Failures, n.URL)
		counter(descEjections, nc.Ejections, n.URL)
		counter(descNodeMisses, nc.MissFetches, n.URL)
		havesIn += nc.Haves
		dontHavesIn += nc.DontHaves
	}
	for _, s := range states {
		gauge(descNodes, float64(count[s]), s.String())
	}

	st := src.Relay.Stats()
	gauge(descWants, float64(st.Wants))
	gauge(descQueued, float64(st.Queued))
	gauge(descRelayPeers, float64(st.Peers))
	gauge(descReplyMemory, float64(st.ReplyMemory))
	rc := src.Relay.Counters()
	counter(descWantsTotal, rc.WantsReceived.Load(), "in")
	counter(descWantsTotal, rc.WantsForwarded.Load(), "out")
	counter(descBlocksTotal, rc.BlocksIn.Load(), "in")
	counter(descBlocksTotal, rc.BlocksOut.Load(), "out")
	counter(descBytesTotal, rc.BytesIn.Load(), "in")
	counter(descBytesTotal, rc.BytesOut.Load(), "out")
	// The fleet's HAVEs and DONT_HAVEs are counted per node by the pool
	// (a node removed from the fleet takes its share along).
	counter(descHavesTotal, havesIn, "in")
	counter(descHavesTotal, rc.HavesOut.Load(), "out")
	counter(descDontHaves, dontHavesIn, "in")
	counter(descDontHaves, rc.DontHavesOut.Load(), "out")
	counter(descFailovers, rc.Failovers.Load())
	counter(descTimeouts, rc.Timeouts.Load())
	counter(descRewants, rc.Rewants.Load())
	counter(descNodeSendFail, rc.NodeSendFailures.Load())
	counter(descNodeStreamEr, rc.NodeStreamErrors.Load())
	counter(descRepliesCut, rc.RepliesCutOff.Load())
	counter(descRepliesGone, rc.RepliesGivenUp.Load())
	counter(descUnsolicited, rc.Unsolicited.Load())
	counter(descDeferred, rc.Deferred.Load())
	counter(descHeldWants, rc.HeldWants.Load())
	counter(descRecentHits, rc.RecentHits.Load())
	counter(descNodeBuffers, rc.NodeBuffersNew.Load(), "new")
	counter(descNodeBuffers, rc.NodeBuffersReused.Load(), "reused")
	counter(descDroppedMsgs, rc.DroppedMessages.Load())
	counter(descDroppedWants, rc.DroppedWants.Load())
	counter(descMissFetches, rc.MissFetches.Load())
	counter(descMissFetched, rc.MissFetched.Load())
	counter(descRevWants, rc.ReverseWants.Load())
	counter(descRevBlocks, rc.ReverseBlocks.Load())
	counter(descRevBytes, rc.ReverseBytes.Load())
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// transports are the label values of kitsune_upstream_peers, all always
// present so a dashboard shows a 0 rather than a gap.
var transports = []string{"tcp", "quic-v1", "ws", "wss", "webtransport", "webrtc-direct", "circuit", "other"}

// Transport names the transport of a connection from its remote
// multiaddr: the outermost one that matters to an operator (a WebSocket
// runs over TCP, WebTransport over QUIC).
func Transport(a ma.Multiaddr) string {
	has := func(code int) bool {
		for _, c := range a {
			if c.Code() == code {
				return true
			}
		}
		return false
	}
	switch {
	case a == nil:
		return "other"
	case has(ma.P_CIRCUIT):
		return "circuit"
	case has(ma.P_WEBRTC_DIRECT):
		return "webrtc-direct"
	case has(ma.P_WEBTRANSPORT):
		return "webtransport"
	case has(ma.P_WSS), has(ma.P_WS) && has(ma.P_TLS):
		return "wss"
	case has(ma.P_WS):
		return "ws"
	case has(ma.P_QUIC_V1):
		return "quic-v1"
	case has(ma.P_TCP):
		return "tcp"
	}
	return "other"
}

// upstreamByTransport counts distinct peers per transport: a peer with a
// TCP and a QUIC connection counts once under each.
func upstreamByTransport(n network.Network) map[string]int {
	seen := make(map[string]map[peer.ID]struct{})
	for _, c := range n.Conns() {
		t := Transport(c.RemoteMultiaddr())
		if seen[t] == nil {
			seen[t] = make(map[peer.ID]struct{})
		}
		seen[t][c.RemotePeer()] = struct{}{}
	}
	out := make(map[string]int, len(seen))
	for t, ps := range seen {
		out[t] = len(ps)
	}
	return out
}

// upstreamPeers counts distinct peers connected to the front host.
func upstreamPeers(n network.Network) int { return len(n.Peers()) }
