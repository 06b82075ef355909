package preload

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"go.uber.org/zap/zaptest"
)

// slowClient is a raw connection that sends its request a little at a
// time and records when the server cut it off.
type slowClient struct {
	conn   net.Conn
	start  time.Time
	mu     sync.Mutex
	closed time.Duration // since start; 0 while open
	status string        // first line of an answer, if any
}

func dialSlow(t *testing.T, addr, head string, trickle time.Duration) *slowClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &slowClient{conn: conn, start: time.Now()}
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	go func() {
		// One byte per tick, never finishing: a header line that never
		// ends, or a body that never arrives in full.
		for {
			time.Sleep(trickle)
			if _, err := conn.Write([]byte("a")); err != nil {
				return
			}
		}
	}()
	go func() {
		br := bufio.NewReader(conn)
		line, _ := br.ReadString('\n')
		c.mu.Lock()
		c.status = strings.TrimSpace(line)
		c.mu.Unlock()
		_, _ = io.Copy(io.Discard, br)
		c.mu.Lock()
		c.closed = time.Since(c.start)
		c.mu.Unlock()
	}()
	return c
}

func (c *slowClient) state() (time.Duration, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed, c.status
}

// Slow clients on the preload port (headers trickled in, slowloris, or a
// body that never completes) are cut off by the server's timeouts, and
// while they hang on, other callers, from the same address too, are served
// at once: a stalled request never holds one of its address's call slots.
func TestPreloadSlowClientsAreCutOff(t *testing.T) {
	kubo := newFakeKubo(t)
	h, err := New(Config{Chooser: ChooserFunc(func(cid.Cid) (string, bool) { return kubo.URL, true }), MaxPerIP: 2})
	if err != nil {
		t.Fatal(err)
	}
	to := Timeouts{ReadHeader: 500 * time.Millisecond, Read: 1500 * time.Millisecond, Idle: time.Second}
	s, err := ListenTimeouts("127.0.0.1:0", h, zaptest.NewLogger(t), to)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(t.Context()) })
	addr := s.Addr().String()
	query := RefsPath + "?r=true&arg=" + testCID(t, "x").String()

	const slowHeaders, slowBodies = 100, 20
	var clients []*slowClient
	for range slowHeaders {
		clients = append(clients, dialSlow(t, addr, "POST "+query+" HTTP/1.1\r\nHost: kitsune\r\nX-Slow: ", 100*time.Millisecond))
	}
	for range slowBodies {
		clients = append(clients, dialSlow(t, addr, "POST "+query+" HTTP/1.1\r\nHost: kitsune\r\nContent-Length: 100000\r\n\r\n", 100*time.Millisecond))
	}

	// Meanwhile a caller from the same address is answered, again and
	// again, although MaxPerIP is 2 and 120 requests hang on. (The
	// slow-body calls were admitted: give them a moment to be answered.)
	time.Sleep(200 * time.Millisecond)
	for i := range 5 {
		began := time.Now()
		resp, err := http.Post(s.URL()+query, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "QmA") {
			t.Fatalf("call %d beside the slow clients: %d %s", i, resp.StatusCode, body)
		}
		if took := time.Since(began); took > 500*time.Millisecond {
			t.Fatalf("call %d beside the slow clients took %v", i, took)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Each slow client is gone within its timeout and a little slack.
	const slack = time.Second
	eventually(t, "every slow client to be cut off", func() bool {
		for _, c := range clients {
			if d, _ := c.state(); d == 0 {
				return false
			}
		}
		return true
	})
	var worstHeader, worstBody time.Duration
	for i, c := range clients {
		d, status := c.state()
		if i < slowHeaders {
			worstHeader = max(worstHeader, d)
			if d > to.ReadHeader+slack {
				t.Fatalf("a slowloris client held on %v (ReadHeader %v)", d, to.ReadHeader)
			}
			if strings.Contains(status, "200") {
				t.Fatalf("a request with unfinished headers was answered: %q", status)
			}
		} else {
			worstBody = max(worstBody, d)
			// net/http waits 500 ms after closing its side before it
			// closes the connection (rstAvoidanceDelay).
			if d > to.Read+500*time.Millisecond+slack {
				t.Fatalf("a slow-body client held on %v (Read %v)", d, to.Read)
			}
		}
	}
	t.Logf("slowloris cut off after at most %v (ReadHeader %v), slow bodies after %v (Read %v)", worstHeader.Round(time.Millisecond), to.ReadHeader, worstBody.Round(time.Millisecond), to.Read)
	if n := h.Stats().Clients; n != 0 {
		t.Fatalf("%d client addresses still hold call slots", n)
	}
}

// The defaults stay in place for the zero Timeouts.
func TestPreloadDefaultTimeouts(t *testing.T) {
	h, err := New(Config{Chooser: ChooserFunc(func(cid.Cid) (string, bool) { return "", false })})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ListenTimeouts("127.0.0.1:0", h, nil, Timeouts{Read: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(t.Context())
	if s.srv.ReadHeaderTimeout != readHeaderTimeout || s.srv.ReadTimeout != time.Second || s.srv.IdleTimeout != idleTimeout {
		t.Fatalf("timeouts %v %v %v", s.srv.ReadHeaderTimeout, s.srv.ReadTimeout, s.srv.IdleTimeout)
	}
}

// refsOptions are the only query parameters the node may ever see.
var refsOptions = map[string]bool{
	"arg": true, "recursive": true, "unique": true, "edges": true, "format": true,
	"max-depth": true, "encoding": true, "stream-channels": true,
}

// FuzzParseRefs: any query string on the preload port either is refused
// with 400, or becomes a refs call whose query to the node holds only
// refs options, names the same root, and parses back to the same call.
// The whole handler sees the same string (with no node to call) and
// answers 400 or 503, never anything else, and never panics.
func FuzzParseRefs(f *testing.F) {
	noNode, err := New(Config{Chooser: ChooserFunc(func(cid.Cid) (string, bool) { return "", false })})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		req := httptest.NewRequest(http.MethodPost, "http://kitsune"+RefsPath, nil)
		req.URL.RawQuery = raw
		rec := httptest.NewRecorder()
		noNode.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("status %d for %q", rec.Code, raw)
		}

		q, err := url.ParseQuery(raw)
		if err != nil {
			if rec.Code != http.StatusBadRequest {
				t.Fatalf("an unparsable query got %d", rec.Code)
			}
			return
		}
		r, err := parseRefs(q)
		if (err != nil) != (rec.Code == http.StatusBadRequest) {
			t.Fatalf("parseRefs says %v, the handler %d", err, rec.Code)
		}
		if err != nil {
			return
		}
		if !r.root.Defined() || r.depth < -1 || (r.edges && r.format != "") || len(r.format) > maxFormatLen {
			t.Fatalf("accepted an invalid call %+v from %q", r, raw)
		}
		sent, err := url.ParseQuery(r.query())
		if err != nil {
			t.Fatalf("query to the node does not parse: %v", err)
		}
		for k := range sent {
			if !refsOptions[k] {
				t.Fatalf("option %q would reach the node (from %q)", k, raw)
			}
		}
		again, err := parseRefs(sent)
		if err != nil {
			t.Fatalf("the node's query %q is refused on re-parse: %v", r.query(), err)
		}
		if !again.root.Equals(r.root) || again.path != r.path || again.recursive != r.recursive || again.unique != r.unique ||
			again.edges != r.edges || again.format != r.format || again.depth != r.depth {
			t.Fatalf("round trip changed the call: %+v -> %+v", r, again)
		}
		if strings.HasPrefix(r.path, "/") && !strings.HasPrefix(r.path, "/ipfs/") {
			t.Fatalf("path %q outside /ipfs/ accepted", r.path)
		}
		root, _, err := parsePath(r.path)
		if err != nil || !root.Equals(r.root) {
			t.Fatalf("path %q names %v, not %s (%v)", r.path, root, r.root, err)
		}
	})
}
