package downstream

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// ---- pool without any Kubo ----

func TestSetMembersValidation(t *testing.T) {
	p := newTestPool(t, Options{})
	if err := p.SetMembers("flags", []string{"/ip4/10.0.1.42/tcp/5001", "http://10.0.1.43:5001"}); err != nil {
		t.Fatal(err)
	}
	before := poolURLs(p)
	if want := []string{"http://10.0.1.42:5001", "http://10.0.1.43:5001"}; !slices.Equal(before, want) {
		t.Fatalf("pool = %q; want %q", before, want)
	}

	// A bad address anywhere in the list: an error, and nothing changes,
	// not even the good addresses before it.
	for _, addrs := range [][]string{
		{"http://10.0.1.44:5001", "/ip4/10.0.1.45/udp/5001"},
		{"not an address"},
		{"http://10.0.1.44:5001", ""},
	} {
		if err := p.SetMembers("flags", addrs); err == nil {
			t.Errorf("SetMembers(%q): want an error", addrs)
		}
		if got := poolURLs(p); !slices.Equal(got, before) {
			t.Fatalf("after a rejected SetMembers(%q) the pool is %q; want %q", addrs, got, before)
		}
		if err := p.SetMembers("other", addrs); err == nil {
			t.Errorf("SetMembers(other, %q): want an error", addrs)
		}
		if got := poolURLs(p); !slices.Equal(got, before) {
			t.Fatalf("after a rejected SetMembers(other, %q) the pool is %q; want %q", addrs, got, before)
		}
	}

	// The same node twice in one source, even spelled differently.
	for _, addrs := range [][]string{
		{"http://10.0.1.44:5001", "http://10.0.1.44:5001"},
		{"/ip4/10.0.1.44/tcp/5001", "http://10.0.1.44:5001/"},
		{"/ip4/10.0.1.44/tcp/5001", "/ip4/10.0.1.44/tcp/5001/http"},
	} {
		err := p.SetMembers("flags", addrs)
		if err == nil || !strings.Contains(err.Error(), "10.0.1.44") {
			t.Errorf("SetMembers(%q) = %v; want an error naming the node", addrs, err)
		}
		if got := poolURLs(p); !slices.Equal(got, before) {
			t.Fatalf("after a rejected SetMembers(%q) the pool is %q; want %q", addrs, got, before)
		}
	}
}

func TestSetMembersUnion(t *testing.T) {
	p := newTestPool(t, Options{})
	must := func(src string, addrs ...string) {
		t.Helper()
		if err := p.SetMembers(src, addrs); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want ...string) {
		t.Helper()
		slices.Sort(want)
		if got := poolURLs(p); !slices.Equal(got, want) {
			t.Fatalf("pool = %q; want %q", got, want)
		}
		if p.Len() != len(want) {
			t.Fatalf("Len = %d; want %d", p.Len(), len(want))
		}
	}
	must("flags", "/ip4/10.0.1.1/tcp/5001", "/ip4/10.0.1.2/tcp/5001")
	must("dns:kubo:5001", "http://10.0.1.2:5001", "http://10.0.1.3:5001")
	must("file", "http://10.0.1.4:5001")
	check("http://10.0.1.1:5001", "http://10.0.1.2:5001", "http://10.0.1.3:5001", "http://10.0.1.4:5001")

	// The same node from two sources is one node.
	byURL := map[string]NodeStatus{}
	for _, s := range p.Nodes() {
		if _, dup := byURL[s.URL]; dup {
			t.Fatalf("%s listed twice", s.URL)
		}
		byURL[s.URL] = s
	}

	// The DNS answer drops 10.0.1.2, but the flags still list it.
	must("dns:kubo:5001", "http://10.0.1.3:5001")
	check("http://10.0.1.1:5001", "http://10.0.1.2:5001", "http://10.0.1.3:5001", "http://10.0.1.4:5001")
	// The flags drop it too: now it goes.
	must("flags", "/ip4/10.0.1.1/tcp/5001")
	check("http://10.0.1.1:5001", "http://10.0.1.3:5001", "http://10.0.1.4:5001")
	// A source emptied.
	must("file")
	check("http://10.0.1.1:5001", "http://10.0.1.3:5001")
	must("dns:kubo:5001")
	must("flags")
	check()
	// And back.
	must("file", "http://10.0.1.4:5001")
	check("http://10.0.1.4:5001")
}

