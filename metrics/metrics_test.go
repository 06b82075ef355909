package metrics

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/multiformats/go-multihash"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kitsune-lb/kitsune/bitswap"
	"github.com/kitsune-lb/kitsune/downstream"
	"github.com/kitsune-lb/kitsune/preload"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

type fakeRelay struct {
	c  bitswap.Counters
	mu sync.Mutex
	st bitswap.Stats
}

func (f *fakeRelay) Counters() *bitswap.Counters { return &f.c }
func (f *fakeRelay) Stats() bitswap.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

type fakePool struct {
	mu    sync.Mutex
	nodes []downstream.NodeStatus
}

func (f *fakePool) Nodes() []downstream.NodeStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]downstream.NodeStatus(nil), f.nodes...)
}

func (f *fakePool) set(nodes ...downstream.NodeStatus) {
	f.mu.Lock()
	f.nodes = nodes
	f.mu.Unlock()
}

const (
	urlA = "http://10.0.0.1:5001"
	urlB = "http://10.0.0.2:5001"
)

func newTest(t *testing.T, opts Options) (*Metrics, *prometheus.Registry, *fakeRelay, *fakePool) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := New(reg, opts)
	if err != nil {
		t.Fatal(err)
	}
	r, p := &fakeRelay{}, &fakePool{}
	return m, reg, r, p
}

