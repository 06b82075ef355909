package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/kitsune-lb/kitsune/internal/heliatest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/internal/netns"
	"github.com/kitsune-lb/kitsune/proxy"
)

// replicaWorld is the deployment of docs/deploy.md, "Replicas behind
// HAProxy", in network namespaces: clients (198.51.100.2 and up) reach
// HAProxy at 198.51.100.1, which balances in TCP mode over two Kitsune
// replicas sharing one key at 203.0.113.2 (one namespace, distinct ports),
// in front of two Kubo nodes on that namespace's loopback. HAProxy's
// configuration is deploy/haproxy/haproxy.cfg with the addresses replaced,
// so the test runs the health check and stickiness the operator gets.
type replicaWorld struct {
	bin          string
	lb, srv, cli *netns.NS
	fleet        []*kubotest.Node
	key          string
	backKeys     [2]string // one per replica: the fleet must tell them apart
	id           peer.ID
	replicas     [2]*nsKitsune
	extra        []string // more replica flags
	haproxy      *haproxyProc
}

const (
	lbClientSide  = "198.51.100.1" // the balancer's address clients dial
	lbReplicaSide = "203.0.113.1"  // where the balancer's connections to replicas come from
	replicaHost   = "203.0.113.2"
	lbTCPPort     = 4001
	lbWSPort      = 4002
	lbPreloadPort = 5001
)

// The listen ports of replica i: libp2p TCP, WebSocket, admin, preload.
func replicaPorts(i int) (tcp, ws, admin, preload int) { return 4011 + i, 4021 + i, 5081 + i, 5011 + i }

// replicaOpts adjust a replicaWorld.
type replicaOpts struct {
	// Extra flags for both replicas.
	Extra []string
	// SendProxy makes HAProxy send a PROXY protocol v2 header to the
	// replicas' TCP and WebSocket listeners.
	SendProxy bool
	// Clients is how many client addresses the client namespace has
	// (198.51.100.2, .3, …); at least one.
	Clients int
}

func newReplicaWorld(t *testing.T, bin string, o replicaOpts) *replicaWorld {
	t.Helper()
	w := netns.New(t)
	rw := &replicaWorld{bin: bin, lb: w.Namespace("lb"), srv: w.Namespace("replicas"), cli: w.Namespace("client"), extra: o.Extra}
	cl := w.Link(rw.lb, lbClientSide+"/24", rw.cli, "198.51.100.2/24")
	for i := 1; i < o.Clients; i++ {
		rw.cli.Exec("ip", "addr", "add", fmt.Sprintf("198.51.100.%d/24", 2+i), "dev", cl.B.Dev)
	}
	w.Link(rw.lb, lbReplicaSide+"/24", rw.srv, replicaHost+"/24")
	// Clients can reach the replicas only through the balancer's
	// address, but a route lets a test dial a replica directly, as an
	// attacker on the path could.
	rw.lb.Forward()
	rw.cli.Route("203.0.113.0/24", lbClientSide)
	rw.srv.Route("198.51.100.0/24", lbReplicaSide)

	for range 2 {
		rw.fleet = append(rw.fleet, kubotest.Start(t, kubotest.Options{In: rw.srv}))
	}
	rw.key = filepath.Join(t.TempDir(), "kitsune.key")
	priv, _, err := proxy.LoadOrCreateKey(rw.key)
	if err != nil {
		t.Fatal(err)
	}
	if rw.id, err = peer.IDFromPrivateKey(priv); err != nil {
		t.Fatal(err)
	}
	for i := range rw.replicas {
		rw.backKeys[i] = filepath.Join(filepath.Dir(rw.key), fmt.Sprintf("back-%d.key", i+1))
		rw.start(t, i)
	}
	rw.haproxy = startHAProxy(t, rw.lb, o.SendProxy)
	rw.waitBalancer(t, 0, true)
	rw.waitBalancer(t, 1, true)
	return rw
}