// TestNodeAddrAsGiven: NodeStatus.Addr is documented as "the address as the
// operator gave it", URL as its RPC base URL.
func TestNodeAddrAsGiven(t *testing.T) {
	p := newTestPool(t, Options{})
	if err := p.SetMembers("flags", []string{"/dns4/kubo-0.kubo/tcp/5001"}); err != nil {
		t.Fatal(err)
	}
	s := p.Nodes()[0]
	if s.URL != "http://kubo-0.kubo:5001" {
		t.Errorf("URL = %q", s.URL)
	}
	if s.Addr != "/dns4/kubo-0.kubo/tcp/5001" {
		t.Errorf("Addr = %q; want the operator's spelling %q", s.Addr, "/dns4/kubo-0.kubo/tcp/5001")
	}
}

func TestPoolNothingConnected(t *testing.T) {
	p := newTestPool(t, Options{MinTimeout: 300 * time.Millisecond})
	c := randCID(t)
	if id, ok := p.Pick(c, nil); ok {
		t.Fatalf("empty pool: Pick = %s, true", id)
	}
	if u, ok := p.ChooseAPI(c); ok {
		t.Fatalf("empty pool: ChooseAPI = %q, true", u)
	}
	if err := p.SetMembers("flags", []string{"http://10.0.1.1:5001", "http://10.0.1.2:5001"}); err != nil {
		t.Fatal(err)
	}
	// Members, but none connected (Run was never called).
	if id, ok := p.Pick(c, nil); ok {
		t.Fatalf("nothing connected: Pick = %s, true", id)
	}
	if u, ok := p.ChooseAPI(c); ok {
		t.Fatalf("nothing connected: ChooseAPI = %q, true", u)
	}
	if p.ConnectedCount() != 0 || p.HealthyCount() != 0 {
		t.Fatalf("ConnectedCount %d, HealthyCount %d", p.ConnectedCount(), p.HealthyCount())
	}
	for _, s := range p.Nodes() {
		if s.Connected || s.State != StateUnknown || s.ID != "" {
			t.Errorf("%s: %+v before Run", s.URL, s)
		}
	}
	// Bookkeeping for a peer that is not a node is a no-op.
	stranger := testPeerIDs(t, 1)[0]
	p.Sent(stranger)
	p.Done(stranger, OutcomeFailed, time.Second)
	p.Done(stranger, OutcomeBlock, time.Second)
	if p.IsNode(stranger) {
		t.Error("IsNode(stranger)")
	}
	if got := p.Timeout(stranger); got != 300*time.Millisecond {
		t.Errorf("Timeout(stranger) = %v; want MinTimeout", got)
	}
	if err := p.Fetch(context.Background(), stranger, c); err == nil {
		t.Error("Fetch on a stranger: want an error")
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{StateUnknown: "unknown", StateHealthy: "healthy", StateEjected: "ejected", State(42): "unknown"} {
		if s.String() != want {
			t.Errorf("State(%d).String() = %q; want %q", int(s), s.String(), want)
		}
	}
}

// ---- a fake Kubo: an RPC API in front of a plain libp2p host ----

// fakeKubo answers the RPC calls the pool makes (/api/v0/id, version,
// block/stat) for a libp2p host listening on 127.0.0.1, which answers
// libp2p pings as any go-libp2p host does. The host can be closed and
// replaced (a rebuilt container) behind the same API address.
type fakeKubo struct {
	t   *testing.T
	srv *httptest.Server

	mu       sync.Mutex
	h        host.Host
	failing  bool // every call answers 500
	versions int
	stats    []string
}

func newFakeKubo(t *testing.T) *fakeKubo {
	t.Helper()
	k := &fakeKubo{t: t}
	k.h = newListeningHost(t)
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v0/", k.serve)
	k.srv = httptest.NewServer(mux)
	t.Cleanup(k.srv.Close)
	return k
}

func newListeningHost(t *testing.T) host.Host { return testkit.Host(t, "/ip4/127.0.0.1/tcp/0") }

func (k *fakeKubo) url() string { return k.srv.URL }

func (k *fakeKubo) host() host.Host {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.h
}

func (k *fakeKubo) id() peer.ID { return k.host().ID() }

func (k *fakeKubo) setFailing(v bool) {
	k.mu.Lock()
	k.failing = v
	k.mu.Unlock()
}

func (k *fakeKubo) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	k.mu.Lock()
	h, failing := k.h, k.failing
	if r.URL.Path == "/api/v0/version" {
		k.versions++
	}
	if r.URL.Path == "/api/v0/block/stat" {
		k.stats = append(k.stats, r.URL.Query().Get("arg"))
	}
	k.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if failing {
		w.WriteHeader(http.StatusInternalServerError)
		_ = json.NewEncoder(w).Encode(map[string]any{"Message": "fake kubo is failing", "Code": 0, "Type": "error"})
		return
	}
	var out any
	switch r.URL.Path {
	case "/api/v0/id":
		var addrs []string
		for _, a := range h.Addrs() {
			addrs = append(addrs, a.String()+"/p2p/"+h.ID().String())
		}
		// Kubo lists relay addresses too; the pool must skip them.
		addrs = append(addrs, "/ip4/203.0.113.9/tcp/4001/p2p/"+h.ID().String()+"/p2p-circuit/p2p/"+h.ID().String())
		out = map[string]any{"ID": h.ID().String(), "Addresses": addrs, "AgentVersion": "kubo/0.41.0/fake"}
	case "/api/v0/version":
		out = map[string]any{"Version": "0.41.0", "Commit": "fake"}
	case "/api/v0/block/stat":
		out = map[string]any{"Key": r.URL.Query().Get("arg"), "Size": 1}
	default:
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(map[string]any{"Message": "no such command", "Code": 0, "Type": "error"})
		return
	}
	_ = json.NewEncoder(w).Encode(out)
}