// value returns the value of the one series of name whose labels include
// the given pairs; ok is false when there is none.
func value(t *testing.T, g prometheus.Gatherer, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := make(map[string]string)
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue series
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return m.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return m.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func must(t *testing.T, g prometheus.Gatherer, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := value(t, g, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	if got != want {
		t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
	}
}

func TestPulledMetrics(t *testing.T) {
	m, reg, r, p := newTest(t, Options{})
	// Before Attach only the push metrics and the runtime are there.
	if _, ok := value(t, reg, "kitsune_relay_bytes_total"); ok {
		t.Fatal("relay metrics before Attach")
	}
	m.Attach(Sources{Relay: r, Pool: p, MaxConns: 8192})

	r.c.WantsReceived.Add(10)
	r.c.Deferred.Add(11)
	r.c.HeldWants.Add(19)
	r.c.RecentHits.Add(13)
	r.c.NodeBuffersNew.Add(20)
	r.c.NodeBuffersReused.Add(21)
	r.c.Rewants.Add(14)
	r.c.RepliesCutOff.Add(15)
	r.c.RepliesGivenUp.Add(16)
	r.c.NodeSendFailures.Add(17)
	r.c.NodeStreamErrors.Add(18)
	r.c.WantsForwarded.Add(9)
	r.c.BlocksIn.Add(7)
	r.c.BytesIn.Add(7000)
	r.c.BlocksOut.Add(6)
	r.c.BytesOut.Add(6000)
	r.c.HavesOut.Add(3)
	r.c.DontHavesOut.Add(2)
	r.c.Failovers.Add(4)
	r.c.ReverseBlocks.Add(5)
	r.st = bitswap.Stats{Wants: 12, Peers: 3, Queued: 2, ReplyMemory: 22 << 20}
	p.set(
		downstream.NodeStatus{URL: urlA, ID: "peer-a", Connected: true, State: downstream.StateHealthy, InFlight: 5,
			Latency: 20 * time.Millisecond, Counters: downstream.NodeCounters{WantsSent: 40, Blocks: 30, Haves: 2, DontHaves: 1, Ejections: 1}},
		downstream.NodeStatus{URL: urlB, State: downstream.StateEjected, Connected: true,
			Counters: downstream.NodeCounters{Haves: 1, DontHaves: 4, Failures: 3, Ejections: 2}},
	)

	must(t, reg, 10, "kitsune_relay_wants_total", "direction", "in")
	must(t, reg, 9, "kitsune_relay_wants_total", "direction", "out")
	must(t, reg, 7, "kitsune_relay_blocks_total", "direction", "in")
	must(t, reg, 6, "kitsune_relay_blocks_total", "direction", "out")
	must(t, reg, 7000, "kitsune_relay_bytes_total", "direction", "in")
	must(t, reg, 6000, "kitsune_relay_bytes_total", "direction", "out")
	must(t, reg, 3, "kitsune_relay_haves_total", "direction", "in") // summed over the nodes
	must(t, reg, 3, "kitsune_relay_haves_total", "direction", "out")
	must(t, reg, 5, "kitsune_relay_dont_haves_total", "direction", "in")
	must(t, reg, 2, "kitsune_relay_dont_haves_total", "direction", "out")
	must(t, reg, 4, "kitsune_relay_failovers_total")
	must(t, reg, 11, "kitsune_relay_deferred_blocks_total")
	must(t, reg, 19, "kitsune_relay_held_wants_total")
	must(t, reg, 13, "kitsune_relay_recent_hits_total")
	must(t, reg, 20, "kitsune_relay_node_buffers_total", "outcome", "new")
	must(t, reg, 21, "kitsune_relay_node_buffers_total", "outcome", "reused")
	must(t, reg, 14, "kitsune_relay_rewants_total")
	must(t, reg, 15, "kitsune_relay_replies_cut_off_total")
	must(t, reg, 16, "kitsune_relay_replies_given_up_blocks_total")
	must(t, reg, 17, "kitsune_relay_node_send_failures_total")
	must(t, reg, 18, "kitsune_relay_node_stream_errors_total")
	must(t, reg, 8192, "kitsune_upstream_connections_limit")
	must(t, reg, 5, "kitsune_relay_reverse_blocks_total")
	must(t, reg, 12, "kitsune_relay_wants")
	must(t, reg, 2, "kitsune_relay_wants_queued")
	must(t, reg, 22<<20, "kitsune_relay_reply_memory_bytes")
	must(t, reg, 3, "kitsune_relay_peers")

	must(t, reg, 1, "kitsune_downstream_nodes", "state", "healthy")
	must(t, reg, 1, "kitsune_downstream_nodes", "state", "ejected")
	must(t, reg, 0, "kitsune_downstream_nodes", "state", "unknown")
	must(t, reg, 1, "kitsune_downstream_node_state", "node", urlA, "state", "healthy")
	must(t, reg, 0, "kitsune_downstream_node_state", "node", urlA, "state", "ejected")
	must(t, reg, 1, "kitsune_downstream_node_state", "node", urlB, "state", "ejected")
	must(t, reg, 5, "kitsune_downstream_wants_in_flight", "node", urlA)
	must(t, reg, 0.02, "kitsune_downstream_latency_seconds", "node", urlA)
	must(t, reg, 40, "kitsune_downstream_wants_sent_total", "node", urlA)
	must(t, reg, 30, "kitsune_downstream_answers_total", "node", urlA, "type", "block")
	must(t, reg, 4, "kitsune_downstream_answers_total", "node", urlB, "type", "dont_have")
	must(t, reg, 2, "kitsune_downstream_ejections_total", "node", urlB)
	must(t, reg, 3, "kitsune_downstream_failures_total", "node", urlB)

	// The node's state changes with the pool's.
	p.set(downstream.NodeStatus{URL: urlA, State: downstream.StateUnknown})
	must(t, reg, 0, "kitsune_downstream_node_state", "node", urlA, "state", "healthy")
	must(t, reg, 1, "kitsune_downstream_node_state", "node", urlA, "state", "unknown")
	if _, ok := value(t, reg, "kitsune_downstream_node_state", "node", urlB); ok {
		t.Fatal("a node gone from the pool still has series")
	}

	must(t, reg, 1, "kitsune_build_info")
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "kitsune_preload_calls_active"} {
		if _, ok := value(t, reg, name); !ok {
			t.Errorf("no %s", name)
		}
	}
}

// Every kitsune_ metric follows the naming conventions and carries only
// bounded labels: never a peer or a CID.
func TestNamesAndLabels(t *testing.T) {
	m, reg, r, p := newTest(t, Options{})
	m.Attach(Sources{Relay: r, Pool: p, Front: newHost(t, "/ip4/127.0.0.1/tcp/0")})
	p.set(downstream.NodeStatus{URL: urlA, ID: "peer-a", State: downstream.StateHealthy, Connected: true})
	m.WantDone(urlA, downstream.OutcomeBlock, time.Millisecond)
	m.CallFinished(preload.CallResult{Outcome: preload.OutcomeOK, Admitted: true})
	allowed := map[string]bool{"node": true, "state": true, "direction": true, "transport": true, "type": true,
		"outcome": true, "version": true, "revision": true, "goversion": true, "le": true}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		name := mf.GetName()
		if !strings.HasPrefix(name, "kitsune_") {
			continue
		}
		n++
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			if !strings.HasSuffix(name, "_total") {
				t.Errorf("counter %s lacks _total", name)
			}
		case dto.MetricType_GAUGE:
			if strings.HasSuffix(name, "_total") {
				t.Errorf("gauge %s ends in _total", name)
			}
		}
		if strings.Contains(name, "latency") || strings.Contains(name, "duration") || strings.Contains(name, "rtt") {
			if !strings.HasSuffix(name, "_seconds") {
				t.Errorf("%s is a time but not in _seconds", name)
			}
		}
		for _, s := range mf.GetMetric() {
			for _, lp := range s.GetLabel() {
				if !allowed[lp.GetName()] {
					t.Errorf("%s has label %q", name, lp.GetName())
				}
				if v := lp.GetValue(); strings.Contains(v, "peer-a") || strings.Contains(v, peer.ID("peer-a").String()) {
					t.Errorf("%s carries a peer ID", name)
				}
			}
		}
	}
	if n < 30 {
		t.Fatalf("only %d kitsune_ metrics", n)
	}
}