// start runs replica i (again, after a kill or a drain) with the shared key.
func (rw *replicaWorld) start(t *testing.T, i int) {
	t.Helper()
	tcp, ws, admin, preload := replicaPorts(i)
	args := []string{
		"-w", fmt.Sprintf("/ip4/%s/tcp/%d", replicaHost, ws),
		"-p", fmt.Sprintf("%s:%d", replicaHost, preload), "--preload-trusted-proxies", lbReplicaSide,
		// Replicas announce the balancer's addresses, not their own:
		// clients keep the newest signed peer record, so every replica
		// must announce the same ones.
		"--announce", fmt.Sprintf("/ip4/%s/tcp/%d,/ip4/%s/tcp/%d/ws", lbClientSide, lbTCPPort, lbClientSide, lbWSPort),
		"--drain-timeout", "60s",
		"--back-key", rw.backKeys[i],
	}
	args = append(args, rw.extra...)
	rw.replicas[i] = startKitsuneInWith(t, rw.bin, rw.srv, rw.fleet,
		nsKitsuneOpts{Key: rw.key, Admin: fmt.Sprintf("%s:%d", replicaHost, admin)},
		[]string{fmt.Sprintf("/ip4/%s/tcp/%d", replicaHost, tcp)}, args...)
}

// status is the part of a replica's /api/status the tests read.
type replicaStatus struct {
	Upstream struct {
		Peers int `json:"peers"`
	} `json:"upstream"`
	Relay struct {
		Wants     int    `json:"wants"`
		BlocksOut uint64 `json:"blocks_out"`
	} `json:"relay"`
	Preload struct {
		Recent []struct {
			Root    string `json:"root"`
			Client  string `json:"client"`
			Outcome string `json:"outcome"`
		} `json:"recent"`
	} `json:"preload"`
}

func (rw *replicaWorld) status(ctx context.Context, i int) (replicaStatus, error) {
	var st replicaStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rw.replicas[i].Admin+"/api/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := rw.srv.HTTPClient().Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// carrier waits until exactly one running replica has an upstream peer
// (the one client) and returns it.
func (rw *replicaWorld) carrier(t *testing.T, ctx context.Context) int {
	t.Helper()
	found := -1
	eventually(t, 30*time.Second, "one replica carrying the client", func() bool {
		found = -1
		for i := range rw.replicas {
			select {
			case <-rw.replicas[i].Proc.Done():
				continue
			default:
			}
			st, err := rw.status(ctx, i)
			if err != nil {
				continue
			}
			if st.Upstream.Peers > 0 {
				if found >= 0 {
					return false
				}
				found = i
			}
		}
		return found >= 0
	})
	return found
}

// waitBalancer waits until HAProxy sees replica i up (or down) in both
// backends.
func (rw *replicaWorld) waitBalancer(t *testing.T, i int, up bool) {
	t.Helper()
	want := "DOWN"
	if up {
		want = "UP"
	}
	name := fmt.Sprintf("kitsune%d", i+1)
	eventually(t, 30*time.Second, fmt.Sprintf("HAProxy reporting %s %s", name, want), func() bool {
		st := rw.haproxy.serverStatus(t)
		return strings.HasPrefix(st["kitsune_tcp/"+name], want) && strings.HasPrefix(st["kitsune_ws/"+name], want)
	})
}

// peeredClient starts a Kubo client at the first client address with the
// balancer's address in Peering.Peers, and waits until it is connected.
func (rw *replicaWorld) peeredClient(t *testing.T) *kubotest.Node {
	t.Helper()
	c := kubotest.Start(t, kubotest.Options{In: rw.cli, Config: map[string]any{
		"Peering.Peers": []map[string]any{{"ID": rw.id.String(), "Addrs": []string{fmt.Sprintf("/ip4/%s/tcp/%d", lbClientSide, lbTCPPort)}}},
	}})
	rw.waitConnected(t, c)
	return c
}

func (rw *replicaWorld) waitConnected(t *testing.T, c *kubotest.Node) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	eventually(t, 45*time.Second, "the client peered with Kitsune through the balancer", func() bool {
		peers, err := c.Peers(ctx)
		if err != nil {
			return false
		}
		for _, p := range peers {
			if p == rw.id {
				return true
			}
		}
		return false
	})
}

