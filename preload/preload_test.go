package preload

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multihash"
	"go.uber.org/zap/zaptest"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// fakeKubo stands in for a node's RPC API and records what reaches it.
type fakeKubo struct {
	*httptest.Server
	hits atomic.Int32
	mu   sync.Mutex
	reqs []*http.Request
	// serve answers a refs call; the default lists two refs.
	serve func(w http.ResponseWriter, r *http.Request)
}

func newFakeKubo(t *testing.T) *fakeKubo {
	f := &fakeKubo{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.hits.Add(1)
		f.mu.Lock()
		f.reqs = append(f.reqs, r.Clone(context.Background()))
		serve := f.serve
		f.mu.Unlock()
		if serve == nil {
			serve = func(w http.ResponseWriter, r *http.Request) {
				kuboHeaders(w)
				fmt.Fprintln(w, `{"Ref":"QmA","Err":""}`)
				fmt.Fprintln(w, `{"Ref":"QmB","Err":""}`)
			}
		}
		serve(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeKubo) setServe(s func(http.ResponseWriter, *http.Request)) {
	f.mu.Lock()
	f.serve = s
	f.mu.Unlock()
}

func (f *fakeKubo) last(t *testing.T) *http.Request {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		t.Fatal("no request reached the node")
	}
	return f.reqs[len(f.reqs)-1]
}

// kuboHeaders are the headers Kubo sends before a streamed answer.
func kuboHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Chunked-Output", "1")
	h.Set("Trailer", "X-Stream-Error")
	h.Set("Access-Control-Allow-Headers", "X-Stream-Output, X-Chunked-Output, X-Content-Length")
	w.WriteHeader(http.StatusOK)
}

func testCID(t *testing.T, s string) cid.Cid {
	t.Helper()
	mh, err := multihash.Sum([]byte(s), multihash.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.DagProtobuf, mh)
}

// lookupChooser also names the peer behind each URL.
type lookupChooser struct {
	ChooserFunc
	peers map[string]peer.ID
}

func (l lookupChooser) PeerOf(u string) (peer.ID, bool) {
	p, ok := l.peers[u]
	return p, ok
}

type recSessions struct {
	mu     sync.Mutex
	begins []Call
	ends   int
	onEnd  func()
}

func (s *recSessions) Begin(c Call) func() {
	s.mu.Lock()
	s.begins = append(s.begins, c)
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		s.ends++
		s.mu.Unlock()
		if s.onEnd != nil {
			s.onEnd()
		}
	}
}

func (s *recSessions) counts() (int, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.begins), s.ends
}

type env struct {
	kubo *fakeKubo
	h    *Handler
	srv  *httptest.Server
	sess *recSessions
	root cid.Cid
}