func (k *fakeKubo) versionCalls() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.versions
}

// ---- listener recorder ----

type event struct {
	up        bool
	id        peer.ID
	connected bool
	at        time.Time
}

func (e event) String() string {
	if e.up {
		return fmt.Sprintf("up(%s)", e.id.ShortString())
	}
	return fmt.Sprintf("down(%s, connected=%v)", e.id.ShortString(), e.connected)
}

type recorder struct {
	mu     sync.Mutex
	events []event
	notify chan struct{}
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) add(e event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) NodeUp(id peer.ID) { r.add(event{up: true, id: id, at: time.Now()}) }
func (r *recorder) NodeDown(id peer.ID, connected bool) {
	r.add(event{id: id, connected: connected, at: time.Now()})
}

func (r *recorder) all() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// wait returns the first event at or after index from that matches, and
// the index after it.
func (r *recorder) wait(t *testing.T, from int, d time.Duration, match func(event) bool, what string) (event, int) {
	t.Helper()
	deadline := time.After(d)
	for {
		evs := r.all()
		for i := from; i < len(evs); i++ {
			if match(evs[i]) {
				return evs[i], i + 1
			}
		}
		select {
		case <-r.notify:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out after %v waiting for %s; events: %v", d, what, r.all())
		}
	}
}

func isUp(id peer.ID) func(event) bool {
	return func(e event) bool { return e.up && e.id == id }
}

func isDown(id peer.ID, connected bool) func(event) bool {
	return func(e event) bool { return !e.up && e.id == id && e.connected == connected }
}

// ---- running pool ----

func fastOptions() Options {
	return Options{
		DialTimeout:    2 * time.Second,
		HealthInterval: 100 * time.Millisecond,
		HealthTimeout:  200 * time.Millisecond,
		EjectAfter:     3,
		EjectBase:      300 * time.Millisecond,
		EjectMax:       5 * time.Second,
		MinBackoff:     50 * time.Millisecond,
		MaxBackoff:     400 * time.Millisecond,
		MinTimeout:     200 * time.Millisecond,
		MaxTimeout:     2 * time.Second,
	}
}

type runningPool struct {
	*Pool
	rec    *recorder
	cancel context.CancelFunc
	done   chan struct{}
}

// startPool runs a pool over the fake nodes, each its own source entry.
func startPool(t *testing.T, opts Options, kubos ...*fakeKubo) *runningPool {
	t.Helper()
	p := newTestPool(t, opts)
	rec := newRecorder()
	p.SetListener(rec)
	var urls []string
	for _, k := range kubos {
		urls = append(urls, k.url())
	}
	if err := p.SetMembers("test", urls); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rp := &runningPool{Pool: p, rec: rec, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(rp.done)
		p.Run(ctx)
	}()
	t.Cleanup(rp.stop)
	return rp
}

func (rp *runningPool) stop() {
	rp.cancel()
	select {
	case <-rp.done:
	case <-time.After(10 * time.Second):
		panic("Pool.Run did not return after its context ended")
	}
}

func (rp *runningPool) status(t *testing.T, url string) NodeStatus {
	t.Helper()
	for _, s := range rp.Nodes() {
		if s.URL == url {
			return s
		}
	}
	t.Fatalf("%s is not in the pool", url)
	return NodeStatus{}
}