// add puts data on every fleet node.
func (rw *replicaWorld) add(t *testing.T, data []byte) cid.Cid {
	t.Helper()
	var root cid.Cid
	for _, n := range rw.fleet {
		c, err := n.AddBytes(testCtx(t, 2*time.Minute), data)
		if err != nil {
			t.Fatal(err)
		}
		root = c
	}
	return root
}

// catProgress is one `ipfs cat` read as it streams.
type catProgress struct {
	Data []byte
	// MaxGap is the longest time between two reads of the stream after
	// the first byte: what the application saw as a stall.
	MaxGap time.Duration
	// GapAt is how many bytes had arrived when MaxGap began.
	GapAt int
	Took  time.Duration
}

// catStream cats c on the client over its RPC API, timing every read of
// the streamed body; at is called once, from the reading goroutine, when
// atBytes have arrived.
func catStream(ctx context.Context, c *kubotest.Node, root cid.Cid, atBytes int, at func()) (catProgress, error) {
	var p catProgress
	start := time.Now()
	resp, err := c.API.Request("cat", root.String()).Send(ctx)
	if err != nil {
		return p, err
	}
	if resp.Error != nil {
		return p, resp.Error
	}
	defer resp.Close()
	buf := make([]byte, 64<<10)
	var last time.Time
	fired := false
	for {
		n, err := resp.Output.Read(buf)
		if n > 0 {
			now := time.Now()
			if !last.IsZero() && now.Sub(last) > p.MaxGap {
				p.MaxGap, p.GapAt = now.Sub(last), len(p.Data)
			}
			last = now
			p.Data = append(p.Data, buf[:n]...)
			if !fired && len(p.Data) >= atBytes && at != nil {
				fired = true
				at()
			}
		}
		if err == io.EOF {
			p.Took = time.Since(start)
			return p, nil
		}
		if err != nil {
			return p, fmt.Errorf("cat after %d bytes: %w", len(p.Data), err)
		}
	}
}

// haproxyProc is HAProxy running in the balancer's namespace.
type haproxyProc struct {
	proc *netns.Proc
	sock string // the admin socket (a Unix socket: reachable from any namespace)
	log  string
}

// haproxyConfig rewrites deploy/haproxy/haproxy.cfg for the test world:
// frontends bind the balancer's client-side address, servers point at the
// replicas' ports with each replica's admin port for the health check,
// an admin socket is added and maxconn lowered. Everything else (balance, stickiness,
// health check, timeouts) is the deployed file's. It fails if the file no
// longer has the shape this relies on.
func haproxyConfig(t *testing.T, deployed, sock string, sendProxy bool) string {
	t.Helper()
	var out []string
	section := ""
	servers := map[string]int{}
	binds := 0
	for _, line := range strings.Split(deployed, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			out = append(out, line)
			continue
		}
		if !strings.HasPrefix(line, " ") && !strings.HasPrefix(line, "\t") {
			section = strings.Join(f, " ")
			out = append(out, line)
			if section == "global" {
				out = append(out, fmt.Sprintf("    stats socket %s mode 600 level admin", sock))
			}
			continue
		}
		switch f[0] {
		case "maxconn":
			// The deployed figure needs twice as many open files as a
			// test process may have here (HAProxy raises its own limit,
			// up to the hard one).
			out = append(out, "    maxconn 4096")
		case "bind":
			_, port, err := net.SplitHostPort(f[1])
			if err != nil {
				t.Fatalf("deploy/haproxy/haproxy.cfg: %q: %v", line, err)
			}
			out = append(out, fmt.Sprintf("    bind %s:%s", lbClientSide, port))
			binds++
		case "server":
			_, port, err := net.SplitHostPort(f[2])
			if err != nil {
				t.Fatalf("deploy/haproxy/haproxy.cfg: %q: %v", line, err)
			}
			i := servers[section]
			servers[section]++
			tcp, ws, admin, preload := replicaPorts(i)
			target := tcp
			switch port {
			case fmt.Sprint(lbWSPort):
				target = ws
			case fmt.Sprint(lbPreloadPort):
				target = preload
			}
			s := fmt.Sprintf("    server %s %s:%d port %d", f[1], replicaHost, target, admin)
			if sendProxy && section != "backend kitsune_preload" {
				s += " send-proxy-v2"
			}
			out = append(out, s)
		default:
			out = append(out, line)
		}
	}
	if binds != 3 || servers["backend kitsune_tcp"] != 2 || servers["backend kitsune_ws"] != 2 || servers["backend kitsune_preload"] != 2 {
		t.Fatalf("deploy/haproxy/haproxy.cfg changed shape: %d binds, servers %v; update haproxyConfig", binds, servers)
	}
	return strings.Join(out, "\n")
}

