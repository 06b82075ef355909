package downstream

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"go.uber.org/zap/zaptest"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "downstreams")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadMembersFile(t *testing.T) {
	path := writeFile(t, `# the fleet
/ip4/10.0.1.42/tcp/5001

   /dns4/kubo-1.kubo/tcp/5001/http   # trailing comment
http://10.0.1.43:5001
	https://kubo.example.org:8443/
#/ip4/10.0.9.9/tcp/5001 commented out
# not an address: only a comment
/ip6/fd00::7/tcp/5001`)
	got, err := ReadMembersFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/ip4/10.0.1.42/tcp/5001",
		"/dns4/kubo-1.kubo/tcp/5001/http",
		"http://10.0.1.43:5001",
		"https://kubo.example.org:8443/",
		"/ip6/fd00::7/tcp/5001",
	}
	if !slices.Equal(got, want) {
		t.Errorf("ReadMembersFile =\n%q\nwant\n%q", got, want)
	}
	// What it returns is accepted by the pool as it is.
	for _, a := range got {
		if _, err := APIURL(a); err != nil {
			t.Errorf("%q: %v", a, err)
		}
	}
}

func TestReadMembersFileEmpty(t *testing.T) {
	for _, content := range []string{"", "\n\n", "# nothing yet\n   \n# still nothing"} {
		got, err := ReadMembersFile(writeFile(t, content))
		if err != nil || len(got) != 0 {
			t.Errorf("ReadMembersFile(%q) = %q, %v; want no members and no error", content, got, err)
		}
	}
}

func TestReadMembersFileCRLF(t *testing.T) {
	got, err := ReadMembersFile(writeFile(t, "# windows\r\n/ip4/10.0.1.42/tcp/5001\r\nhttp://10.0.1.43:5001\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/ip4/10.0.1.42/tcp/5001", "http://10.0.1.43:5001"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestReadMembersFileBadLine(t *testing.T) {
	for _, tc := range []struct {
		content string
		line    string
	}{
		{"/ip4/10.0.1.42/tcp/5001\n\n# ok so far\n/ip4/10.0.1.43/udp/5001\nhttp://10.0.1.44:5001\n", "line 4"},
		{"kubo-0:5001\n", "line 1"},
		{"# a\n# b\nhttp://10.0.1.42\n", "line 3"},
		{"http://10.0.1.42:5001\nhttp://10.0.1.43:5001/api/v0 # with a path\n", "line 2"},
	} {
		path := writeFile(t, tc.content)
		got, err := ReadMembersFile(path)
		if err == nil {
			t.Errorf("ReadMembersFile(%q) = %q; want an error", tc.content, got)
			continue
		}
		if got != nil {
			t.Errorf("ReadMembersFile(%q) returned members %q with its error", tc.content, got)
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.line+":") || !strings.Contains(msg, path) {
			t.Errorf("ReadMembersFile(%q): error %q should name %s and %s", tc.content, msg, path, tc.line)
		}
	}
}

func TestReadMembersFileMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no-such-file")
	got, err := ReadMembersFile(path)
	if err == nil {
		t.Fatalf("ReadMembersFile(missing) = %q; want an error", got)
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v should wrap os.ErrNotExist", err)
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q should name the file", err)
	}
}

func TestParseDNSName(t *testing.T) {
	for in, want := range map[string][2]string{
		"kubo.fleet.svc.cluster.local:5001": {"kubo.fleet.svc.cluster.local", "5001"},
		"kubo:5001":                         {"kubo", "5001"},
		"[fd00::1]:5001":                    {"fd00::1", "5001"},
	} {
		h, p, err := ParseDNSName(in)
		if err != nil || h != want[0] || p != want[1] {
			t.Errorf("ParseDNSName(%q) = %q, %q, %v; want %q, %q", in, h, p, err, want[0], want[1])
		}
	}
	for _, in := range []string{"", "kubo", ":5001", "kubo:", "http://kubo:5001"} {
		if _, _, err := ParseDNSName(in); err == nil {
			t.Errorf("ParseDNSName(%q): want an error", in)
		}
	}
}

// ---- a tiny authoritative DNS server for the tests ----

// dnsMode is how the test server answers.
type dnsMode int

const (
	dnsAnswer   dnsMode = iota // the configured records
	dnsNXDomain                // NXDOMAIN for every name
	dnsServFail                // SERVFAIL for every query
	dnsSilent                  // read the query, never answer
)

// testDNS answers A and AAAA queries on 127.0.0.1 (UDP) from a record set
// the test changes as it goes. It speaks just enough of RFC 1035 for Go's
// resolver, so the tests need nothing outside the standard library.
type testDNS struct {
	conn net.PacketConn

	mu       sync.Mutex
	name     string // lower case, rooted
	records  []netip.Addr
	mode     dnsMode
	failAAAA bool // SERVFAIL for AAAA queries only
	queries  int
}

func newTestDNS(t *testing.T, name string) *testDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &testDNS{conn: pc, name: strings.ToLower(name)}
	go d.serve()
	t.Cleanup(d.stop)
	return d
}

func (d *testDNS) addr() string { return d.conn.LocalAddr().String() }

func (d *testDNS) set(mode dnsMode, records ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mode = mode
	d.records = d.records[:0]
	for _, r := range records {
		d.records = append(d.records, netip.MustParseAddr(r))
	}
}

func (d *testDNS) setFailAAAA(v bool) {
	d.mu.Lock()
	d.failAAAA = v
	d.mu.Unlock()
}

func (d *testDNS) queryCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries
}