func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	e := &env{kubo: newFakeKubo(t), sess: &recSessions{}, root: testCID(t, "root")}
	cfg := Config{
		Chooser: lookupChooser{ChooserFunc(func(cid.Cid) (string, bool) { return e.kubo.URL, true }),
			map[string]peer.ID{e.kubo.URL: "node-a"}},
		Sessions: e.sess,
		Log:      zaptest.NewLogger(t),
	}
	if mod != nil {
		mod(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) do(t *testing.T, method, pathQuery string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+pathQuery, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func (e *env) refs(t *testing.T, query string) *http.Response {
	t.Helper()
	return e.do(t, http.MethodPost, RefsPath+"?"+query, nil)
}

type kuboError struct {
	Message string
	Code    int
	Type    string
}

// wantError checks status and Kubo's error shape and returns the message.
func wantError(t *testing.T, resp *http.Response, status int) string {
	t.Helper()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != status {
		t.Fatalf("status %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q, want application/json", ct)
	}
	var ke kuboError
	if err := json.Unmarshal(body, &ke); err != nil || ke.Type != "error" || ke.Message == "" {
		t.Fatalf("body %s is not a Kubo error (%v)", body, err)
	}
	if resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatal("error answer lacks Access-Control-Allow-Origin, so a page cannot read it")
	}
	return ke.Message
}

// Nothing but refs gets through: every other RPC command, subcommands of
// refs and unknown paths are 404 for any method, and the node never sees
// them.
func TestPreloadOnlyRefsReachesNode(t *testing.T) {
	e := newEnv(t, nil)
	q := "?arg=" + e.root.String()
	for _, p := range []string{
		"/api/v0/shutdown", "/api/v0/id", "/api/v0/cat" + q, "/api/v0/refs/local",
		"/api/v0/refs/" + e.root.String(), "/api/v0/refs/", "/api/v0/config?arg=Identity.PrivKey",
		"/api/v0/Refs" + q, "/api/v1/refs" + q, "/", "/debug/pprof/", "//api/v0/refs" + q,
		"/api/v0/refs/../shutdown",
	} {
		for _, m := range []string{http.MethodPost, http.MethodGet, http.MethodOptions} {
			resp := e.do(t, m, p, nil)
			if resp.StatusCode != http.StatusNotFound {
				b, _ := io.ReadAll(resp.Body)
				t.Errorf("%s %s: status %d, want 404 (%s)", m, p, resp.StatusCode, b)
				continue
			}
			wantError(t, resp, http.StatusNotFound)
		}
	}
	if n := e.kubo.hits.Load(); n != 0 {
		t.Fatalf("%d requests reached the node", n)
	}
	if b, _ := e.sess.counts(); b != 0 {
		t.Fatalf("%d sessions begun for refused calls", b)
	}
}

func TestPreloadBadRequest(t *testing.T) {
	e := newEnv(t, nil)
	c := e.root.String()
	for _, q := range []string{
		"", "r=true", "arg=", "arg=notacid", "arg=" + c + "&arg=" + c, "arg=/ipns/example.com",
		"arg=/ipfs/", "arg=/ipfs/notacid/x", "arg=" + c + "&r=maybe", "arg=" + c + "&recursive=2",
		"arg=" + c + "&max-depth=x", "arg=" + c + "&max-depth=-2", "arg=" + c + "&e=true&format=<src>",
		"arg=" + c + "&format=" + strings.Repeat("x", 300), "arg=%zz",
	} {
		resp := e.refs(t, q)
		msg := wantError(t, resp, http.StatusBadRequest)
		if !strings.HasPrefix(msg, "preload: ") {
			t.Errorf("%q: message %q", q, msg)
		}
	}
	if n := e.kubo.hits.Load(); n != 0 {
		t.Fatalf("%d bad requests reached the node", n)
	}
}

func TestPreloadMethodNotAllowed(t *testing.T) {
	e := newEnv(t, nil)
	for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead} {
		resp := e.do(t, m, RefsPath+"?arg="+e.root.String(), nil)
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("%s: status %d, want 405", m, resp.StatusCode)
		}
		if a := resp.Header.Get("Allow"); a != "POST, OPTIONS" {
			t.Fatalf("%s: Allow %q", m, a)
		}
		if m != http.MethodHead {
			wantError(t, resp, http.StatusMethodNotAllowed)
		}
	}
	if n := e.kubo.hits.Load(); n != 0 {
		t.Fatalf("%d requests reached the node", n)
	}
}