func startHAProxy(t *testing.T, ns *netns.NS, sendProxy bool) *haproxyProc {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Fatalf("haproxy is not installed (apt-get install haproxy; .ci/run installs it): %v", err)
	}
	deployed, err := os.ReadFile(filepath.Join("..", "..", "deploy", "haproxy", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h := &haproxyProc{sock: filepath.Join(dir, "admin.sock"), log: filepath.Join(dir, "haproxy.log")}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(haproxyConfig(t, string(deployed), h.sock, sendProxy)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	logf, err := os.Create(h.log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	cmd := exec.Command(bin, "-db", "-f", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	h.proc = ns.Start(t, cmd)
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(h.log)
			if len(b) > 8<<10 {
				b = b[len(b)-8<<10:]
			}
			t.Logf("haproxy log (tail):\n%s", b)
		}
	})
	eventually(t, 20*time.Second, "HAProxy's admin socket", func() bool {
		select {
		case <-h.proc.Done():
			b, _ := os.ReadFile(h.log)
			t.Fatalf("haproxy exited: %v\n%s", h.proc.Err(), b)
		default:
		}
		_, err := os.Stat(h.sock)
		return err == nil
	})
	return h
}

// command runs one admin socket command and returns its answer.
func (h *haproxyProc) command(t *testing.T, cmd string) string {
	t.Helper()
	c, err := net.DialTimeout("unix", h.sock, 5*time.Second)
	if err != nil {
		t.Fatalf("haproxy admin socket: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		t.Fatalf("haproxy admin socket: %v", err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("haproxy admin socket: %v", err)
	}
	return string(b)
}

// serverStatus maps "backend/server" to HAProxy's status (UP, DOWN, …).
func (h *haproxyProc) serverStatus(t *testing.T) map[string]string {
	t.Helper()
	raw := strings.TrimPrefix(h.command(t, "show stat"), "# ")
	r := csv.NewReader(strings.NewReader(raw))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil || len(recs) == 0 {
		t.Fatalf("haproxy show stat: %v\n%s", err, raw)
	}
	col := map[string]int{}
	for i, name := range recs[0] {
		col[name] = i
	}
	out := map[string]string{}
	for _, rec := range recs[1:] {
		if len(rec) > col["status"] {
			out[rec[col["pxname"]]+"/"+rec[col["svname"]]] = rec[col["status"]]
		}
	}
	return out
}

// stop sends SIGTERM to replica i and waits for it to exit 0 (it drains
// first).
func (rw *replicaWorld) stop(t *testing.T, i int, within time.Duration) {
	t.Helper()
	p := rw.replicas[i].Proc
	p.Signal(syscall.SIGTERM)
	select {
	case <-p.Done():
	case <-time.After(within):
		t.Fatalf("replica %d still running %v after SIGTERM", i+1, within)
	}
	if err := p.Err(); err != nil {
		t.Fatalf("replica %d exited with %v after SIGTERM", i+1, err)
	}
}

// waitReconnected waits until replica j reports the client among its
// upstream peers, and returns how long after since that was seen. It asks
// the replica rather than the client: both replicas have one peer ID, so
// the client's own peer list cannot tell the stopped replica's (possibly
// dead, still listed) connection from the new one, and when the fetch
// outlived the other replica's drain the client was back before the test
// looked.
func (rw *replicaWorld) waitReconnected(t *testing.T, ctx context.Context, j int, since time.Time) time.Duration {
	t.Helper()
	eventually(t, 45*time.Second, fmt.Sprintf("the client connected through the balancer to replica %d", j+1), func() bool {
		st, err := rw.status(ctx, j)
		return err == nil && st.Upstream.Peers > 0
	})
	return time.Since(since)
}

// Two replicas sharing one key behind HAProxy (the deployed config), two
// Kubo nodes, a Kubo client peered with the balancer's address fetching
// 64 MiB. First the replica carrying the transfer is killed (SIGKILL) mid-
// transfer: the client reconnects through the balancer to the other and
// finishes with identical bytes. Then a rolling restart: each replica in
// turn gets SIGTERM while it carries a fetch, drains it (the balancer's
// /readyz check takes it out of rotation meanwhile), exits 0, and is
// started again; nothing is lost. The client's stall (the longest pause in
// the streamed bytes) is logged for each case: docs/deploy.md quotes it.
func TestReplicasBehindHAProxy(t *testing.T) {
	bin := buildBinary(t)
	rw := newReplicaWorld(t, bin, replicaOpts{Clients: 1})
	const size = 64 << 20
	var files [3][]byte
	var roots [3]cid.Cid
	for i := range files {
		files[i] = randomBytes(t, size)
		roots[i] = rw.add(t, files[i])
	}
	client := rw.peeredClient(t)
	ctx := testCtx(t, 8*time.Minute)

	check := func(what string, p catProgress, err error, want []byte) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !bytes.Equal(p.Data, want) {
			t.Fatalf("%s: got %d bytes, not the %d added", what, len(p.Data), len(want))
		}
	}

	// No subtests: a replica started again inside one would be stopped by
	// its cleanup when it ends.
	{ // kill -9 of the replica carrying the transfer
		i := rw.carrier(t, ctx)
		var killedAt time.Time
		p, err := catStream(ctx, client, roots[0], 8<<20, func() {
			killedAt = time.Now()
			rw.replicas[i].Proc.Kill()
		})
		check("cat across the kill", p, err, files[0])
		if killedAt.IsZero() {
			t.Fatal("the replica was never killed")
		}
		if j := rw.carrier(t, ctx); j == i {
			t.Fatalf("replica %d carries the client after it was killed", j+1)
		}
		t.Logf("kill -9 of replica %d after 8 MiB: %d MiB in %v, client stall %v (at %d MiB)",
			i+1, size>>20, p.Took.Round(time.Millisecond), p.MaxGap.Round(time.Millisecond), p.GapAt>>20)
		rw.start(t, i)
		rw.waitBalancer(t, i, true)
	}

	{ // rolling restart with drain
		var restarted []int
		for step := range 2 {
			i := rw.carrier(t, ctx)
			var signalled time.Time
			// The drain closes once nothing has been in flight for a
			// second, which can come while the client's cat still
			// streams (its reader behind the blocks it has): the replica
			// may exit before the fetch ends, so its exit is timed here.
			exitedAt := make(chan time.Time, 1)
			p, err := catStream(ctx, client, roots[1+step], 8<<20, func() {
				signalled = time.Now()
				proc := rw.replicas[i].Proc
				proc.Signal(syscall.SIGTERM)
				go func() { <-proc.Done(); exitedAt <- time.Now() }()
			})
			ended := time.Now()
			check(fmt.Sprintf("cat during the drain of replica %d", i+1), p, err, files[1+step])
			if signalled.IsZero() {
				t.Fatal("the replica was never signalled")
			}
			rw.stop(t, i, 90*time.Second)
			exited := <-exitedAt
			back := rw.waitReconnected(t, ctx, 1-i, exited)
			how := "ended through it"
			if exited.Before(ended) {
				how = fmt.Sprintf("outlived it by %v", ended.Sub(exited).Round(time.Millisecond))
			}
			t.Logf("SIGTERM to replica %d after 8 MiB: %d MiB in %v, client stall %v (at %d MiB); replica exited %v after the signal, the fetch %s; client seen back through the balancer %v after the exit",
				i+1, size>>20, p.Took.Round(time.Millisecond), p.MaxGap.Round(time.Millisecond), p.GapAt>>20, exited.Sub(signalled).Round(time.Millisecond), how, back.Round(time.Millisecond))
			restarted = append(restarted, i)
			rw.start(t, i)
			rw.waitBalancer(t, i, true)
		}
		if restarted[0] == restarted[1] {
			t.Fatalf("replica %d restarted twice, the other never", restarted[0]+1)
		}
	}
}

// nsDialer dials from one address of a namespace, optionally writing a
// PROXY protocol v2 header naming claim first (as only a balancer may).
type nsDialer struct {
	ns    *netns.NS
	src   netip.Addr
	claim string
}

func (d nsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.ns.DialFrom(ctx, d.src, network, addr)
	if err != nil || d.claim == "" {
		return c, err
	}
	h := &proxyproto.Header{
		Version: 2, Command: proxyproto.PROXY, TransportProtocol: proxyproto.TCPv4,
		SourceAddr:      net.TCPAddrFromAddrPort(netip.MustParseAddrPort(d.claim)),
		DestinationAddr: c.RemoteAddr(),
	}
	if _, err := h.WriteTo(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// libp2pClient is a bare libp2p TCP host in the test process whose
// connections leave from src in the client namespace.
func (rw *replicaWorld) libp2pClient(t *testing.T, src, claim string) host.Host {
	t.Helper()
	d := nsDialer{ns: rw.cli, src: netip.MustParseAddr(src), claim: claim}
	h, err := libp2p.New(libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport, tcp.WithDialerForAddr(func(ma.Multiaddr) (tcp.ContextDialer, error) { return d, nil })),
		libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// connectObserved connects h to Kitsune at addr and returns the address
// Kitsune sees h at (identify's observed address), or the dial's error.
func (rw *replicaWorld) connectObserved(t *testing.T, h host.Host, addr string) (netip.Addr, error) {
	t.Helper()
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := h.Connect(ctx, peer.AddrInfo{ID: rw.id, Addrs: []ma.Multiaddr{ma.StringCast(addr)}}); err != nil {
		return netip.Addr{}, err
	}
	for {
		select {
		case e := <-sub.Out():
			ev := e.(event.EvtPeerIdentificationCompleted)
			if ev.Peer != rw.id {
				continue
			}
			ip, err := manet.ToIP(ev.ObservedAddr)
			if err != nil {
				t.Fatalf("observed address %v: %v", ev.ObservedAddr, err)
			}
			a, _ := netip.AddrFromSlice(ip)
			return a.Unmap(), nil
		case <-ctx.Done():
			t.Fatal("no identify from Kitsune within 20s")
		}
	}
}

// HAProxy sends PROXY protocol v2 (send-proxy-v2) to replicas started with
// --proxy-protocol-from <the balancer>: each replica sees the clients'
// own addresses, so --max-conns-per-ip 2 admits two connections from each
// of three client addresses (six in all through the balancer's one
// address) and refuses a third from one of them. A client that reaches a
// replica directly is served under its own address, and refused when it
// sends a PROXY header to claim another.
func TestReplicasProxyProtocol(t *testing.T) {
	bin := buildBinary(t)
	rw := newReplicaWorld(t, bin, replicaOpts{SendProxy: true, Clients: 4,
		Extra: []string{"--proxy-protocol-from", lbReplicaSide, "--max-conns-per-ip", "2"}})
	balancer := fmt.Sprintf("/ip4/%s/tcp/%d", lbClientSide, lbTCPPort)
	for _, src := range []string{"198.51.100.2", "198.51.100.3", "198.51.100.4"} {
		for n := range 2 {
			seen, err := rw.connectObserved(t, rw.libp2pClient(t, src, ""), balancer)
			if err != nil {
				t.Fatalf("connection %d from %s through the balancer: %v", n+1, src, err)
			}
			if seen.String() != src {
				t.Fatalf("connection %d from %s: Kitsune sees it at %s", n+1, src, seen)
			}
		}
	}
	t.Log("six connections through the balancer, two from each of three addresses, each seen at its own address")
	if _, err := rw.connectObserved(t, rw.libp2pClient(t, "198.51.100.2", ""), balancer); err == nil {
		t.Fatal("a third connection from 198.51.100.2 was admitted with --max-conns-per-ip 2")
	}

	tcp0, _, _, _ := replicaPorts(0)
	direct := fmt.Sprintf("/ip4/%s/tcp/%d", replicaHost, tcp0)
	seen, err := rw.connectObserved(t, rw.libp2pClient(t, "198.51.100.5", ""), direct)
	if err != nil {
		t.Fatalf("direct connection without a header: %v", err)
	}
	if seen.String() != "198.51.100.5" {
		t.Fatalf("direct connection from 198.51.100.5 seen at %s", seen)
	}
	if seen, err := rw.connectObserved(t, rw.libp2pClient(t, "198.51.100.5", "192.0.2.99:4444"), direct); err == nil {
		t.Fatalf("a PROXY header from 198.51.100.5, not a listed balancer, was accepted (seen at %s)", seen)
	}
}

// killCarrierAfter kills (SIGKILL) whichever replica has served at least
// blocks blocks since the call, polling every 50 ms, and reports which
// one and when on the returned channel (closed without a value if ctx
// ends first).
func (rw *replicaWorld) killCarrierAfter(ctx context.Context, blocks uint64) <-chan int {
	base := make([]uint64, len(rw.replicas))
	for i := range rw.replicas {
		if st, err := rw.status(ctx, i); err == nil {
			base[i] = st.Relay.BlocksOut
		}
	}
	out := make(chan int, 1)
	go func() {
		defer close(out)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for i := range rw.replicas {
				st, err := rw.status(ctx, i)
				if err == nil && st.Relay.BlocksOut >= base[i]+blocks {
					rw.replicas[i].Proc.Kill()
					out <- i
					return
				}
			}
		}
	}()
	return out
}

// A Helia client (Node, js-libp2p) fetching over WebSocket through the
// balancer; the replica carrying it is killed mid-transfer. Helia does not
// redial by itself, so the application retries once, with a new node,
// through the same balancer address: it lands on the other replica and
// gets every byte.
func TestReplicasHeliaRetry(t *testing.T) {
	bin := buildBinary(t)
	rw := newReplicaWorld(t, bin, replicaOpts{Clients: 1})
	const size = 64 << 20
	data := randomBytes(t, size)
	root := rw.add(t, data)
	sum := sha256.Sum256(data)
	addr := fmt.Sprintf("/ip4/%s/tcp/%d/ws/p2p/%s", lbClientSide, lbWSPort, rw.id)
	ctx := testCtx(t, 4*time.Minute)

	killCtx, stopKiller := context.WithCancel(ctx)
	killed := rw.killCarrierAfter(killCtx, 32)
	// The application's own bound on one attempt: Helia waits for a
	// provider that will not come back.
	first, err := heliatest.Fetch(ctx, t, addr, root.String(), heliatest.WithWrap(rw.cli.Wrap), heliatest.WithTimeout(30*time.Second))
	stopKiller()
	victim, ok := <-killed
	if !ok {
		t.Fatalf("no replica was killed during the first attempt (it ended with %v after %v)", err, first.Wall)
	}
	if err == nil {
		// Helia finished on its own: fine, if every byte is right.
		if first.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("the first attempt finished across the kill with sha256 %s, want %x", first.SHA256, sum)
		}
		t.Logf("replica %d killed mid-transfer; Helia finished without a retry in %v", victim+1, first.Wall)
		return
	}
	t.Logf("replica %d killed mid-transfer; first attempt failed after %v: %s", victim+1, first.Wall.Round(time.Millisecond), firstLine(first.Error))
	rw.waitBalancer(t, victim, false)
	before, err := rw.status(ctx, 1-victim)
	if err != nil {
		t.Fatal(err)
	}
	second, err := heliatest.Fetch(ctx, t, addr, root.String(), heliatest.WithWrap(rw.cli.Wrap), heliatest.WithTimeout(60*time.Second))
	if err != nil {
		t.Fatalf("the retry through the balancer: %v", err)
	}
	if second.Bytes != size || second.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("the retry got %d bytes (sha256 %s), want %d (%x)", second.Bytes, second.SHA256, size, sum)
	}
	after, err := rw.status(ctx, 1-victim)
	if err != nil {
		t.Fatal(err)
	}
	if served := after.Relay.BlocksOut - before.Relay.BlocksOut; served < size/(256<<10) {
		t.Fatalf("the other replica served %d blocks during the retry, fewer than the file's", served)
	}
	t.Logf("the retry got %d MiB through the other replica in %v (Helia's own time %v ms)", size>>20, second.Wall.Round(time.Millisecond), second.MS)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// The js-ipfs preload flow across replicas: a Kubo client holding a new
// DAG is connected through the balancer to one replica, and its refs call
// goes through the balancer's HTTP preload port. The deployed config
// sends both to one replica (source-IP stickiness, one stick table for
// every backend); with PROXY protocol on the libp2p side and
// X-Forwarded-For on the preload side that replica sees one client
// address for both, its reverse session finds the caller, and the fleet
// ends up holding the whole DAG.
func TestReplicasPreloadSticky(t *testing.T) {
	bin := buildBinary(t)
	rw := newReplicaWorld(t, bin, replicaOpts{SendProxy: true, Clients: 1,
		Extra: []string{"--proxy-protocol-from", lbReplicaSide, "--preload-grace", "500ms"}})
	origin := rw.peeredClient(t)
	ctx := testCtx(t, 3*time.Minute)
	carrier := rw.carrier(t, ctx)
	tree := smallFiles(t, 20)
	tree["big.bin"] = randomBytes(t, 2<<20)
	root, err := origin.AddDir(ctx, tree)
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:%d/api/v0/refs?r=true&arg=%s", lbClientSide, lbPreloadPort, root)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rw.cli.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("preload refs through the balancer: %d %s", resp.StatusCode, body)
	}
	refs := preloadRefs(t, resp)
	resp.Body.Close()
	if len(refs) < len(tree) {
		t.Fatalf("preload listed %d refs for %d files", len(refs), len(tree))
	}
	var holder *kubotest.Node
	for _, n := range rw.fleet {
		if ok, err := n.HasBlock(ctx, root); err == nil && ok {
			holder = n
		}
	}
	if holder == nil {
		t.Fatal("no fleet node holds the preloaded root: the reverse session did not find the caller")
	}
	holdsAll(t, holder, refs)
	st, err := rw.status(ctx, carrier)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range st.Preload.Recent {
		if c.Root == root.String() {
			found = true
			if c.Client != "198.51.100.2" {
				t.Errorf("replica %d saw the preload caller at %q, want 198.51.100.2 (X-Forwarded-For)", carrier+1, c.Client)
			}
		}
	}
	if !found {
		t.Fatalf("the preload call did not reach replica %d, which holds the caller's connection", carrier+1)
	}
	t.Logf("preload through the balancer: replica %d took the call and pulled %d refs from the caller's connection", carrier+1, len(refs))
}