func TestPoolNodeJoins(t *testing.T) {
	k := newFakeKubo(t)
	rp := startPool(t, fastOptions(), k)
	id := k.id()
	rp.rec.wait(t, 0, 5*time.Second, isUp(id), "NodeUp")

	s := rp.status(t, k.url())
	if s.ID != id || !s.Connected || s.State != StateHealthy {
		t.Fatalf("status after joining: %+v", s)
	}
	if len(s.Addrs) == 0 {
		t.Fatal("no swarm addresses learnt")
	}
	for _, a := range s.Addrs {
		if strings.Contains(a.String(), "p2p-circuit") || strings.Contains(a.String(), "/p2p/") {
			t.Errorf("learnt address %s: want bare direct addresses", a)
		}
	}
	if rp.host.Network().Connectedness(id) != network.Connected {
		t.Fatal("back host not connected to the node")
	}
	if !rp.host.ConnManager().IsProtected(id, protectTag) {
		t.Error("connection to the node is not protected from the connection manager")
	}
	if !rp.IsNode(id) || rp.ConnectedCount() != 1 || rp.HealthyCount() != 1 {
		t.Fatalf("IsNode %v, ConnectedCount %d, HealthyCount %d", rp.IsNode(id), rp.ConnectedCount(), rp.HealthyCount())
	}
	c := randCID(t)
	if got, ok := rp.Pick(c, nil); !ok || got != id {
		t.Fatalf("Pick = %s, %v; want %s", got, ok, id)
	}
	if got, ok := rp.Pick(c, func(p peer.ID) bool { return p == id }); ok {
		t.Fatalf("Pick with the only node skipped = %s, true", got)
	}
	if u, ok := rp.ChooseAPI(c); !ok || u != k.url() {
		t.Fatalf("ChooseAPI = %q, %v; want %q", u, ok, k.url())
	}

	// Active checks run and measure the ping RTT.
	calls := k.versionCalls()
	waitFor(t, 3*time.Second, "health checks", func() bool { return k.versionCalls() >= calls+2 })
	waitFor(t, 3*time.Second, "a ping RTT", func() bool { return rp.status(t, k.url()).PingRTT > 0 })
	if s := rp.status(t, k.url()); s.State != StateHealthy || s.Failures != 0 || s.LastError != "" {
		t.Fatalf("after passing checks: %+v", s)
	}

	// Fetch asks the node through block/stat.
	if err := rp.Fetch(context.Background(), id, c); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	stats := slices.Clone(k.stats)
	k.mu.Unlock()
	if !slices.Equal(stats, []string{c.String()}) {
		t.Errorf("block/stat calls: %q; want [%s]", stats, c)
	}
	if got := rp.status(t, k.url()).Counters.MissFetches; got != 1 {
		t.Errorf("MissFetches = %d", got)
	}

	// Shutting down reports the node down before Run returns.
	n := len(rp.rec.all())
	rp.stop()
	evs := rp.rec.all()[n:]
	if !slices.ContainsFunc(evs, isDown(id, false)) {
		t.Errorf("events after Run returned: %v; want NodeDown(%s, false)", evs, id.ShortString())
	}
}

func TestPoolBookkeeping(t *testing.T) {
	k := newFakeKubo(t)
	opts := fastOptions()
	opts.EjectAfter = 3
	rp := startPool(t, opts, k)
	id := k.id()
	rp.rec.wait(t, 0, 5*time.Second, isUp(id), "NodeUp")
	st := func() NodeStatus { return rp.status(t, k.url()) }

	for range 5 {
		rp.Sent(id)
	}
	if s := st(); s.InFlight != 5 || s.Counters.WantsSent != 5 {
		t.Fatalf("after 5 Sent: InFlight %d, WantsSent %d", s.InFlight, s.Counters.WantsSent)
	}
	rp.Done(id, OutcomeBlock, 10*time.Millisecond)
	rp.Done(id, OutcomeHave, 10*time.Millisecond)
	rp.Done(id, OutcomeDontHave, 10*time.Millisecond)
	rp.Done(id, OutcomeCancelled, 0)
	s := st()
	if s.InFlight != 1 || s.Counters.Blocks != 1 || s.Counters.Haves != 1 || s.Counters.DontHaves != 1 {
		t.Fatalf("after 4 Done: %+v", s)
	}
	rp.Done(id, OutcomeBlock, 10*time.Millisecond)
	rp.Done(id, OutcomeBlock, 10*time.Millisecond) // one more than was sent
	if s := st(); s.InFlight != 0 {
		t.Fatalf("InFlight = %d; must not go below zero", s.InFlight)
	}

	// Failures in a row eject; an answer in between resets the count.
	rp.Done(id, OutcomeFailed, 0)
	rp.Done(id, OutcomeFailed, 0)
	rp.Done(id, OutcomeDontHave, 10*time.Millisecond)
	rp.Done(id, OutcomeFailed, 0)
	rp.Done(id, OutcomeFailed, 0)
	if s := st(); s.State != StateHealthy || s.Failures != 2 || s.Counters.Failures != 4 {
		t.Fatalf("2+2 failures with an answer between: %+v", s)
	}
	// A cancelled want says nothing of the node: it does not reset.
	rp.Done(id, OutcomeCancelled, 0)
	if s := st(); s.Failures != 2 {
		t.Fatalf("Cancelled changed the failure count to %d", s.Failures)
	}
	n := len(rp.rec.all())
	rp.Done(id, OutcomeFailed, 0)
	rp.rec.wait(t, n, 2*time.Second, isDown(id, true), "NodeDown(id, true) after EjectAfter failures")
	if s := st(); s.State != StateEjected || s.Counters.Ejections != 1 || !s.Connected {
		t.Fatalf("after ejection: %+v", s)
	}
}