func TestTransport(t *testing.T) {
	for addr, want := range map[string]string{
		"/ip4/1.2.3.4/tcp/4001":                       "tcp",
		"/ip6/::1/tcp/4001":                           "tcp",
		"/ip4/1.2.3.4/udp/4001/quic-v1":               "quic-v1",
		"/ip4/1.2.3.4/tcp/8081/ws":                    "ws",
		"/dns4/example.org/tcp/443/wss":               "wss",
		"/ip4/1.2.3.4/tcp/443/tls/ws":                 "wss",
		"/ip4/1.2.3.4/tcp/443/tls/sni/example.org/ws": "wss",
		"/ip4/1.2.3.4/udp/4001/quic-v1/webtransport":  "webtransport",
		"/ip4/1.2.3.4/udp/4001/webrtc-direct":         "webrtc-direct",
		"/ip4/1.2.3.4/tcp/4001/p2p/12D3KooWLrBMfBL52UWoqiadpJSGEGSeoCPKuHiYqtu8tA2F3RZ9/p2p-circuit": "circuit",
		"/ip4/1.2.3.4/udp/4001": "other",
	} {
		if got := Transport(ma.StringCast(addr)); got != want {
			t.Errorf("Transport(%s) = %s, want %s", addr, got, want)
		}
	}
}

func newHost(t *testing.T, listen ...string) host.Host { return testkit.Host(t, listen...) }

