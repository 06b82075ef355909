package httpfront

import (
	"context"
	"github.com/kitsune-lb/kitsune/internal/testkit"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/boxo/routing/http/client"
	"github.com/ipfs/boxo/routing/http/types"
	"github.com/ipfs/boxo/routing/http/types/iter"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

func newPeerID(t *testing.T) peer.ID {
	t.Helper()
	_, pub, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

type front struct {
	url   string
	self  Self
	check *fakeChecker
	mu    *sync.Mutex
	seen  *[]Outcome // what Observe heard
}

func (f front) outcomes() []Outcome {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(*f.seen)
}

func startFront(t *testing.T, fc *fakeChecker, maxPerIP int, trusted ...netip.Prefix) front {
	t.Helper()
	self := Self{ID: newPeerID(t), Addrs: func() []ma.Multiaddr {
		return []ma.Multiaddr{ma.StringCast("/ip4/198.51.100.7/tcp/4001"), ma.StringCast("/ip4/198.51.100.7/tcp/4002/ws")}
	}}
	hold, err := NewHoldings(HoldingsConfig{Checker: fc, Locator: LocatorFunc(func(cid.Cid) []string { return []string{"a"} }), CheckTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []Outcome
	h, err := New(Config{Self: self, Holdings: hold, MaxPerIP: maxPerIP, TrustedProxies: trusted, Observe: func(o Outcome, _ time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, o)
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return front{url: srv.URL, self: self, check: fc, mu: &mu, seen: &seen}
}

func readAll[T any](t *testing.T, it iter.ResultIter[T]) []T {
	t.Helper()
	defer it.Close()
	var out []T
	for it.Next() {
		r := it.Val()
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		out = append(out, r.Val)
	}
	return out
}

func checkSelf(t *testing.T, f front, rec *types.PeerRecord) {
	t.Helper()
	if rec.ID == nil || *rec.ID != f.self.ID {
		t.Fatalf("record for %v, want Kitsune's %s", rec.ID, f.self.ID)
	}
	if len(rec.Protocols) != 1 || rec.Protocols[0] != TransportBitswap {
		t.Fatalf("protocols %v, want [%s]", rec.Protocols, TransportBitswap)
	}
	want := f.self.Addrs()
	if len(rec.Addrs) != len(want) {
		t.Fatalf("addrs %v, want %v", rec.Addrs, want)
	}
	for i := range want {
		if !rec.Addrs[i].Equal(want[i]) {
			t.Fatalf("addr %d is %s, want %s", i, rec.Addrs[i], want[i])
		}
	}
}

func TestBoxoClientReadsProvidersAndPeers(t *testing.T) {
	held, missing := testCID(t, 1), testCID(t, 2)
	f := startFront(t, &fakeChecker{has: map[string]map[cid.Cid]bool{"a": {held: true}}}, 0)
	ctx := context.Background()
	for _, streaming := range []bool{false, true} {
		var opts []client.Option
		if streaming {
			opts = append(opts, client.WithStreamResultsRequired())
		}
		c, err := client.New(f.url, opts...)
		if err != nil {
			t.Fatal(err)
		}
		it, err := c.FindProviders(ctx, held)
		if err != nil {
			t.Fatal(err)
		}
		provs := readAll(t, it)
		if len(provs) != 1 {
			t.Fatalf("streaming %v: %d providers of a held CID, want 1", streaming, len(provs))
		}
		rec, ok := provs[0].(*types.PeerRecord)
		if !ok {
			t.Fatalf("provider record is %T", provs[0])
		}
		checkSelf(t, f, rec)

		it, err = c.FindProviders(ctx, missing)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, it); len(got) != 0 {
			t.Fatalf("streaming %v: providers of a CID the fleet lacks: %v", streaming, got)
		}

		pit, err := c.FindPeers(ctx, f.self.ID)
		if err != nil {
			t.Fatal(err)
		}
		peers := readAll(t, pit)
		if len(peers) != 1 {
			t.Fatalf("streaming %v: %d records for Kitsune's ID, want 1", streaming, len(peers))
		}
		checkSelf(t, f, peers[0])

		pit, err = c.FindPeers(ctx, newPeerID(t))
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, pit); len(got) != 0 {
			t.Fatalf("records for a stranger: %v", got)
		}
	}
	// Two distinct CIDs were asked about, each once (the rest was cached).
	if n := f.check.calls.Load(); n != 2 {
		t.Fatalf("node asked %d times, want 2", n)
	}
	if got, want := f.outcomes(), []Outcome{Asked, Asked, Cached, Cached}; !slices.Equal(got, want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
}

func TestBadInputNeverReachesANode(t *testing.T) {
	f := startFront(t, &fakeChecker{has: map[string]map[cid.Cid]bool{"a": {}}}, 0)
	for _, tc := range []struct {
		method, path string
		status       int
		reason       string
	}{
		{"GET", "/routing/v1/providers/not-a-cid", 400, "unable to parse CID"},
		{"GET", "/routing/v1/providers/bafy", 400, "unable to parse CID"},
		{"GET", "/routing/v1/peers/not-a-peer!", 400, "unable to parse PeerID"},
		{"PUT", "/routing/v1/providers/", 405, "only GET"},
		{"POST", "/routing/v1/providers/" + testCID(t, 1).String(), 405, "only GET"},
		{"HEAD", "/routing/v1/providers/" + testCID(t, 1).String(), 405, ""},
		{"GET", "/routing/v1/ipns/k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8", 501, "not implemented"},
		{"PUT", "/routing/v1/ipns/k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8", 501, "not implemented"},
		{"GET", "/routing/v1/dht/closest/peers/" + testCID(t, 1).String(), 501, "not implemented"},
		{"GET", "/ipfs/" + testCID(t, 1).String(), 404, ""},
	} {
		req, err := http.NewRequest(tc.method, f.url+tc.path, strings.NewReader(strings.Repeat("x", 1<<20)))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(body), tc.reason) {
			t.Errorf("%s %s: %d %q, want %d with %q", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.reason)
		}
	}
	if n := f.check.calls.Load(); n != 0 {
		t.Fatalf("bad requests reached a node %d times", n)
	}
}

func TestPerIPLimit(t *testing.T) {
	gate := make(chan struct{})
	f := startFront(t, &fakeChecker{has: map[string]map[cid.Cid]bool{"a": {}}, gate: gate}, 2)
	get := func(i int) *http.Response {
		resp, err := http.Get(f.url + "/routing/v1/providers/" + testCID(t, i).String())
		if err != nil {
			t.Error(err)
			return nil
		}
		return resp
	}
	done := make(chan int, 2)
	for i := range 2 {
		go func() {
			resp := get(i)
			if resp != nil {
				resp.Body.Close()
				done <- resp.StatusCode
			} else {
				done <- 0
			}
		}()
	}
	// Both slots are taken once the node has seen both lookups.
	testkit.Eventually(t, 10*time.Second, testkit.Say("both lookups at the node"),
		func() bool { return f.check.calls.Load() >= 2 })
	resp := get(3)
	if resp == nil {
		t.FailNow()
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third concurrent request: %d, want 429", resp.StatusCode)
	}
	close(gate)
	for range 2 {
		if s := <-done; s != http.StatusOK {
			t.Fatalf("admitted request ended %d, want 200", s)
		}
	}
	// The slots are given back: the limiter's map empties.
	resp = get(4)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after the burst: %d, want 200", resp.StatusCode)
	}
}

// Behind a trusted reverse proxy the limit counts the clients its
// X-Forwarded-For names; from an untrusted peer the header is ignored.
func TestPerIPLimitBehindProxy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trusted []netip.Prefix
		second  int // status of client B's request while A's is running
	}{
		{"trusted proxy", []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, http.StatusOK},
		{"untrusted peer", nil, http.StatusTooManyRequests},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gate := make(chan struct{})
			f := startFront(t, &fakeChecker{has: map[string]map[cid.Cid]bool{"a": {}}, gate: gate}, 1, tc.trusted...)
			get := func(i int, client string) (*http.Response, error) {
				req, err := http.NewRequest("GET", f.url+"/routing/v1/providers/"+testCID(t, i).String(), nil)
				if err != nil {
					return nil, err
				}
				req.Header.Set("X-Forwarded-For", client)
				return http.DefaultClient.Do(req)
			}
			first := make(chan int, 1)
			go func() {
				resp, err := get(1, "203.0.113.1")
				if err != nil {
					first <- 0
					return
				}
				resp.Body.Close()
				first <- resp.StatusCode
			}()
			testkit.Eventually(t, 10*time.Second, testkit.Say("client A's lookup at the node"),
				func() bool { return f.check.calls.Load() >= 1 })
			// B's lookup is held at the gate too, so answer it in the
			// background and read only its status when it is refused.
			second := make(chan int, 1)
			go func() {
				resp, err := get(2, "203.0.113.2")
				if err != nil {
					second <- 0
					return
				}
				resp.Body.Close()
				second <- resp.StatusCode
			}()
			if tc.second == http.StatusTooManyRequests {
				if s := <-second; s != tc.second {
					t.Fatalf("client B while A runs: %d, want %d", s, tc.second)
				}
				close(gate)
			} else {
				testkit.Eventually(t, 10*time.Second, testkit.Say("client B was not admitted beside A"),
					func() bool { return f.check.calls.Load() >= 2 })
				close(gate)
				if s := <-second; s != tc.second {
					t.Fatalf("client B: %d, want %d", s, tc.second)
				}
			}
			if s := <-first; s != http.StatusOK {
				t.Fatalf("client A: %d, want 200", s)
			}
		})
	}
}