func TestPoolTimeout(t *testing.T) {
	k := newFakeKubo(t)
	opts := fastOptions()
	opts.MinTimeout, opts.MaxTimeout = 200*time.Millisecond, 2*time.Second
	rp := startPool(t, opts, k)
	id := k.id()
	rp.rec.wait(t, 0, 5*time.Second, isUp(id), "NodeUp")
	lat := func() time.Duration { return rp.status(t, k.url()).Latency }

	// No latency measured yet: twice the minimum.
	if got := rp.Timeout(id); got != 400*time.Millisecond {
		t.Errorf("unmeasured: Timeout = %v; want 2×MinTimeout = 400ms", got)
	}
	// The first sample sets the average.
	rp.Sent(id)
	rp.Done(id, OutcomeBlock, 50*time.Millisecond)
	if lat() != 50*time.Millisecond {
		t.Fatalf("Latency after one 50ms sample = %v", lat())
	}
	if got := rp.Timeout(id); got != 500*time.Millisecond {
		t.Errorf("latency 50ms: Timeout = %v; want 10×50ms", got)
	}
	// Then it moves a fifth of the way to each new sample.
	rp.Done(id, OutcomeDontHave, 100*time.Millisecond)
	if l := lat(); l < 59*time.Millisecond || l > 61*time.Millisecond {
		t.Fatalf("Latency after 50ms then 100ms = %v; want 60ms", l)
	}
	if got := rp.Timeout(id); got < 590*time.Millisecond || got > 610*time.Millisecond {
		t.Errorf("latency 60ms: Timeout = %v; want 600ms", got)
	}
	// Failures and cancellations carry no latency.
	rp.Done(id, OutcomeFailed, 5*time.Second)
	rp.Done(id, OutcomeCancelled, 5*time.Second)
	if l := lat(); l < 59*time.Millisecond || l > 61*time.Millisecond {
		t.Fatalf("Latency moved to %v on a failure or cancellation", l)
	}
	// A slow node is capped at MaxTimeout.
	for range 20 {
		rp.Done(id, OutcomeHave, time.Second)
	}
	if got := rp.Timeout(id); got != 2*time.Second {
		t.Errorf("latency %v: Timeout = %v; want MaxTimeout", lat(), got)
	}
	// A fast node gets at least MinTimeout.
	for range 60 {
		rp.Done(id, OutcomeBlock, time.Millisecond)
	}
	if l := lat(); l > 5*time.Millisecond {
		t.Fatalf("Latency after many 1ms samples = %v", l)
	}
	if got := rp.Timeout(id); got != 200*time.Millisecond {
		t.Errorf("latency %v: Timeout = %v; want MinTimeout", lat(), got)
	}
	// In between it follows the average, monotonically.
	prev := rp.Timeout(id)
	for range 30 {
		rp.Done(id, OutcomeBlock, 150*time.Millisecond)
		got := rp.Timeout(id)
		if got < prev || got < opts.MinTimeout || got > opts.MaxTimeout {
			t.Fatalf("Timeout went from %v to %v with latency rising to %v", prev, got, lat())
		}
		prev = got
	}
	if l := lat(); prev != min(max(10*l, opts.MinTimeout), opts.MaxTimeout) {
		t.Errorf("latency %v: Timeout = %v", l, prev)
	}
}