// Real libp2p connections are counted by transport, once per peer.
func TestUpstreamPeersByTransport(t *testing.T) {
	front := newHost(t, "/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws", "/ip4/127.0.0.1/udp/0/quic-v1")
	m, reg, r, p := newTest(t, Options{})
	m.Attach(Sources{Relay: r, Pool: p, Front: front})
	dial := func(transport string) {
		c := newHost(t)
		for _, a := range front.Addrs() {
			if Transport(a) == transport {
				if err := c.Connect(context.Background(), peer.AddrInfo{ID: front.ID(), Addrs: []ma.Multiaddr{a}}); err != nil {
					t.Fatal(err)
				}
				return
			}
		}
		t.Fatalf("front has no %s address: %v", transport, front.Addrs())
	}
	dial("tcp")
	dial("ws")
	dial("ws")
	dial("quic-v1")
	deadline := time.Now().Add(5 * time.Second)
	for len(front.Network().Peers()) < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	must(t, reg, 1, "kitsune_upstream_peers", "transport", "tcp")
	must(t, reg, 2, "kitsune_upstream_peers", "transport", "ws")
	must(t, reg, 1, "kitsune_upstream_peers", "transport", "quic-v1")
	must(t, reg, 0, "kitsune_upstream_peers", "transport", "webtransport")
	must(t, reg, float64(len(front.Network().Conns())), "kitsune_upstream_connections")
	if got, _ := value(t, reg, "kitsune_upstream_connections"); got < 4 {
		t.Fatalf("kitsune_upstream_connections = %v with 4 peers connected", got)
	}
	if _, ok := value(t, reg, "kitsune_upstream_connections_limit"); ok {
		t.Fatal("a connection limit exported though none was given")
	}
	s := m.Status()
	if s.Upstream.Peers != 4 || s.Upstream.ByTransport["ws"] != 2 || s.PeerID != front.ID().String() {
		t.Fatalf("status upstream %+v, peer %s", s.Upstream, s.PeerID)
	}
}

func TestReady(t *testing.T) {
	m, _, r, p := newTest(t, Options{})
	if ok, why := m.Ready(); ok || why != "starting" {
		t.Fatalf("before Attach: %v %q", ok, why)
	}
	front := newHost(t, "/ip4/127.0.0.1/tcp/0")
	m.Attach(Sources{Relay: r, Pool: p, Front: front})
	if ok, why := m.Ready(); ok || !strings.Contains(why, "no downstream") {
		t.Fatalf("empty fleet: %v %q", ok, why)
	}
	p.set(downstream.NodeStatus{URL: urlA, Connected: true, State: downstream.StateEjected},
		downstream.NodeStatus{URL: urlB, State: downstream.StateUnknown})
	if ok, why := m.Ready(); ok || why != "no healthy downstream node (2 in the fleet: 1 ejected, 1 not connected)" {
		t.Fatalf("no healthy node: %v %q", ok, why)
	}
	p.set(downstream.NodeStatus{URL: urlA, Connected: true, State: downstream.StateEjected},
		downstream.NodeStatus{URL: urlB, Connected: true, State: downstream.StateHealthy})
	if ok, why := m.Ready(); !ok {
		t.Fatalf("one healthy node: not ready: %q", why)
	}
	m.SetClosing()
	if ok, why := m.Ready(); ok || why != "shutting down" {
		t.Fatalf("closing: %v %q", ok, why)
	}

	// A front host that listens nowhere is not ready.
	m2, _, r2, p2 := newTest(t, Options{})
	p2.set(downstream.NodeStatus{URL: urlA, Connected: true, State: downstream.StateHealthy})
	m2.Attach(Sources{Relay: r2, Pool: p2, Front: newHost(t)})
	if ok, why := m2.Ready(); ok || !strings.Contains(why, "not listening") {
		t.Fatalf("no listener: %v %q", ok, why)
	}
}

// Throughput is sampled into a bounded ring; rates are per second
// between consecutive samples.
func TestThroughputSamples(t *testing.T) {
	m, _, r, p := newTest(t, Options{SampleInterval: time.Second, SampleWindow: 5 * time.Second})
	m.Attach(Sources{Relay: r, Pool: p})
	t0 := time.Now()
	for i := 1; i <= 10; i++ {
		r.c.BytesOut.Add(uint64(1000 * i))
		r.c.BytesIn.Add(500)
		r.c.BlocksOut.Add(2)
		m.sample(t0.Add(time.Duration(i) * time.Second))
	}
	s := m.Status().Throughput
	if len(s.Samples) != 5 { // 6 readings kept: 5 rates
		t.Fatalf("%d samples, want 5", len(s.Samples))
	}
	last := s.Samples[len(s.Samples)-1]
	if last.BytesOut != 10000 || last.BytesIn != 500 || last.BlocksOut != 2 {
		t.Fatalf("last sample %+v", last)
	}
	if first := s.Samples[0]; first.BytesOut != 6000 || !first.Time.Before(last.Time) {
		t.Fatalf("first sample %+v, want 6000 B/s and older than the last", first)
	}
	if s.IntervalSeconds != 1 || s.WindowSeconds != 5 {
		t.Fatalf("interval %v window %v", s.IntervalSeconds, s.WindowSeconds)
	}
}