// The call is re-issued: the node sees POST /api/v0/refs with the refs
// options under their long names and none of the caller's headers.
func TestPreloadReissuesRequest(t *testing.T) {
	e := newEnv(t, nil)
	c := e.root.String()
	cases := []struct {
		query string
		want  url.Values
	}{
		{"r=true&arg=" + c, url.Values{"arg": {c}, "recursive": {"true"}}},
		{"arg=" + c, url.Values{"arg": {c}}},
		{"arg=" + c + "&recursive=1&u&max-depth=3&e=true&encoding=text&timeout=1h&offline=true",
			url.Values{"arg": {c}, "recursive": {"true"}, "unique": {"true"}, "edges": {"true"}, "max-depth": {"3"}}},
		{"arg=/ipfs/" + c + "/a/b.txt&r=false&format=<src>+<linkname>",
			url.Values{"arg": {"/ipfs/" + c + "/a/b.txt"}, "format": {"<src> <linkname>"}}},
		{"arg=" + c + "/sub", url.Values{"arg": {"/ipfs/" + c + "/sub"}}},
		{"arg=" + c + "&format=<dst>&e", url.Values{"arg": {c}, "edges": {"true"}}},
	}
	for _, tc := range cases {
		resp := e.do(t, http.MethodPost, RefsPath+"?"+tc.query, map[string]string{
			"Origin":        "https://app.example",
			"Referer":       "https://app.example/page",
			"Cookie":        "session=secret",
			"Authorization": "Bearer secret",
			"X-Custom":      "1",
		})
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d", tc.query, resp.StatusCode)
		}
		r := e.kubo.last(t)
		if r.Method != http.MethodPost || r.URL.Path != RefsPath {
			t.Fatalf("node got %s %s", r.Method, r.URL.Path)
		}
		got := r.URL.Query()
		tc.want.Set("encoding", "json")
		tc.want.Set("stream-channels", "true")
		if got.Encode() != tc.want.Encode() {
			t.Errorf("%s:\n node got  %s\n want      %s", tc.query, got.Encode(), tc.want.Encode())
		}
		for _, h := range []string{"Origin", "Referer", "Cookie", "Authorization", "X-Custom"} {
			if v := r.Header.Get(h); v != "" {
				t.Errorf("caller's %s: %q reached the node", h, v)
			}
		}
	}
}

// Lines reach the client while the node is still answering, and an error
// the node reports in its trailer arrives in ours.
func TestPreloadStreamsLinesAndTrailer(t *testing.T) {
	e := newEnv(t, nil)
	release := make(chan struct{})
	e.kubo.setServe(func(w http.ResponseWriter, r *http.Request) {
		kuboHeaders(w)
		fmt.Fprintln(w, `{"Ref":"QmFirst","Err":""}`)
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprintln(w, `{"Ref":"","Err":"block was not found locally (offline)"}`)
		w.Header().Set("X-Stream-Error", "context deadline exceeded")
	})
	resp := e.refs(t, "r=true&arg="+e.root.String())
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for k, v := range map[string]string{
		"Content-Type":                "application/json",
		"X-Chunked-Output":            "1",
		"Access-Control-Allow-Origin": "*",
	} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if _, ok := resp.Trailer["X-Stream-Error"]; !ok {
		t.Errorf("X-Stream-Error not announced as a trailer: %v", resp.Trailer)
	}
	if !strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "X-Chunked-Output") {
		t.Errorf("Expose-Headers %q", resp.Header.Get("Access-Control-Expose-Headers"))
	}
	if resp.Header.Get("Access-Control-Allow-Headers") != "" {
		t.Error("the node's own CORS headers were passed on")
	}
	br := bufio.NewReader(resp.Body)
	first := make(chan string, 1)
	go func() {
		l, _ := br.ReadString('\n')
		first <- l
	}()
	select {
	case l := <-first:
		if l != `{"Ref":"QmFirst","Err":""}`+"\n" {
			t.Fatalf("first line %q", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first line not streamed while the node was still answering")
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if string(rest) != `{"Ref":"","Err":"block was not found locally (offline)"}`+"\n" {
		t.Fatalf("rest %q", rest)
	}
	if got := resp.Trailer.Get("X-Stream-Error"); got != "context deadline exceeded" {
		t.Fatalf("trailer X-Stream-Error = %q", got)
	}
}

// An error answer from the node (500 with Kubo's JSON) passes as is.
func TestPreloadNodeErrorPassedOn(t *testing.T) {
	e := newEnv(t, nil)
	const body = `{"Message":"no link named \"nope\" under QmX","Code":0,"Type":"error"}` + "\n"
	e.kubo.setServe(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Trailer", "X-Stream-Error")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, body)
	})
	resp := e.refs(t, "arg=/ipfs/"+e.root.String()+"/nope")
	got, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusInternalServerError || string(got) != body {
		t.Fatalf("got %d %q", resp.StatusCode, got)
	}
	if b, en := e.sess.counts(); b != 1 || en != 1 {
		t.Fatalf("sessions: %d begun, %d ended", b, en)
	}
}

func TestPreloadNoNode(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Chooser = ChooserFunc(func(cid.Cid) (string, bool) { return "", false })
	})
	resp := e.refs(t, "r=true&arg="+e.root.String())
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	wantError(t, resp, http.StatusServiceUnavailable)
	if b, _ := e.sess.counts(); b != 0 {
		t.Fatal("session begun without a node")
	}
}