// stop closes the socket: further queries get ICMP port unreachable, which
// the resolver sees as connection refused.
func (d *testDNS) stop() {
	_ = d.conn.Close()
}

// resolver is a Go resolver that asks only this server, built as
// cmd/kitsune does for --dns-server. Its per-query timeout is cut to
// 200ms so a silent server costs the test little time.
func (d *testDNS) resolver() *net.Resolver {
	server := d.addr()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, network, server)
		if err != nil {
			return nil, err
		}
		if u, ok := c.(*net.UDPConn); ok {
			return shortDeadlineConn{u}, nil
		}
		return c, nil
	}}
}

// shortDeadlineConn caps the resolver's deadlines. It embeds the UDP conn
// so it stays a net.PacketConn: otherwise Go's resolver would frame its
// queries as over TCP.
type shortDeadlineConn struct{ *net.UDPConn }

func (c shortDeadlineConn) SetDeadline(t time.Time) error {
	if limit := time.Now().Add(200 * time.Millisecond); t.IsZero() || t.After(limit) {
		t = limit
	}
	return c.UDPConn.SetDeadline(t)
}

func (d *testDNS) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		resp := d.handle(buf[:n])
		if resp != nil {
			_, _ = d.conn.WriteTo(resp, from)
		}
	}
}

const (
	dnsTypeA    = 1
	dnsTypeAAAA = 28
)

// handle parses one query and builds the reply, nil for none.
func (d *testDNS) handle(q []byte) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return nil
	}
	// The question: labels, then type and class.
	i := 12
	var labels []string
	for {
		if i >= len(q) {
			return nil
		}
		l := int(q[i])
		i++
		if l == 0 {
			break
		}
		if l&0xc0 != 0 || i+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i:i+l]))
		i += l
	}
	if i+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[i : i+2])
	question := q[12 : i+4]
	name := strings.ToLower(strings.Join(labels, ".") + ".")

	d.mu.Lock()
	d.queries++
	mode, failAAAA := d.mode, d.failAAAA
	var answers []netip.Addr
	for _, r := range d.records {
		if (qtype == dnsTypeA && r.Is4()) || (qtype == dnsTypeAAAA && r.Is6()) {
			answers = append(answers, r)
		}
	}
	d.mu.Unlock()

	if mode == dnsSilent {
		return nil
	}
	rcode := uint16(0)
	switch {
	case mode == dnsServFail || (failAAAA && qtype == dnsTypeAAAA):
		rcode, answers = 2, nil
	case mode == dnsNXDomain || name != d.name:
		rcode, answers = 3, nil
	}
	out := make([]byte, 12, 512)
	copy(out[0:2], q[0:2])
	// QR, opcode 0, AA, RD as asked, RA, rcode.
	flags := uint16(0x8000|0x0400|0x0080) | binary.BigEndian.Uint16(q[2:4])&0x0100 | rcode
	binary.BigEndian.PutUint16(out[2:4], flags)
	binary.BigEndian.PutUint16(out[4:6], 1)
	binary.BigEndian.PutUint16(out[6:8], uint16(len(answers)))
	out = append(out, question...)
	for _, a := range answers {
		out = append(out, 0xc0, 12) // pointer to the question's name
		out = binary.BigEndian.AppendUint16(out, qtype)
		out = binary.BigEndian.AppendUint16(out, 1) // IN
		out = binary.BigEndian.AppendUint32(out, 5) // TTL
		ip := a.AsSlice()
		out = binary.BigEndian.AppendUint16(out, uint16(len(ip)))
		out = append(out, ip...)
	}
	return out
}

const testDNSName = "kubo.fleet.kitsune.test."