func testCID(t *testing.T, s string) cid.Cid {
	mh, err := multihash.Sum([]byte(s), multihash.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.Raw, mh)
}

func TestPreloadObserver(t *testing.T) {
	m, reg, r, p := newTest(t, Options{RecentCalls: 3})
	m.Attach(Sources{Relay: r, Pool: p, Preload: true})
	root := testCID(t, "root")
	call := preload.Call{Root: root, Path: root.String(), Node: preload.Target{URL: urlA}, Client: netip.MustParseAddr("192.0.2.7")}
	m.CallStarted(call)
	m.CallStarted(call)
	must(t, reg, 2, "kitsune_preload_calls_active")
	m.CallFinished(preload.CallResult{Call: call, Admitted: true, Outcome: preload.OutcomeOK, Status: 200, Duration: 1500 * time.Millisecond})
	m.CallFinished(preload.CallResult{Call: preload.Call{Client: call.Client}, Outcome: preload.OutcomeRateLimited, Status: 429})
	must(t, reg, 1, "kitsune_preload_calls_active")
	must(t, reg, 1, "kitsune_preload_calls_total", "outcome", "ok")
	must(t, reg, 1, "kitsune_preload_calls_total", "outcome", "rate_limited")
	must(t, reg, 0, "kitsune_preload_calls_total", "outcome", "timeout")
	must(t, reg, 1, "kitsune_preload_call_duration_seconds") // admitted calls only
	for i := 0; i < 3; i++ {
		m.CallFinished(preload.CallResult{Call: call, Admitted: i == 0, Outcome: preload.OutcomeTimeout, Status: 504})
	}
	s := m.Status().Preload
	if !s.Enabled || s.Active != 0 || len(s.Recent) != 3 {
		t.Fatalf("preload status %+v", s)
	}
	if got := s.Recent[0]; got.Outcome != "timeout" || got.Root != root.String() || got.Node != urlA || got.Client != "192.0.2.7" || got.Status != 504 {
		t.Fatalf("newest call %+v", got)
	}
}