func TestPreloadNodeUnreachable(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	e := newEnv(t, func(c *Config) {
		c.Chooser = ChooserFunc(func(cid.Cid) (string, bool) { return deadURL, true })
	})
	msg := wantError(t, e.refs(t, "r=true&arg="+e.root.String()), http.StatusBadGateway)
	if strings.Contains(msg, deadURL) {
		t.Fatalf("message %q leaks the node's internal address", msg)
	}
	if c := e.sess.begins[0]; c.Node != (Target{URL: deadURL}) {
		t.Fatalf("without a PeerLookup the session got node %+v", c.Node)
	}
	if b, en := e.sess.counts(); b != 1 || en != 1 {
		t.Fatalf("sessions: %d begun, %d ended", b, en)
	}
}

// The session hook sees the call before the node does and its end after
// the answer is complete, exactly once.
func TestPreloadSessionsHook(t *testing.T) {
	var mu sync.Mutex
	var order []string
	note := func(s string) {
		mu.Lock()
		order = append(order, s)
		mu.Unlock()
	}
	sess := &recSessions{onEnd: func() { note("end") }}
	e := newEnv(t, func(c *Config) {
		c.Sessions = SessionsFunc(func(call Call) func() {
			note("begin")
			return sess.Begin(call)
		})
	})
	e.kubo.setServe(func(w http.ResponseWriter, r *http.Request) {
		note("node")
		kuboHeaders(w)
		fmt.Fprintln(w, `{"Ref":"QmA","Err":""}`)
	})
	resp := e.refs(t, "r=true&max-depth=2&arg=/ipfs/"+e.root.String()+"/a")
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	eventually(t, "the session to end", func() bool { _, n := sess.counts(); return n == 1 })
	mu.Lock()
	if got := strings.Join(order, ","); got != "begin,node,end" {
		t.Fatalf("order %s", got)
	}
	mu.Unlock()
	c := sess.begins[0]
	want := Call{Root: e.root, Path: "/ipfs/" + e.root.String() + "/a", MaxDepth: 2,
		Node: Target{URL: e.kubo.URL, Peer: "node-a"}, Client: netip.MustParseAddr("127.0.0.1")}
	if c != want {
		t.Fatalf("call %+v\nwant %+v", c, want)
	}

	resp = e.refs(t, "arg="+e.root.String())
	io.Copy(io.Discard, resp.Body)
	eventually(t, "the second session to end", func() bool { _, n := sess.counts(); return n == 2 })
	if d := sess.begins[1].MaxDepth; d != 1 {
		t.Fatalf("non-recursive call has MaxDepth %d, want 1", d)
	}
}

// Without a Sessions hook, and with a hook returning nil, calls work.
func TestPreloadNilSessions(t *testing.T) {
	for name, s := range map[string]Sessions{"nil": nil, "nil end": SessionsFunc(func(Call) func() { return nil })} {
		e := newEnv(t, func(c *Config) { c.Sessions = s })
		resp := e.refs(t, "r=true&arg="+e.root.String())
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || strings.Count(string(b), "\n") != 2 {
			t.Fatalf("%s: %d %q", name, resp.StatusCode, b)
		}
	}
}