func TestDNSResolve(t *testing.T) {
	srv := newTestDNS(t, testDNSName)
	src := DNSSource{Name: testDNSName + ":5001", Resolver: srv.resolver()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	srv.set(dnsAnswer, "10.0.1.43", "10.0.1.42", "fd00::7", "10.0.1.42")
	got, err := src.Resolve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"http://10.0.1.42:5001", "http://10.0.1.43:5001", "http://[fd00::7]:5001"}
	if !slices.Equal(got, want) {
		t.Errorf("Resolve = %q; want %q (sorted, deduplicated, IPv6 bracketed)", got, want)
	}
	for _, u := range got {
		if _, err := APIURL(u); err != nil {
			t.Errorf("Resolve gave %q, which the pool rejects: %v", u, err)
		}
	}

	// The scheme is configurable.
	https := src
	https.Scheme = "https"
	if got, err := https.Resolve(ctx); err != nil || len(got) != 3 || !strings.HasPrefix(got[0], "https://") {
		t.Errorf("Resolve with Scheme https = %q, %v", got, err)
	}

	// An IPv6-only answer.
	srv.set(dnsAnswer, "fd00::1", "fd00::2")
	if got, err := src.Resolve(ctx); err != nil || !slices.Equal(got, []string{"http://[fd00::1]:5001", "http://[fd00::2]:5001"}) {
		t.Errorf("IPv6-only: Resolve = %q, %v", got, err)
	}

	// NXDOMAIN: the fleet is empty, and that is not an error.
	srv.set(dnsNXDomain)
	if got, err := src.Resolve(ctx); err != nil || len(got) != 0 {
		t.Errorf("NXDOMAIN: Resolve = %q, %v; want no members and no error", got, err)
	}
	// A name that exists with no addresses (NOERROR, empty answer) too.
	srv.set(dnsAnswer)
	if got, err := src.Resolve(ctx); err != nil || len(got) != 0 {
		t.Errorf("empty answer: Resolve = %q, %v; want no members and no error", got, err)
	}

	// SERVFAIL is an error, not an empty fleet.
	srv.set(dnsServFail, "10.0.1.42")
	if got, err := src.Resolve(ctx); err == nil {
		t.Errorf("SERVFAIL: Resolve = %q; want an error", got)
	}
	// So is silence.
	srv.set(dnsSilent, "10.0.1.42")
	if got, err := src.Resolve(ctx); err == nil {
		t.Errorf("silent server: Resolve = %q; want an error", got)
	}

	// A bad name is refused before any lookup.
	if _, err := (DNSSource{Name: "no-port", Resolver: srv.resolver()}).Resolve(ctx); err == nil {
		t.Error("Resolve with a name without port: want an error")
	}
}

func newTestPool(t *testing.T, opts Options) *Pool {
	t.Helper()
	h, err := libp2p.New(libp2p.NoListenAddrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return New(h, zaptest.NewLogger(t), opts)
}

func poolURLs(p *Pool) []string {
	var out []string
	for _, s := range p.Nodes() {
		out = append(out, s.URL)
	}
	slices.Sort(out)
	return out
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testkit.Eventually(t, d, testkit.Say(what), cond)
}

// waitQueries waits until the server has seen n more queries, so a Watch
// loop is known to have looked again.
func waitQueries(t *testing.T, srv *testDNS, n int) {
	t.Helper()
	start := srv.queryCount()
	waitFor(t, 5*time.Second, "DNS queries", func() bool { return srv.queryCount() >= start+n })
}

func TestDNSWatch(t *testing.T) {
	srv := newTestDNS(t, testDNSName)
	srv.set(dnsAnswer, "10.0.1.42", "10.0.1.43")
	p := newTestPool(t, Options{})
	if err := p.SetMembers("flags", []string{"http://10.9.9.9:5001"}); err != nil {
		t.Fatal(err)
	}
	src := DNSSource{Name: testDNSName + ":5001", Interval: 30 * time.Millisecond, Resolver: srv.resolver()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Watch(ctx, p, zaptest.NewLogger(t))
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return after its context ended")
		}
	}()

	eq := func(want ...string) func() bool {
		slices.Sort(want)
		return func() bool { return slices.Equal(poolURLs(p), want) }
	}
	waitFor(t, 5*time.Second, "the first answer", eq("http://10.0.1.42:5001", "http://10.0.1.43:5001", "http://10.9.9.9:5001"))

	// A node added and one removed in the answer.
	srv.set(dnsAnswer, "10.0.1.43", "10.0.1.44", "fd00::5")
	waitFor(t, 5*time.Second, "the changed answer",
		eq("http://10.0.1.43:5001", "http://10.0.1.44:5001", "http://[fd00::5]:5001", "http://10.9.9.9:5001"))

	// SERVFAIL: the members stay as they were.
	srv.set(dnsServFail)
	waitQueries(t, srv, 6)
	if want := []string{"http://10.0.1.43:5001", "http://10.0.1.44:5001", "http://10.9.9.9:5001", "http://[fd00::5]:5001"}; !slices.Equal(poolURLs(p), want) {
		t.Fatalf("after SERVFAIL the pool is %q; want %q kept", poolURLs(p), want)
	}

	// Silence (timeouts): still kept.
	srv.set(dnsSilent)
	waitQueries(t, srv, 6)
	if want := []string{"http://10.0.1.43:5001", "http://10.0.1.44:5001", "http://10.9.9.9:5001", "http://[fd00::5]:5001"}; !slices.Equal(poolURLs(p), want) {
		t.Fatalf("while the server is silent the pool is %q; want %q kept", poolURLs(p), want)
	}

	// The server answers again, with news.
	srv.set(dnsAnswer, "10.0.1.45")
	waitFor(t, 5*time.Second, "the answer after the outage", eq("http://10.0.1.45:5001", "http://10.9.9.9:5001"))

	// NXDOMAIN is authoritative: the DNS source is empty, the other source
	// stays.
	srv.set(dnsNXDomain)
	waitFor(t, 5*time.Second, "the NXDOMAIN answer", eq("http://10.9.9.9:5001"))

	srv.set(dnsAnswer, "10.0.1.46")
	waitFor(t, 5*time.Second, "the name back", eq("http://10.0.1.46:5001", "http://10.9.9.9:5001"))
}

