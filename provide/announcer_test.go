package provide

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// fakeProvider records what is being provided.
type fakeProvider struct {
	mu    sync.Mutex
	keys  map[string]bool
	calls int
	fail  bool
}

func (p *fakeProvider) StartProviding(_ bool, keys ...mh.Multihash) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.fail {
		return errors.New("offline")
	}
	for _, k := range keys {
		p.keys[string(k)] = true
	}
	return nil
}

func (p *fakeProvider) StopProviding(keys ...mh.Multihash) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	for _, k := range keys {
		delete(p.keys, string(k))
	}
	return nil
}

func (p *fakeProvider) providing(cs ...cid.Cid) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.keys) != len(cs) {
		return false
	}
	for _, c := range cs {
		if !p.keys[string(c.Hash())] {
			return false
		}
	}
	return true
}

// fakePins answers from a table; a node missing from it fails.
type fakePins struct {
	mu   sync.Mutex
	pins map[string][]cid.Cid
}

func (f *fakePins) Pins(_ context.Context, node string, max int) ([]cid.Cid, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.pins[node]
	if !ok {
		return nil, errors.New("node down")
	}
	return p[:min(len(p), max)], nil
}

func (f *fakePins) set(node string, c []cid.Cid) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c == nil {
		delete(f.pins, node)
	} else {
		f.pins[node] = c
	}
}

func TestAnnouncerFollowsTheFleet(t *testing.T) {
	prov := &fakeProvider{keys: map[string]bool{}}
	pins := &fakePins{pins: map[string][]cid.Cid{"a": cids(t, 0, 2), "b": cids(t, 2, 3)}}
	nodes := []string{"a", "b"}
	now := time.Unix(1000, 0)
	a, err := New(Config{Provider: prov, Pins: pins, Nodes: func() []string { return nodes }, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a.RefreshPins(ctx)
	if !prov.providing(cids(t, 0, 3)...) {
		t.Fatalf("providing %v, want both nodes' pins", prov.keys)
	}
	// b is down: its last listing stays. a unpins one root: it stops.
	pins.set("b", nil)
	pins.set("a", cids(t, 0, 1))
	a.RefreshPins(ctx)
	if !prov.providing(testCID(t, 0), testCID(t, 2)) {
		t.Fatalf("providing %v, want a's remaining pin and b's last listing", prov.keys)
	}
	// A preload adds its root; when it expires, it goes.
	a.Preloaded(testCID(t, 9))
	a.sync()
	if !prov.providing(testCID(t, 0), testCID(t, 2), testCID(t, 9)) {
		t.Fatalf("providing %v, want the preloaded root added", prov.keys)
	}
	now = now.Add(DefaultPreloadTTL)
	// b leaves the fleet: its pins go too.
	nodes = []string{"a"}
	a.RefreshPins(ctx)
	if !prov.providing(testCID(t, 0)) {
		t.Fatalf("providing %v, want a's pin alone", prov.keys)
	}
	if n, tr := a.Announced(); n != 1 || tr {
		t.Fatalf("Announced() = %d, %v", n, tr)
	}
	// Nothing changed: the provider is not called again.
	calls := prov.calls
	a.RefreshPins(ctx)
	if prov.calls != calls {
		t.Fatal("an unchanged set called the provider")
	}
}

// A provider that refuses keys (offline) leaves them unannounced, so the
// next sync tries them again.
func TestAnnouncerRetriesRefusedKeys(t *testing.T) {
	prov := &fakeProvider{keys: map[string]bool{}, fail: true}
	pins := &fakePins{pins: map[string][]cid.Cid{"a": cids(t, 0, 2)}}
	a, err := New(Config{Provider: prov, Pins: pins, Nodes: func() []string { return []string{"a"} }})
	if err != nil {
		t.Fatal(err)
	}
	a.RefreshPins(context.Background())
	if n, _ := a.Announced(); n != 0 {
		t.Fatalf("%d keys counted as announced after a refusal", n)
	}
	prov.mu.Lock()
	prov.fail = false
	prov.mu.Unlock()
	a.sync()
	if !prov.providing(cids(t, 0, 2)...) {
		t.Fatalf("providing %v after the retry", prov.keys)
	}
}

// Run announces a preloaded root without waiting for the next refresh.
func TestAnnouncerRunHearsPreloads(t *testing.T) {
	prov := &fakeProvider{keys: map[string]bool{}}
	a, err := New(Config{Provider: prov, Pins: &fakePins{pins: map[string][]cid.Cid{}}, Nodes: func() []string { return nil }, Refresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx)
	}()
	a.Preloaded(testCID(t, 1))
	testkit.Eventually(t, 10*time.Second, testkit.Say("preloaded root provided"), func() bool { return prov.providing(testCID(t, 1)) })
	cancel()
	<-done
}

func TestKuboPins(t *testing.T) {
	lines := []string{}
	for _, c := range cids(t, 0, 5) {
		lines = append(lines, `{"Cid":"`+c.String()+`","Type":"recursive","Name":""}`)
	}
	var mode string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v0/pin/ls" || r.URL.Query().Get("type") != "recursive" {
			http.Error(w, "bad call", 400)
			return
		}
		switch mode {
		case "error":
			http.Error(w, `{"Message":"boom"}`, 500)
		case "trailer":
			w.Header().Set("Trailer", "X-Stream-Error")
			w.Write([]byte(lines[0] + "\n"))
			w.Header().Set("X-Stream-Error", "repo broke")
		case "garbage":
			w.Write([]byte(`{"Cid":"nope"}` + "\n"))
		default:
			w.Write([]byte(strings.Join(lines, "\n") + "\n"))
		}
	}))
	t.Cleanup(srv.Close)
	ctx := context.Background()
	for _, tc := range []struct {
		mode, err string
		max, n    int
	}{
		{"", "", 100, 5}, {"", "", 3, 3}, {"error", "500", 100, 0}, {"trailer", "repo broke", 100, 0}, {"garbage", "nope", 100, 0},
	} {
		mode = tc.mode
		got, err := KuboPins{}.Pins(ctx, srv.URL, tc.max)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err %v, want %q", tc.mode, err, tc.err)
			}
			continue
		}
		if err != nil || len(got) != tc.n || !got[0].Equals(testCID(t, 0)) {
			t.Errorf("%s max %d: %v (%v), want %d pins", tc.mode, tc.max, got, err, tc.n)
		}
	}
}