func TestPreloadCORSPreflight(t *testing.T) {
	e := newEnv(t, nil)
	resp := e.do(t, http.MethodOptions, RefsPath+"?r=true&arg="+e.root.String(), map[string]string{
		"Origin":                                 "https://app.example",
		"Access-Control-Request-Method":          "POST",
		"Access-Control-Request-Headers":         "content-type, x-requested-with",
		"Access-Control-Request-Private-Network": "true",
	})
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("preflight status %d", resp.StatusCode)
	}
	for k, v := range map[string]string{
		"Access-Control-Allow-Origin":          "*",
		"Access-Control-Allow-Methods":         "POST, OPTIONS",
		"Access-Control-Allow-Headers":         "content-type, x-requested-with",
		"Access-Control-Allow-Private-Network": "true",
		"Access-Control-Max-Age":               "86400",
	} {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	// A header list that is not one is not echoed.
	resp = e.do(t, http.MethodOptions, RefsPath, map[string]string{
		"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
		"Access-Control-Request-Headers": "x-a; y=\"<script>\"",
	})
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Headers") != "" {
		t.Errorf("bad header list: %d %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Headers"))
	}
	if n := e.kubo.hits.Load(); n != 0 {
		t.Fatalf("preflight reached the node %d times", n)
	}
	// The actual call from a browser page.
	resp = e.do(t, http.MethodPost, RefsPath+"?r=true&arg="+e.root.String(), map[string]string{"Origin": "https://app.example"})
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("browser POST: %d, Allow-Origin %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
	}
}

