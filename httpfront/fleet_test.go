package httpfront

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/boxo/routing/http/client"
	"github.com/ipfs/boxo/routing/http/server"
	"github.com/ipfs/boxo/routing/http/types"
	"github.com/ipfs/boxo/routing/http/types/iter"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
)

// fakeNode is a fleet node's /routing/v1, served by boxo's own server.
// broken nodes answer every call with an error (500); lying ones hand out
// the record of another name.
type fakeNode struct {
	broken, lying bool
	calls         atomic.Int64
	mu            sync.Mutex
	ipns          map[string]*ipns.Record
	other         *ipns.Record // what a lying node returns
}

var errBroken = errors.New("node broken")

func (n *fakeNode) FindProviders(context.Context, cid.Cid, int) (iter.ResultIter[types.Record], error) {
	return nil, routing.ErrNotSupported
}

func (n *fakeNode) ProvideBitswap(context.Context, *server.BitswapWriteProvideRequest) (time.Duration, error) {
	return 0, routing.ErrNotSupported
}

func nodeRecord(pid peer.ID) *types.PeerRecord {
	return &types.PeerRecord{Schema: types.SchemaPeer, ID: &pid, Addrs: []types.Multiaddr{{Multiaddr: ma.StringCast("/ip4/198.51.100.9/tcp/4001")}}}
}

func (n *fakeNode) FindPeers(_ context.Context, pid peer.ID, _ int) (iter.ResultIter[*types.PeerRecord], error) {
	n.calls.Add(1)
	if n.broken {
		return nil, errBroken
	}
	return iter.FromSlice([]iter.Result[*types.PeerRecord]{{Val: nodeRecord(pid)}}), nil
}