// TestPoolPassiveEjection: failed wants eject a node; with no other node
// it still gets wants; after EjectBase and a passing check it is
// re-admitted; a second ejection in a row lasts longer.
func TestPoolPassiveEjection(t *testing.T) {
	k := newFakeKubo(t)
	opts := fastOptions()
	rp := startPool(t, opts, k)
	id := k.id()
	_, i := rp.rec.wait(t, 0, 5*time.Second, isUp(id), "NodeUp")

	eject := func() event {
		for range opts.EjectAfter {
			rp.Sent(id)
			rp.Done(id, OutcomeFailed, 0)
		}
		var e event
		e, i = rp.rec.wait(t, i, 2*time.Second, isDown(id, true), "NodeDown(id, true)")
		return e
	}
	down := eject()
	if s := rp.status(t, k.url()); s.State != StateEjected || !s.Connected {
		t.Fatalf("after ejection: %+v", s)
	}
	if rp.HealthyCount() != 0 || rp.ConnectedCount() != 1 {
		t.Errorf("HealthyCount %d, ConnectedCount %d", rp.HealthyCount(), rp.ConnectedCount())
	}
	// The only node: still chosen rather than nothing.
	for _, c := range randCIDs(t, 20) {
		if got, ok := rp.Pick(c, nil); !ok || got != id {
			t.Fatalf("ejected only node: Pick = %s, %v; want it anyway", got, ok)
		}
	}
	up, j := rp.rec.wait(t, i, 3*time.Second, isUp(id), "re-admission")
	i = j
	// Events are timed on delivery, a little after the fact: allow 20ms.
	if d := up.at.Sub(down.at); d < opts.EjectBase-20*time.Millisecond {
		t.Errorf("re-admitted %v after ejection; want at least EjectBase %v", d, opts.EjectBase)
	}
	if s := rp.status(t, k.url()); s.State != StateHealthy || s.Failures != 0 {
		t.Fatalf("after re-admission: %+v", s)
	}

	// Ejected again at once: twice as long.
	down2 := eject()
	up2, _ := rp.rec.wait(t, i, 4*time.Second, isUp(id), "second re-admission")
	if d := up2.at.Sub(down2.at); d < 2*opts.EjectBase-20*time.Millisecond {
		t.Errorf("second ejection in a row lasted %v; want at least 2×EjectBase = %v", d, 2*opts.EjectBase)
	}
	if s := rp.status(t, k.url()); s.Counters.Ejections != 2 {
		t.Errorf("Ejections = %d; want 2", s.Counters.Ejections)
	}
}

// TestPoolPrefersHealthy: with one node ejected, every want goes to the
// healthy one unless the caller excludes it; with all ejected, the least
// failing is chosen.
func TestPoolPrefersHealthy(t *testing.T) {
	k1, k2 := newFakeKubo(t), newFakeKubo(t)
	opts := fastOptions()
	opts.EjectBase = 5 * time.Second // stay ejected for the whole test
	opts.EjectMax = 10 * time.Second
	rp := startPool(t, opts, k1, k2)
	id1, id2 := k1.id(), k2.id()
	_, i := rp.rec.wait(t, 0, 5*time.Second, isUp(id1), "node 1 up")
	rp.rec.wait(t, 0, 5*time.Second, isUp(id2), "node 2 up")

	cids := randCIDs(t, 200)
	seen := map[peer.ID]int{}
	for _, c := range cids {
		got, ok := rp.Pick(c, nil)
		if !ok {
			t.Fatal("Pick failed with two healthy nodes")
		}
		seen[got]++
	}
	if seen[id1] == 0 || seen[id2] == 0 {
		t.Fatalf("two healthy nodes, but Pick spread %v", seen)
	}

	for range opts.EjectAfter {
		rp.Done(id1, OutcomeFailed, 0)
	}
	rp.rec.wait(t, i, 2*time.Second, isDown(id1, true), "node 1 ejected")
	for _, c := range cids {
		if got, ok := rp.Pick(c, nil); !ok || got != id2 {
			t.Fatalf("Pick = %s, %v; want the healthy node %s", got.ShortString(), ok, id2.ShortString())
		}
		// Excluding the healthy node leaves the ejected one, not nothing.
		if got, ok := rp.Pick(c, func(p peer.ID) bool { return p == id2 }); !ok || got != id1 {
			t.Fatalf("Pick without node 2 = %s, %v; want the ejected node 1", got.ShortString(), ok)
		}
		if got, ok := rp.Pick(c, func(peer.ID) bool { return true }); ok {
			t.Fatalf("Pick with everything excluded = %s, true", got)
		}
	}

	// Both ejected, node 2 with more failures: node 1 is the least bad.
	for range opts.EjectAfter + 2 {
		rp.Done(id2, OutcomeFailed, 0)
	}
	rp.rec.wait(t, 0, 2*time.Second, isDown(id2, true), "node 2 ejected")
	for _, c := range cids {
		if got, ok := rp.Pick(c, nil); !ok || got != id1 {
			t.Fatalf("all ejected: Pick = %s, %v; want node 1 (fewer failures)", got.ShortString(), ok)
		}
	}
}