// TestDNSWatchServerGone stops the server altogether (queries are refused)
// after a first answer: the members stay.
func TestDNSWatchServerGone(t *testing.T) {
	srv := newTestDNS(t, testDNSName)
	srv.set(dnsAnswer, "10.0.1.42", "fd00::2")
	p := newTestPool(t, Options{})
	src := DNSSource{Name: testDNSName + ":5001", Interval: 20 * time.Millisecond, Resolver: srv.resolver()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Watch(ctx, p, zaptest.NewLogger(t))
	want := []string{"http://10.0.1.42:5001", "http://[fd00::2]:5001"}
	waitFor(t, 5*time.Second, "the first answer", func() bool { return slices.Equal(poolURLs(p), want) })
	srv.stop()
	time.Sleep(300 * time.Millisecond) // 15 intervals
	if got := poolURLs(p); !slices.Equal(got, want) {
		t.Fatalf("after the DNS server went away the pool is %q; want %q kept", got, want)
	}
}

// TestDNSWatchFirstLookupFails: a Watch that starts while DNS is failing
// sets nothing, then applies the first good answer.
func TestDNSWatchFirstLookupFails(t *testing.T) {
	srv := newTestDNS(t, testDNSName)
	srv.set(dnsServFail)
	p := newTestPool(t, Options{})
	src := DNSSource{Name: testDNSName + ":5001", Interval: 20 * time.Millisecond, Resolver: srv.resolver()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Watch(ctx, p, zaptest.NewLogger(t))
	waitQueries(t, srv, 4)
	if p.Len() != 0 {
		t.Fatalf("pool has %q before any good answer", poolURLs(p))
	}
	srv.set(dnsAnswer, "10.0.1.42")
	waitFor(t, 5*time.Second, "the first good answer", func() bool {
		return slices.Equal(poolURLs(p), []string{"http://10.0.1.42:5001"})
	})
}

// TestDNSWatchPartialFailure: the server answers A queries but fails AAAA
// ones for a while (one family's upstream is down). That is a failed
// lookup, not an answer without IPv6 nodes: the IPv6 members must stay.
func TestDNSWatchPartialFailure(t *testing.T) {
	srv := newTestDNS(t, testDNSName)
	srv.set(dnsAnswer, "10.0.1.42", "fd00::2")
	p := newTestPool(t, Options{})
	src := DNSSource{Name: testDNSName + ":5001", Interval: 20 * time.Millisecond, Resolver: srv.resolver()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go src.Watch(ctx, p, zaptest.NewLogger(t))
	want := []string{"http://10.0.1.42:5001", "http://[fd00::2]:5001"}
	waitFor(t, 5*time.Second, "the first answer", func() bool { return slices.Equal(poolURLs(p), want) })

	srv.setFailAAAA(true)
	waitQueries(t, srv, 8)
	if got := poolURLs(p); !slices.Equal(got, want) {
		t.Errorf("while AAAA queries fail (SERVFAIL) the pool is %q; want %q kept", got, want)
	}
	// Resolve itself reports the failure rather than half an answer.
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer rcancel()
	if got, err := src.Resolve(rctx); err == nil {
		t.Errorf("Resolve with AAAA failing = %q, nil; want an error", got)
	}
}