func TestWantLatencyPerNode(t *testing.T) {
	m, reg, r, p := newTest(t, Options{})
	m.WantDone(urlA, downstream.OutcomeBlock, 3*time.Millisecond)
	m.WantDone(urlA, downstream.OutcomeDontHave, 1*time.Millisecond)
	m.WantDone(urlA, downstream.OutcomeCancelled, time.Second) // says nothing of the node
	m.WantDone(urlA, downstream.OutcomeFailed, time.Second)    // a timeout, not a latency
	m.WantDone(urlB, downstream.OutcomeHave, 2*time.Millisecond)
	must(t, reg, 2, "kitsune_downstream_want_latency_seconds", "node", urlA)
	must(t, reg, 1, "kitsune_downstream_want_latency_seconds", "node", urlB)

	// Node b leaves the fleet: its histogram goes with it.
	p.set(downstream.NodeStatus{URL: urlA})
	m.Attach(Sources{Relay: r, Pool: p})
	m.prune()
	must(t, reg, 2, "kitsune_downstream_want_latency_seconds", "node", urlA)
	if _, ok := value(t, reg, "kitsune_downstream_want_latency_seconds", "node", urlB); ok {
		t.Fatal("node b's latency histogram outlived it")
	}
	// It comes back: a new series, not the dropped one's Observer
	// (WantDone keeps one per node).
	m.WantDone(urlB, downstream.OutcomeBlock, time.Millisecond)
	m.WantDone(urlA, downstream.OutcomeBlock, time.Millisecond)
	must(t, reg, 1, "kitsune_downstream_want_latency_seconds", "node", urlB)
	must(t, reg, 3, "kitsune_downstream_want_latency_seconds", "node", urlA)
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestAdminEndpoints(t *testing.T) {
	m, reg, r, p := newTest(t, Options{})
	srv := httptest.NewServer(Handler(m, reg, nil))
	defer srv.Close()

	if resp, body := get(t, srv.URL+"/healthz"); resp.StatusCode != 200 || body != "ok\n" {
		t.Fatalf("/healthz %d %q", resp.StatusCode, body)
	}
	if resp, body := get(t, srv.URL+"/readyz"); resp.StatusCode != 503 || body != "not ready: starting\n" {
		t.Fatalf("/readyz before Attach: %d %q", resp.StatusCode, body)
	}
	p.set(downstream.NodeStatus{URL: urlA, ID: "peer-a", Connected: true, State: downstream.StateHealthy})
	m.Attach(Sources{Relay: r, Pool: p, Front: newHost(t, "/ip4/127.0.0.1/tcp/0")})
	if resp, body := get(t, srv.URL+"/readyz"); resp.StatusCode != 200 || body != "ready\n" {
		t.Fatalf("/readyz: %d %q", resp.StatusCode, body)
	}

	resp, body := get(t, srv.URL+"/metrics")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") ||
		!strings.Contains(body, `kitsune_downstream_node_state{node="http://10.0.0.1:5001",state="healthy"} 1`) {
		t.Fatalf("/metrics %d %s:\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}

	resp, body = get(t, srv.URL+"/api/status")
	var st Status
	if err := json.Unmarshal([]byte(body), &st); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("/api/status: %v %s", err, body)
	}
	if !st.Ready || len(st.Nodes) != 1 || st.Nodes[0].PeerID != peer.ID("peer-a").String() || st.Nodes[0].State != "healthy" {
		t.Fatalf("/api/status: %+v", st)
	}
	// Scripts can rely on the snake_case names.
	for _, k := range []string{`"nodes"`, `"peer_id"`, `"blocks_served"`, `"by_transport"`, `"bytes_out"`, `"samples"`, `"recent"`} {
		if !strings.Contains(body, k) {
			t.Errorf("/api/status lacks %s", k)
		}
	}

	resp, body = get(t, srv.URL+"/")
	if resp.StatusCode != 200 || !strings.Contains(body, "<canvas") || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Fatalf("/: %d %v", resp.StatusCode, resp.Header)
	}
	for _, asset := range []string{"/app.js", "/style.css"} {
		if resp, _ := get(t, srv.URL+asset); resp.StatusCode != 200 {
			t.Errorf("%s: %d", asset, resp.StatusCode)
		}
	}
	// Nothing is loaded from elsewhere.
	for _, f := range []string{"web/index.html", "web/app.js", "web/style.css"} {
		b, err := webFS.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "http://") || strings.Contains(string(b), "https://") || strings.Contains(string(b), "//cdn") {
			t.Errorf("%s refers to another site", f)
		}
	}
	if resp, body := get(t, srv.URL+"/debug/pprof/"); resp.StatusCode != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("/debug/pprof/: %d", resp.StatusCode)
	}
	if resp, _ := get(t, srv.URL+"/nope"); resp.StatusCode != 404 {
		t.Fatalf("/nope: %d", resp.StatusCode)
	}
}

// Listen serves the handler and samples throughput until Close.
func TestServer(t *testing.T) {
	m, reg, r, p := newTest(t, Options{SampleInterval: 20 * time.Millisecond})
	m.Attach(Sources{Relay: r, Pool: p})
	s, err := Listen("127.0.0.1:0", m, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.c.BytesOut.Add(1 << 20)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, body := get(t, s.URL()+"/api/status")
		var st Status
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			t.Fatal(err)
		}
		peak := 0.0
		for _, x := range st.Throughput.Samples {
			peak = max(peak, x.BytesOut)
		}
		if peak > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sampler never saw the bytes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(s.URL() + "/healthz"); err == nil {
		t.Fatal("still serving after Close")
	}
	var nilServer *Server
	if nilServer.URL() != "" || nilServer.Close(context.Background()) != nil {
		t.Fatal("nil Server is not a no-op")
	}
}