// TestPoolActiveCheckEjection: the RPC API answering 500 fails the active
// checks, which eject the node; once it answers again the node is
// re-admitted.
func TestPoolActiveCheckEjection(t *testing.T) {
	k := newFakeKubo(t)
	opts := fastOptions()
	rp := startPool(t, opts, k)
	id := k.id()
	_, i := rp.rec.wait(t, 0, 5*time.Second, isUp(id), "NodeUp")

	k.setFailing(true)
	start := time.Now()
	down, i := rp.rec.wait(t, i, 3*time.Second, isDown(id, true), "ejection by failing checks")
	// Three checks at 100ms intervals, the first possibly already under
	// way: not much before 200ms.
	if d := down.at.Sub(start); d < time.Duration(opts.EjectAfter-1)*opts.HealthInterval-50*time.Millisecond {
		t.Errorf("ejected %v after the API started failing; want EjectAfter checks", d)
	}
	s := rp.status(t, k.url())
	if s.State != StateEjected || !s.Connected || !strings.Contains(s.LastError, "version") {
		t.Fatalf("after failing checks: %+v", s)
	}
	// Still failing after the ejection time: stays out.
	time.Sleep(opts.EjectBase + 2*opts.HealthInterval)
	if s := rp.status(t, k.url()); s.State != StateEjected {
		t.Fatalf("re-admitted while the API still fails: %+v", s)
	}
	if evs := rp.rec.all()[i:]; slices.ContainsFunc(evs, isUp(id)) {
		t.Fatalf("NodeUp while the API still fails: %v", evs)
	}
	k.setFailing(false)
	rp.rec.wait(t, i, 3*time.Second, isUp(id), "re-admission after the API recovered")
	if s := rp.status(t, k.url()); s.State != StateHealthy {
		t.Fatalf("after recovery: %+v", s)
	}
}

// TestPoolReconnectNewPeerID: the node's libp2p host goes away (NodeDown,
// not connected), comes back as a new host with a new peer ID behind the
// same API URL, and the pool follows it.
func TestPoolReconnectNewPeerID(t *testing.T) {
	k := newFakeKubo(t)
	opts := fastOptions()
	rp := startPool(t, opts, k)
	oldID := k.id()
	_, i := rp.rec.wait(t, 0, 5*time.Second, isUp(oldID), "NodeUp")
	for range 3 {
		rp.Sent(oldID)
	}

	// The host dies; the API keeps describing it for a while (a container
	// restarting), so reconnection attempts fail and back off.
	k.mu.Lock()
	oh := k.h
	k.mu.Unlock()
	oh.Close()
	_, i = rp.rec.wait(t, i, 3*time.Second, isDown(oldID, false), "NodeDown(id, false)")
	s := rp.status(t, k.url())
	if s.Connected || s.State == StateHealthy || s.InFlight != 0 {
		t.Fatalf("after the host went away: %+v", s)
	}
	if got, ok := rp.Pick(randCID(t), nil); ok {
		t.Fatalf("Pick = %s with the only node gone", got)
	}
	time.Sleep(300 * time.Millisecond) // a few failed attempts
	if s := rp.status(t, k.url()); s.Connected || s.LastError == "" {
		t.Fatalf("reconnected to a closed host? %+v", s)
	}

	// The rebuilt node: new host, new peer ID, same API.
	nh := newListeningHost(t)
	k.mu.Lock()
	k.h = nh
	k.mu.Unlock()
	newID := nh.ID()
	if newID == oldID {
		t.Fatal("test setup: same peer ID")
	}
	rp.rec.wait(t, i, 3*time.Second, isUp(newID), "NodeUp with the new peer ID")
	s = rp.status(t, k.url())
	if s.ID != newID || !s.Connected || s.State != StateHealthy {
		t.Fatalf("after the node came back: %+v", s)
	}
	if rp.Len() != 1 {
		t.Fatalf("Len = %d; the rebuilt node must not be a second member", rp.Len())
	}
	if !rp.IsNode(newID) || rp.IsNode(oldID) {
		t.Fatalf("IsNode(new) %v, IsNode(old) %v", rp.IsNode(newID), rp.IsNode(oldID))
	}
	if rp.host.ConnManager().IsProtected(oldID, protectTag) {
		t.Error("the old peer ID is still protected")
	}
	if got, ok := rp.Pick(randCID(t), nil); !ok || got != newID {
		t.Fatalf("Pick = %s, %v; want the new peer ID", got, ok)
	}
}