func TestPreloadClientIP(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	for _, tc := range []struct {
		remote string
		xff    []string
		want   string
	}{
		{"203.0.113.5:1234", nil, "203.0.113.5"},
		{"203.0.113.5:1234", []string{"198.51.100.1"}, "203.0.113.5"}, // untrusted peer: XFF ignored
		{"10.1.2.3:80", nil, "10.1.2.3"},
		{"10.1.2.3:80", []string{"198.51.100.1"}, "198.51.100.1"},
		{"10.1.2.3:80", []string{"6.6.6.6, 198.51.100.1"}, "198.51.100.1"},             // spoofed left part ignored
		{"10.1.2.3:80", []string{"6.6.6.6, 198.51.100.1, 10.9.9.9"}, "198.51.100.1"},   // proxy chain
		{"10.1.2.3:80", []string{"6.6.6.6", "198.51.100.1:4444"}, "198.51.100.1"},      // two header lines, port
		{"10.1.2.3:80", []string{"10.5.5.5, 10.6.6.6"}, "10.5.5.5"},                    // all trusted: leftmost
		{"10.1.2.3:80", []string{"198.51.100.1, garbage"}, "10.1.2.3"},                 // malformed: stop at the proxy
		{"10.1.2.3:80", []string{"198.51.100.1, garbage, 10.7.7.7"}, "10.7.7.7"},       //
		{"10.1.2.3:80", []string{"[2001:db8::1]:443"}, "2001:db8::1"},                  //
		{"[fd00::1]:80", []string{"::ffff:198.51.100.7"}, "198.51.100.7"},              // mapped v4 unmapped
		{"[::ffff:10.1.2.3]:80", []string{"198.51.100.1"}, "198.51.100.1"},             // mapped peer still trusted
		{"[fe80::1%eth0]:80", nil, "fe80::1"},                                          // zone dropped
		{"10.1.2.3:80", []string{""}, "10.1.2.3"},                                      //
		{"10.1.2.3:80", []string{"unknown"}, "10.1.2.3"},                               //
		{"203.0.113.5:1234", []string{"10.0.0.1"}, "203.0.113.5"},                      //
		{"10.1.2.3:80", []string{"203.0.113.9,198.51.100.1,10.2.2.2"}, "198.51.100.1"}, //
	} {
		r := httptest.NewRequest(http.MethodPost, RefsPath, nil)
		r.RemoteAddr = tc.remote
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := clientIP(r, trusted); got != netip.MustParseAddr(tc.want) {
			t.Errorf("remote %s xff %q: got %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
}

// X-Forwarded-For through the handler: believed from a trusted proxy, so
// the limit and the session see the real client; ignored otherwise.
func TestPreloadXFFTrust(t *testing.T) {
	for _, trust := range []bool{false, true} {
		e := newEnv(t, func(c *Config) {
			if trust {
				c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
			}
		})
		resp := e.do(t, http.MethodPost, RefsPath+"?arg="+e.root.String(), map[string]string{"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
		io.Copy(io.Discard, resp.Body)
		eventually(t, "the session to end", func() bool { _, n := e.sess.counts(); return n == 1 })
		want := "127.0.0.1"
		if trust {
			want = "203.0.113.7"
		}
		if got := e.sess.begins[0].Client.String(); got != want {
			t.Errorf("trusted=%v: client %s, want %s", trust, got, want)
		}
	}
}

// Past MaxPerIP concurrent calls a client gets 429 with Retry-After; other
// clients are unaffected, and a finished call frees its slot.
func TestPreloadPerIPLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.MaxPerIP = 2
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	})
	release := make(chan struct{})
	var started atomic.Int32
	e.kubo.setServe(func(w http.ResponseWriter, r *http.Request) {
		kuboHeaders(w)
		w.(http.Flusher).Flush()
		started.Add(1)
		<-release
	})
	from := func(ip string) map[string]string { return map[string]string{"X-Forwarded-For": ip} }
	q := RefsPath + "?r=true&arg=" + e.root.String()
	var held []*http.Response
	for range 2 {
		held = append(held, e.do(t, http.MethodPost, q, from("198.51.100.1")))
	}
	eventually(t, "two calls running", func() bool { return started.Load() == 2 })

	resp := e.do(t, http.MethodPost, q, from("198.51.100.1"))
	if resp.Header.Get("Retry-After") == "" {
		t.Error("429 without Retry-After")
	}
	wantError(t, resp, http.StatusTooManyRequests)
	// IPv6 clients are counted per /64.
	held = append(held, e.do(t, http.MethodPost, q, from("2001:db8:1:2::1")), e.do(t, http.MethodPost, q, from("2001:db8:1:2::2")))
	eventually(t, "four calls running", func() bool { return started.Load() == 4 })
	wantError(t, e.do(t, http.MethodPost, q, from("2001:db8:1:2:ffff::3")), http.StatusTooManyRequests)
	// Another client is not held up.
	other := e.do(t, http.MethodPost, q, from("198.51.100.2"))
	if other.StatusCode != http.StatusOK {
		t.Fatalf("other client: %d", other.StatusCode)
	}
	if n := e.h.Stats().Clients; n != 3 {
		t.Fatalf("Stats().Clients = %d, want 3", n)
	}
	close(release)
	for _, r := range append(held, other) {
		io.Copy(io.Discard, r.Body)
	}
	eventually(t, "the limiter to empty", func() bool { return e.h.Stats().Clients == 0 })
	resp = e.do(t, http.MethodPost, q, from("198.51.100.1"))
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after the calls ended: %d", resp.StatusCode)
	}
	if b, en := e.sess.counts(); b != 6 || en != 6 {
		t.Fatalf("sessions: %d begun, %d ended; want 6 and 6 (refused calls open none)", b, en)
	}
}

// The time limit: before the node answers it is a 504; after, the lines so
// far and an X-Stream-Error trailer naming the limit. Either way the call
// to the node is cancelled and the session ends.
func TestPreloadTimeout(t *testing.T) {
	const limit = 300 * time.Millisecond
	e := newEnv(t, func(c *Config) { c.Timeout = limit })
	nodeGone := make(chan struct{}, 2)
	e.kubo.setServe(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("max-depth") == "1" { // silent node
			<-r.Context().Done()
			nodeGone <- struct{}{}
			return
		}
		kuboHeaders(w)
		fmt.Fprintln(w, `{"Ref":"QmA","Err":""}`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		nodeGone <- struct{}{}
	})

	start := time.Now()
	msg := wantError(t, e.refs(t, "r=true&max-depth=1&arg="+e.root.String()), http.StatusGatewayTimeout)
	if took := time.Since(start); took < limit || took > limit+2*time.Second {
		t.Fatalf("504 after %v with a %v limit", took, limit)
	}
	if !strings.Contains(msg, limit.String()) {
		t.Errorf("504 message %q does not name the limit", msg)
	}

	start = time.Now()
	resp := e.refs(t, "r=true&arg="+e.root.String())
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("the call did not end cleanly: %v", err)
	}
	if took := time.Since(start); took > limit+2*time.Second {
		t.Fatalf("call took %v with a %v limit", took, limit)
	}
	if resp.StatusCode != http.StatusOK || string(body) != `{"Ref":"QmA","Err":""}`+"\n" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if te := resp.Trailer.Get("X-Stream-Error"); !strings.Contains(te, limit.String()) {
		t.Fatalf("trailer X-Stream-Error = %q, want it to name the %v limit", te, limit)
	}
	for range 2 {
		select {
		case <-nodeGone:
		case <-time.After(5 * time.Second):
			t.Fatal("the call to the node was not cancelled")
		}
	}
	eventually(t, "sessions to end", func() bool { b, n := e.sess.counts(); return b == 2 && n == 2 })
}