func (n *fakeNode) GetIPNS(_ context.Context, name ipns.Name) (*ipns.Record, error) {
	n.calls.Add(1)
	if n.broken {
		return nil, errBroken
	}
	if n.lying {
		return n.other, nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if r, ok := n.ipns[name.String()]; ok {
		return r, nil
	}
	return nil, routing.ErrNotFound
}

func (n *fakeNode) PutIPNS(_ context.Context, name ipns.Name, r *ipns.Record) error {
	n.calls.Add(1)
	if n.broken {
		return errBroken
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ipns[name.String()] = r
	return nil
}

func (n *fakeNode) GetClosestPeers(_ context.Context, key cid.Cid) (iter.ResultIter[*types.PeerRecord], error) {
	n.calls.Add(1)
	if n.broken {
		return nil, errBroken
	}
	var out []iter.Result[*types.PeerRecord]
	for range 3 {
		_, pub, _ := crypto.GenerateEd25519Key(nil)
		id, _ := peer.IDFromPublicKey(pub)
		out = append(out, iter.Result[*types.PeerRecord]{Val: nodeRecord(id)})
	}
	return iter.FromSlice(out), nil
}

type routingMap map[string]string

func (m routingMap) RoutingURL(_ context.Context, rpc string) (string, error) {
	if u, ok := m[rpc]; ok {
		return u, nil
	}
	return "", errors.New("no gateway")
}

// startFleetFront serves Kitsune's front over the fake nodes, tried in
// the order given.
func startFleetFront(t *testing.T, nodes ...*fakeNode) string {
	t.Helper()
	return startFleetFrontHiding(t, nil, nodes...)
}

func startFleetFrontHiding(t *testing.T, hidden func(peer.ID) bool, nodes ...*fakeNode) string {
	t.Helper()
	urls := routingMap{}
	var order []string
	for i, n := range nodes {
		if n.ipns == nil {
			n.ipns = map[string]*ipns.Record{}
		}
		srv := httptest.NewServer(server.Handler(n, server.WithPrometheusRegistry(prometheus.NewRegistry())))
		t.Cleanup(srv.Close)
		rpc := string(rune('a' + i))
		urls[rpc] = srv.URL
		order = append(order, rpc)
	}
	fleet, err := NewFleet(FleetConfig{Locator: LocatorFunc(func(cid.Cid) []string { return order }), Routing: urls, Hidden: hidden})
	if err != nil {
		t.Fatal(err)
	}
	hold, err := NewHoldings(HoldingsConfig{Checker: &fakeChecker{}, Locator: LocatorFunc(func(cid.Cid) []string { return nil })})
	if err != nil {
		t.Fatal(err)
	}
	self := Self{ID: newPeerID(t), Addrs: func() []ma.Multiaddr { return nil }}
	h, err := New(Config{Self: self, Holdings: hold, Fleet: fleet})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func newIPNS(t *testing.T, value string) (ipns.Name, *ipns.Record, crypto.PrivKey) {
	t.Helper()
	sk, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := peer.IDFromPrivateKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	p, err := path.NewPath("/ipfs/" + testCID(t, len(value)).String())
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ipns.NewRecord(sk, p, 1, time.Now().Add(time.Hour), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return ipns.NameFromPeer(pid), rec, sk
}

// boxo's client through Kitsune to the fleet: a broken first node is
// skipped, answers come from the next.
func TestFleetFailsOver(t *testing.T) {
	broken, good := &fakeNode{broken: true}, &fakeNode{}
	url := startFleetFront(t, broken, good)
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pid := newPeerID(t)
	it, err := c.FindPeers(ctx, pid)
	if err != nil {
		t.Fatal(err)
	}
	peers := readAll(t, it)
	if len(peers) != 1 || *peers[0].ID != pid {
		t.Fatalf("peers/%s: %v", pid, peers)
	}

	name, rec, _ := newIPNS(t, "x")
	if _, err := c.GetIPNS(ctx, name); !errors.Is(err, routing.ErrNotFound) {
		t.Fatalf("GET of an unpublished name: %v, want not found", err)
	}
	if err := c.PutIPNS(ctx, name, rec); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetIPNS(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := got.Value(); v.String() != mustValue(t, rec) {
		t.Fatalf("record value %s, want %s", v, mustValue(t, rec))
	}

	cit, err := c.GetClosestPeers(ctx, testCID(t, 7))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(readAll(t, cit)); n != 3 {
		t.Fatalf("%d closest peers, want 3", n)
	}
	// Every call tried the broken node first, then the good one.
	if b, g := broken.calls.Load(), good.calls.Load(); b != 5 || g != 5 {
		t.Fatalf("broken node called %d times, good one %d; want 5 and 5", b, g)
	}
}

func mustValue(t *testing.T, r *ipns.Record) string {
	t.Helper()
	v, err := r.Value()
	if err != nil {
		t.Fatal(err)
	}
	return v.String()
}

// A node that hands out a record for another name is not believed: the
// client inside Kitsune validates it, and Kitsune fails over.
func TestFleetRecordValidated(t *testing.T) {
	_, other, _ := newIPNS(t, "other")
	liar, good := &fakeNode{lying: true, other: other}, &fakeNode{}
	url := startFleetFront(t, liar, good)
	name, rec, _ := newIPNS(t, "mine")
	good.ipns = map[string]*ipns.Record{name.String(): rec}
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetIPNS(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if mustValue(t, got) != mustValue(t, rec) {
		t.Fatal("the lying node's record came through")
	}
	if liar.calls.Load() != 1 || good.calls.Load() != 1 {
		t.Fatalf("liar called %d, good %d; want 1 and 1", liar.calls.Load(), good.calls.Load())
	}

	// With only the liar, the answer is an error, never its record.
	url = startFleetFront(t, &fakeNode{lying: true, other: other})
	if c, err = client.New(url); err != nil {
		t.Fatal(err)
	}
	if got, err := c.GetIPNS(context.Background(), name); err == nil {
		t.Fatalf("got %v from a fleet that only lies", got)
	}
}

// Bad IPNS puts are refused with the promised status, and nothing reaches
// a node.
func TestFleetBadIPNSNeverReachesANode(t *testing.T) {
	node := &fakeNode{}
	url := startFleetFront(t, node)
	name, rec, _ := newIPNS(t, "a")
	otherName, _, _ := newIPNS(t, "b")
	raw, err := ipns.MarshalRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := bytes.Clone(raw)
	corrupt[len(corrupt)-3] ^= 0xff // inside the signature
	for _, tc := range []struct {
		what   string
		name   ipns.Name
		ctype  string
		body   []byte
		status int
		reason string
	}{
		{"garbage", name, "application/vnd.ipfs.ipns-record", []byte("not a record"), 400, "invalid"},
		{"bad signature", name, "application/vnd.ipfs.ipns-record", corrupt, 400, "invalid"},
		{"another name's record", otherName, "application/vnd.ipfs.ipns-record", raw, 400, "invalid"},
		{"oversized", name, "application/vnd.ipfs.ipns-record", bytes.Repeat([]byte("x"), ipns.MaxRecordSize+1), 413, "over"},
		{"wrong content type", name, "text/plain", raw, 406, "Content-Type"},
	} {
		req, err := http.NewRequest(http.MethodPut, url+"/routing/v1/ipns/"+tc.name.String(), bytes.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", tc.ctype)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.reason) {
			t.Errorf("%s: %d %q, want %d with %q", tc.what, resp.StatusCode, body, tc.status, tc.reason)
		}
	}
	for _, p := range []string{"/routing/v1/ipns/not-a-name", "/routing/v1/dht/closest/peers/not-a-key", "/routing/v1/peers/not-a-peer"} {
		resp, err := http.Get(url + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("GET %s: %d, want 400", p, resp.StatusCode)
		}
	}
	if n := node.calls.Load(); n != 0 {
		t.Fatalf("bad requests reached the node %d times", n)
	}
}

// Every node down: a clear 500, not a hang or an empty answer.
func TestFleetAllNodesDown(t *testing.T) {
	url := startFleetFront(t, &fakeNode{broken: true}, &fakeNode{broken: true})
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	name, _, _ := newIPNS(t, "a")
	_, err = c.GetIPNS(context.Background(), name)
	var he *client.HTTPError
	if !errors.As(err, &he) || he.StatusCode != 500 || !strings.Contains(he.Body, "no fleet node could answer (2 tried)") {
		t.Fatalf("GET with every node down: %v, want a 500 saying no node could answer", err)
	}
	// The fleet's addresses stay inside.
	if strings.Contains(he.Body, "127.0.0.1") || strings.Contains(he.Body, "node broken") {
		t.Fatalf("the answer names the fleet's internals: %q", he.Body)
	}
}

func TestGatewayURL(t *testing.T) {
	for _, tc := range []struct {
		raw, want, err string
	}{
		{`"/ip4/10.0.0.5/tcp/8080"`, "http://10.0.0.5:8080", ""},
		{`["/ip4/0.0.0.0/tcp/8081"]`, "http://10.0.0.5:8081", ""},
		{`["/ip6/::/tcp/8082"]`, "http://10.0.0.5:8082", ""},
		{`["/ip4/10.0.0.5/tcp/0", "/ip4/10.0.0.5/tcp/8083"]`, "http://10.0.0.5:8083", ""},
		{`["/ip4/10.0.0.5/tcp/0"]`, "", "no fixed port"},
		{`[]`, "", "no gateway"},
		{`["/ip4/127.0.0.1/udp/8080/quic-v1"]`, "", "not a TCP address"},
		{`["nonsense"]`, "", "nonsense"},
		{`["/ip4/127.0.0.1/tcp/8080"]`, "", "loopback only"}, // from 10.0.0.5 below

		{`42`, "", "neither a string nor a list"},
	} {
		got, err := gatewayURL([]byte(tc.raw), "10.0.0.5")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: (%q, %v), want an error with %q", tc.raw, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: (%q, %v), want %q", tc.raw, got, err, tc.want)
		}
	}
}

// KuboRouting remembers answers for TTL, for at most MaxEntries nodes,
// and empties as they expire.
func TestKuboRoutingCacheBounded(t *testing.T) {
	var asked atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		io.WriteString(w, `{"Key":"Addresses.Gateway","Value":"/ip4/127.0.0.1/tcp/8080"}`)
	}))
	t.Cleanup(srv.Close)
	now := time.Unix(1000, 0)
	k := &KuboRouting{TTL: time.Minute, MaxEntries: 4, Now: func() time.Time { return now }}
	ctx := context.Background()
	for i := range 10 {
		u, err := k.RoutingURL(ctx, srv.URL+"/"+strings.Repeat("x", i))
		if err != nil || u != "http://127.0.0.1:8080" {
			t.Fatalf("RoutingURL: (%q, %v)", u, err)
		}
		if k.Len() > 4 {
			t.Fatalf("%d entries, bound is 4", k.Len())
		}
	}
	before := asked.Load()
	if _, err := k.RoutingURL(ctx, srv.URL+"/"+strings.Repeat("x", 9)); err != nil || asked.Load() != before {
		t.Fatalf("a fresh answer was asked again (%v)", err)
	}
	now = now.Add(2 * time.Minute)
	if _, err := k.RoutingURL(ctx, srv.URL); err != nil {
		t.Fatal(err)
	}
	if k.Len() != 1 || asked.Load() != before+1 {
		t.Fatalf("after expiry: %d entries, %d asks; want 1 entry and one more ask", k.Len(), asked.Load()-before)
	}
}

// The fleet's own peers are never handed out: a peers query for one is
// not found without asking a node, and closest-peers answers leave them
// out.
func TestFleetHidesItsOwnPeers(t *testing.T) {
	node := &fakeNode{}
	var hideAll atomic.Bool
	inside := newPeerID(t)
	url := startFleetFrontHiding(t, func(id peer.ID) bool { return hideAll.Load() || id == inside }, node)
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	it, err := c.FindPeers(ctx, inside)
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, it); len(got) != 0 || node.calls.Load() != 0 {
		t.Fatalf("a fleet peer's record: %v (node asked %d times)", got, node.calls.Load())
	}
	cit, err := c.GetClosestPeers(ctx, testCID(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(readAll(t, cit)); n != 3 {
		t.Fatalf("%d closest peers, want the node's 3", n)
	}
	hideAll.Store(true)
	cit, err = c.GetClosestPeers(ctx, testCID(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, cit); len(got) != 0 {
		t.Fatalf("hidden peers handed out: %v", got)
	}
}