// TestPoolRemoveAndAdd: a node removed from every source is disconnected
// and reported down; one still listed by another source is left alone; a
// node added at runtime joins.
func TestPoolRemoveAndAdd(t *testing.T) {
	k1, k2 := newFakeKubo(t), newFakeKubo(t)
	rp := startPool(t, fastOptions(), k1)
	id1 := k1.id()
	_, i := rp.rec.wait(t, 0, 5*time.Second, isUp(id1), "node 1 up")
	if err := rp.SetMembers("other", []string{k1.url()}); err != nil {
		t.Fatal(err)
	}
	// Added at runtime through another source.
	if err := rp.SetMembers("dns:x", []string{k2.url()}); err != nil {
		t.Fatal(err)
	}
	id2 := k2.id()
	_, i = rp.rec.wait(t, i, 5*time.Second, isUp(id2), "node 2 up after being added")

	// Dropped by "test" but still listed by "other": untouched.
	if err := rp.SetMembers("test", nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if evs := rp.rec.all()[i:]; len(evs) != 0 {
		t.Fatalf("events after dropping a node another source lists: %v", evs)
	}
	if s := rp.status(t, k1.url()); !s.Connected || s.ID != id1 {
		t.Fatalf("node 1 after one source dropped it: %+v", s)
	}

	// Dropped everywhere: reported down, disconnected, forgotten.
	if err := rp.SetMembers("other", nil); err != nil {
		t.Fatal(err)
	}
	rp.rec.wait(t, i, 3*time.Second, isDown(id1, false), "node 1 down after removal")
	waitFor(t, 3*time.Second, "node 1 disconnected", func() bool {
		return rp.host.Network().Connectedness(id1) != network.Connected
	})
	if rp.IsNode(id1) || rp.Len() != 1 {
		t.Fatalf("IsNode(removed) %v, Len %d", rp.IsNode(id1), rp.Len())
	}
	for _, c := range randCIDs(t, 20) {
		if got, ok := rp.Pick(c, nil); !ok || got != id2 {
			t.Fatalf("Pick = %s, %v after node 1 was removed", got.ShortString(), ok)
		}
	}
	if rp.host.ConnManager().IsProtected(id1, protectTag) {
		t.Error("a removed node's peer is still protected")
	}
}

// The same Kubo node listed under two addresses (a hostname and its IP):
// removing one leaves the node connected and usable through the other.
func TestPoolSameNodeTwoAddresses(t *testing.T) {
	k := newFakeKubo(t)
	alias := strings.Replace(k.url(), "127.0.0.1", "localhost", 1)
	rp := startPool(t, fastOptions(), k)
	id := k.id()
	_, i := rp.rec.wait(t, 0, 5*time.Second, isUp(id), "node up")
	if err := rp.SetMembers("alias", []string{alias}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the alias to connect", func() bool { return rp.status(t, alias).Connected })
	i = len(rp.rec.all())
	if err := rp.SetMembers("test", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "the first address to leave", func() bool { return rp.Len() == 1 })
	time.Sleep(300 * time.Millisecond)
	for _, e := range rp.rec.all()[i:] {
		if !e.up {
			t.Fatalf("NodeDown for a peer still a member under another address: %v", e)
		}
	}
	if rp.host.Network().Connectedness(id) != network.Connected || !rp.host.ConnManager().IsProtected(id, protectTag) {
		t.Fatal("the shared connection was closed or unprotected")
	}
	if got, ok := rp.Pick(randCIDs(t, 1)[0], nil); !ok || got != id {
		t.Fatalf("Pick = %s, %v; want the node through its other address", got, ok)
	}
}

// Issue 11, hole 6: with the default floor, a fast node that stalls for
// 1.5 s (a GC pause, a slow disk) is not silent for longer than its
// timeout, so nothing is held against it.
func TestDefaultTimeoutOutlastsAStall(t *testing.T) {
	k := newFakeKubo(t)
	opts := fastOptions()
	opts.MinTimeout, opts.MaxTimeout = 0, 0 // the defaults
	rp := startPool(t, opts, k)
	id := k.id()
	rp.rec.wait(t, 0, 5*time.Second, isUp(id), "NodeUp")
	for range 60 {
		rp.Sent(id)
		rp.Done(id, OutcomeBlock, time.Millisecond)
	}
	if got := rp.Timeout(id); got < 2*time.Second {
		t.Errorf("a fast node's silence timeout is %v: a 1.5 s stall would count against it", got)
	}
}