// A client that goes away cancels the node's call and ends the session.
func TestPreloadClientGone(t *testing.T) {
	e := newEnv(t, nil)
	nodeGone := make(chan struct{})
	e.kubo.setServe(func(w http.ResponseWriter, r *http.Request) {
		kuboHeaders(w)
		fmt.Fprintln(w, `{"Ref":"QmA","Err":""}`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(nodeGone)
	})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.srv.URL+RefsPath+"?r=true&arg="+e.root.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := bufio.NewReader(resp.Body).ReadString('\n'); !strings.Contains(l, "QmA") {
		t.Fatalf("first line %q", l)
	}
	cancel()
	resp.Body.Close()
	select {
	case <-nodeGone:
	case <-time.After(5 * time.Second):
		t.Fatal("the node's call outlived the client")
	}
	eventually(t, "the session to end", func() bool { _, n := e.sess.counts(); return n == 1 })
	eventually(t, "the limiter to empty", func() bool { return e.h.Stats().Clients == 0 })
}

// Closing the server ends running calls with a trailer saying why.
func TestPreloadServerClose(t *testing.T) {
	kubo := newFakeKubo(t)
	kubo.setServe(func(w http.ResponseWriter, r *http.Request) {
		kuboHeaders(w)
		fmt.Fprintln(w, `{"Ref":"QmA","Err":""}`)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	sess := &recSessions{}
	h, err := New(Config{Chooser: ChooserFunc(func(cid.Cid) (string, bool) { return kubo.URL, true }), Sessions: sess})
	if err != nil {
		t.Fatal(err)
	}
	s, err := Listen("127.0.0.1:0", h, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.srv.ReadHeaderTimeout <= 0 || s.srv.IdleTimeout <= 0 || s.srv.MaxHeaderBytes <= 0 {
		t.Fatal("server without timeouts against slow clients")
	}
	resp, err := http.Post(s.URL()+RefsPath+"?r=true&arg="+testCID(t, "x").String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	if l, _ := br.ReadString('\n'); !strings.Contains(l, "QmA") {
		t.Fatalf("first line %q", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := io.ReadAll(br); err != nil {
		t.Fatalf("call did not end cleanly: %v", err)
	}
	if te := resp.Trailer.Get("X-Stream-Error"); !strings.Contains(te, "shutting down") {
		t.Fatalf("trailer %q", te)
	}
	if _, n := sess.counts(); n != 1 {
		t.Fatal("session not ended")
	}
	var nilServer *Server
	if nilServer.Close(ctx) != nil || nilServer.URL() != "" {
		t.Fatal("nil Server is not a no-op")
	}
}

func TestPreloadNewRejects(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a Chooser")
	}
	ch := ChooserFunc(func(cid.Cid) (string, bool) { return "", false })
	if _, err := New(Config{Chooser: ch, Timeout: -1}); err == nil {
		t.Fatal("negative timeout accepted")
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, testkit.Say(what), cond)
}
