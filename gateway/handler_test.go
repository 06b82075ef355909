package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/boxo/blockservice"
	"github.com/ipfs/boxo/blockstore"
	chunk "github.com/ipfs/boxo/chunker"
	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/boxo/ipld/unixfs/importer"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/kitsune-lb/kitsune/bitswap"
	"github.com/kitsune-lb/kitsune/internal/cartest"
	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// mapFetcher answers Fetch from a map, as the relay would with a fleet
// holding those blocks: a CID it lacks is ErrNotFound, or, with hang,
// never answered. It counts the fetches running.
type mapFetcher struct {
	mu      sync.Mutex
	blocks  map[cid.Cid]blocks.Block
	hang    bool
	running int
	peak    int
	calls   int
	// together, when set, holds every answer until two fetches run at
	// once (or a second has passed), so that a test of fetching ahead
	// does not depend on how the scheduler interleaves instant answers.
	together chan struct{}
}

func (m *mapFetcher) Fetch(ctx context.Context, cs ...cid.Cid) (<-chan bitswap.Result, error) {
	out := make(chan bitswap.Result)
	m.mu.Lock()
	m.running++
	m.peak = max(m.peak, m.running)
	m.calls++
	together := m.together
	if together != nil && m.running >= 2 {
		close(together)
		m.together = nil
	}
	m.mu.Unlock()
	go func() {
		defer close(out)
		defer func() { m.mu.Lock(); m.running--; m.mu.Unlock() }()
		if together != nil {
			select {
			case <-together:
			case <-time.After(time.Second):
			case <-ctx.Done():
				return
			}
		}
		for _, c := range cs {
			m.mu.Lock()
			b, ok := m.byHash(c)
			hang := m.hang
			m.mu.Unlock()
			r := bitswap.Result{Cid: c, Block: b}
			if !ok {
				if hang {
					<-ctx.Done()
					return
				}
				r.Err = ipld.ErrNotFound{Cid: c}
			}
			select {
			case out <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// byHash finds c's block by its multihash, as a blockstore does (the
// keys listed from one are CIDv1 raw whatever the codec).
func (m *mapFetcher) byHash(c cid.Cid) (blocks.Block, bool) {
	for k, b := range m.blocks {
		if bytes.Equal(k.Hash(), c.Hash()) {
			nb, err := blocks.NewBlockWithCid(b.RawData(), c)
			return nb, err == nil
		}
	}
	return nil, false
}

func (m *mapFetcher) idle() bool { m.mu.Lock(); defer m.mu.Unlock(); return m.running == 0 }

// file imports size random bytes as a UnixFS file (256 KiB chunks) and
// returns its root and every block.
func file(t *testing.T, size int) (cid.Cid, []byte, map[cid.Cid]blocks.Block) {
	t.Helper()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	bstore := blockstore.NewBlockstore(dssync.MutexWrap(datastore.NewMapDatastore()))
	dag := merkledag.NewDAGService(blockservice.New(bstore, nil))
	nd, err := importer.BuildDagFromReader(dag, chunk.NewSizeSplitter(bytes.NewReader(data), 256<<10))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ks, err := bstore.AllKeysChan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	all := make(map[cid.Cid]blocks.Block)
	for k := range ks {
		b, err := bstore.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		all[k] = b
	}
	return nd.Cid(), data, all
}

func rootBytes(t *testing.T, all map[cid.Cid]blocks.Block, root cid.Cid) []byte {
	t.Helper()
	b, ok := (&mapFetcher{blocks: all}).byHash(root)
	if !ok {
		t.Fatal("root not among the blocks")
	}
	return b.RawData()
}

func newServer(t *testing.T, f Fetcher, mod func(*Config)) *httptest.Server {
	t.Helper()
	cfg := Config{Fetcher: f}
	if mod != nil {
		mod(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s
}

func get(t *testing.T, method, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

func TestRawCarHeadProbe(t *testing.T) {
	root, _, all := file(t, 1<<20+12345)
	f := &mapFetcher{blocks: all}
	s := newServer(t, f, nil)

	// ?format=raw and Accept: the root block's bytes.
	for _, hdr := range [][]string{nil, {"Accept", "application/vnd.ipld.raw"}} {
		url := s.URL + "/ipfs/" + root.String()
		if hdr == nil {
			url += "?format=raw"
		}
		resp, body := get(t, http.MethodGet, url, hdr...)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.ipld.raw" || !bytes.Equal(body, rootBytes(t, all, root)) {
			t.Fatalf("raw %v: %d %q, %d bytes: %.300s", hdr, resp.StatusCode, resp.Header.Get("Content-Type"), len(body), body)
		}
	}
	// HEAD: the headers, no body.
	resp, body := get(t, http.MethodHead, s.URL+"/ipfs/"+root.String()+"?format=raw")
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Content-Type") != "application/vnd.ipld.raw" {
		t.Errorf("HEAD: %d, %d bytes, %q", resp.StatusCode, len(body), resp.Header.Get("Content-Type"))
	}
	// ?format=car and Accept: the whole DAG, each block checked.
	for _, hdr := range [][]string{nil, {"Accept", "application/vnd.ipld.car"}} {
		url := s.URL + "/ipfs/" + root.String()
		if hdr == nil {
			url += "?format=car"
		}
		resp, body := get(t, http.MethodGet, url, hdr...)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/vnd.ipld.car") {
			t.Fatalf("car %v: %d %q", hdr, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		_, got, err := cartest.Read(bytes.NewReader(body), root)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := cartest.Complete(got, root); err != nil || n != len(all) {
			t.Fatalf("car holds %d of %d blocks: %v", n, len(all), err)
		}
	}
	// The probe boxo's httpnet sends, answered without the fleet.
	calls := f.calls
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		resp, _ := get(t, m, s.URL+"/ipfs/bafkqaaa?format=raw")
		if resp.StatusCode != 200 {
			t.Errorf("%s probe: %d", m, resp.StatusCode)
		}
	}
	if f.calls != calls {
		t.Errorf("the probe reached the fleet")
	}
	testkit.Eventually(t, 5*time.Second, func() string { return "fetches ended" }, f.idle)
}

func TestRefusals(t *testing.T) {
	root, _, all := file(t, 1000)
	s := newServer(t, &mapFetcher{blocks: all}, nil)
	cases := []struct {
		name, method, path string
		hdr                []string
		code               int
		reason             string
	}{
		{"bad cid", http.MethodGet, "/ipfs/notacid?format=raw", nil, 400, "notacid"},
		{"deserialized", http.MethodGet, "/ipfs/" + root.String(), nil, 406, ""},
		{"html", http.MethodGet, "/ipfs/" + root.String(), []string{"Accept", "text/html"}, 406, ""},
		{"ipns", http.MethodGet, "/ipns/example.com?format=raw", nil, 501, "/ipfs/ only"},
		{"post", http.MethodPost, "/ipfs/" + root.String() + "?format=raw", nil, 405, "GET and HEAD"},
		{"elsewhere", http.MethodGet, "/", nil, 404, ""},
	}
	for _, c := range cases {
		resp, body := get(t, c.method, s.URL+c.path, c.hdr...)
		if resp.StatusCode != c.code || !strings.Contains(string(body), c.reason) {
			t.Errorf("%s: %d %q, want %d containing %q", c.name, resp.StatusCode, body, c.code, c.reason)
		}
		if strings.Contains(string(body), "<html") {
			t.Errorf("%s: an HTML answer", c.name)
		}
	}
}

// Content the fleet does not have: 404 for a raw block when every node
// said DONT_HAVE; 504 after the retrieval timeout when none answers.
func TestMissingContent(t *testing.T) {
	missing := cid.NewCidV1(cid.Raw, mustHash(t, "nobody has this"))
	f := &mapFetcher{blocks: map[cid.Cid]blocks.Block{}}
	s := newServer(t, f, func(c *Config) { c.RetrievalTimeout = 500 * time.Millisecond })
	resp, body := get(t, http.MethodGet, s.URL+"/ipfs/"+missing.String()+"?format=raw")
	if resp.StatusCode != 404 {
		t.Errorf("not found: %d %q", resp.StatusCode, body)
	}
	f.mu.Lock()
	f.hang = true
	f.mu.Unlock()
	start := time.Now()
	resp, body = get(t, http.MethodGet, s.URL+"/ipfs/"+missing.String()+"?format=raw")
	if resp.StatusCode != 504 {
		t.Errorf("no answer: %d %q", resp.StatusCode, body)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("timeout took %v", took)
	}
	// The abandoned fetch was cancelled, not left running.
	testkit.Eventually(t, 5*time.Second, func() string { return "fetches ended" }, f.idle)
}

func mustHash(t *testing.T, s string) []byte {
	t.Helper()
	c, err := cid.V1Builder{Codec: cid.Raw, MhType: 0x12}.Sum([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return c.Hash()
}

// One client runs MaxPerIP requests at once, MaxWaitingPerIP more wait
// for a slot (and get one when a request ends), and the next gets 429;
// the limiter forgets the client once its requests are over.
func TestPerIPLimit(t *testing.T) {
	missing := cid.NewCidV1(cid.Raw, mustHash(t, "held up"))
	f := &mapFetcher{blocks: map[cid.Cid]blocks.Block{}, hang: true}
	h, err := New(Config{Fetcher: f, MaxPerIP: 2, MaxWaitingPerIP: 1, RetrievalTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	first, firstCancel := context.WithCancel(ctx)
	for i := 0; i < 2; i++ {
		c := ctx
		if i == 0 {
			c = first
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(c, http.MethodGet, s.URL+"/ipfs/"+missing.String()+"?format=raw", nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	testkit.Eventually(t, 5*time.Second, func() string { return "two fetches running" }, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.running == 2
	})
	// The third waits for a slot.
	waited := make(chan int, 1)
	go func() {
		resp, err := http.Get(s.URL + "/ipfs/bafkqaaa?format=raw")
		if err != nil {
			waited <- 0
			return
		}
		resp.Body.Close()
		waited <- resp.StatusCode
	}()
	testkit.Eventually(t, 5*time.Second, func() string { return "third request waiting" }, func() bool {
		h.limit.mu.Lock()
		defer h.limit.mu.Unlock()
		for _, c := range h.limit.m {
			return c.users == 3
		}
		return false
	})
	// The fourth is refused.
	resp, body := get(t, http.MethodGet, s.URL+"/ipfs/bafkqaaa?format=raw")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("fourth request: %d %q", resp.StatusCode, body)
	}
	select {
	case code := <-waited:
		t.Fatalf("the waiting request ended (%d) with no slot free", code)
	default:
	}
	// One running request ends: the waiting one gets its slot.
	firstCancel()
	select {
	case code := <-waited:
		if code != 200 {
			t.Errorf("waiting request: %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting request never got the freed slot")
	}
	cancel()
	wg.Wait()
	testkit.Eventually(t, 5*time.Second, func() string { return "fetches ended" }, f.idle)
	testkit.Eventually(t, 5*time.Second, func() string { return "limiter empty" }, func() bool { return h.limit.clients() == 0 })
}

// A request waiting for a slot gives up at the retrieval timeout.
func TestPerIPWaitTimesOut(t *testing.T) {
	l := newQueueLimiter(1, 1)
	ip := netip.MustParseAddr("198.51.100.7")
	release, err := l.acquire(context.Background(), ip)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.acquire(ctx, ip); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting past the deadline: %v", err)
	}
	release()
	release() // twice is once
	if l.clients() != 0 {
		t.Errorf("%d clients left", l.clients())
	}
}

// A CAR over MaxResponseBytes is cut there and made invalid; one under
// it is whole.
func TestResponseBound(t *testing.T) {
	root, _, all := file(t, 2<<20)
	s := newServer(t, &mapFetcher{blocks: all}, func(c *Config) { c.MaxResponseBytes = 1 << 20 })
	resp, body := get(t, http.MethodGet, s.URL+"/ipfs/"+root.String()+"?format=car")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if len(body) > 1<<20+len(truncated)+1024 {
		t.Errorf("%d bytes passed a bound of 1 MiB", len(body))
	}
	if _, _, err := cartest.Read(bytes.NewReader(body), root); err == nil {
		t.Error("a CAR cut at the bound reads as valid")
	}
	small, _, few := file(t, 300<<10)
	s2 := newServer(t, &mapFetcher{blocks: few}, func(c *Config) { c.MaxResponseBytes = 1 << 20 })
	_, body = get(t, http.MethodGet, s2.URL+"/ipfs/"+small.String()+"?format=car")
	if _, got, err := cartest.Read(bytes.NewReader(body), small); err != nil {
		t.Error(err)
	} else if _, err := cartest.Complete(got, small); err != nil {
		t.Error(err)
	}
}

// The trustless spec's CAR parameters (gateway-conformance's trustless
// cases, by hand: its module is not on the proxy): dag-scope=block is the
// root alone, entity-bytes a range of the file's leaves, and the
// Accept-header form of the parameters the same as the query form.
func TestCarScopes(t *testing.T) {
	root, _, all := file(t, 1<<20) // 4 leaves of 256 KiB under the root
	s := newServer(t, &mapFetcher{blocks: all}, nil)
	count := func(query string, hdr ...string) int {
		t.Helper()
		resp, body := get(t, http.MethodGet, s.URL+"/ipfs/"+root.String()+query, hdr...)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %.200s", query, resp.StatusCode, body)
		}
		order, _, err := cartest.Read(bytes.NewReader(body), root)
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return len(order)
	}
	if n := count("?format=car&dag-scope=block"); n != 1 {
		t.Errorf("dag-scope=block: %d blocks, want the root alone", n)
	}
	if n := count("?format=car&dag-scope=all"); n != len(all) {
		t.Errorf("dag-scope=all: %d blocks, want %d", n, len(all))
	}
	if n := count("?format=car&dag-scope=entity&entity-bytes=0:1000"); n != 2 {
		t.Errorf("entity-bytes=0:1000: %d blocks, want the root and the first leaf", n)
	}
	if n := count("", "Accept", "application/vnd.ipld.car; version=1; order=dfs; dups=n"); n != len(all) {
		t.Errorf("Accept with CAR parameters: %d blocks, want %d", n, len(all))
	}
	resp, body := get(t, http.MethodGet, s.URL+"/ipfs/"+root.String()+"?format=car&dag-scope=nonsense")
	if resp.StatusCode != 400 {
		t.Errorf("bad dag-scope: %d %.200s", resp.StatusCode, body)
	}
}

// A CAR request fetches ahead of boxo's walk: several blocks at once, each
// exactly once, nothing left running after; a raw block request fetches
// its block alone.
func TestPrefetch(t *testing.T) {
	root, _, all := file(t, 4<<20+1)
	f := &mapFetcher{blocks: all, together: make(chan struct{})}
	s := newServer(t, f, nil)
	_, body := get(t, http.MethodGet, s.URL+"/ipfs/"+root.String()+"?format=car")
	_, got, err := cartest.Read(bytes.NewReader(body), root)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := cartest.Complete(got, root); err != nil || n != len(all) {
		t.Fatalf("%d of %d blocks: %v", n, len(all), err)
	}
	testkit.Eventually(t, 5*time.Second, func() string { return "fetches ended" }, f.idle)
	f.mu.Lock()
	calls, peak := f.calls, f.peak
	f.calls, f.peak = 0, 0
	f.mu.Unlock()
	if calls != len(all) {
		t.Errorf("%d fetches for %d blocks", calls, len(all))
	}
	if peak < 2 {
		t.Errorf("at most %d fetch at once: nothing was fetched ahead", peak)
	}
	resp, _ := get(t, http.MethodGet, s.URL+"/ipfs/"+root.String()+"?format=raw")
	if resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	testkit.Eventually(t, 5*time.Second, func() string { return "fetches ended" }, f.idle)
	if f.calls != 1 {
		t.Errorf("a raw block request made %d fetches", f.calls)
	}
}
