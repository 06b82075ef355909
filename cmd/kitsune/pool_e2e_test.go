package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/miekg/dns"

	"github.com/kitsune-lb/kitsune/downstream"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// nodeStatus returns the pool's view of the node behind n.
func (k *kitsune) nodeStatus(t *testing.T, n *kubotest.Node) downstream.NodeStatus {
	t.Helper()
	for _, s := range k.pool.Nodes() {
		if s.ID == n.ID {
			return s
		}
	}
	t.Fatalf("node %s is not in the pool", n.ID)
	return downstream.NodeStatus{}
}

func startNodes(t *testing.T, n int) []*kubotest.Node {
	nodes := make([]*kubotest.Node, n)
	for i := range nodes {
		nodes[i] = kubotest.Start(t, kubotest.Options{})
	}
	return nodes
}

// addEverywhere adds the same bytes to every node (same CID everywhere).
func addEverywhere(t *testing.T, ctx context.Context, data []byte, nodes ...*kubotest.Node) cid.Cid {
	t.Helper()
	var c cid.Cid
	for _, n := range nodes {
		got, err := n.AddBytes(ctx, data)
		if err != nil {
			t.Fatal(err)
		}
		if c.Defined() && !c.Equals(got) {
			t.Fatalf("same bytes, different CIDs: %s and %s", c, got)
		}
		c = got
	}
	return c
}

// A node killed in the middle of a transfer: its wants move to the others
// at once and the client's fetch completes with identical bytes.
func TestKilledNodeMidTransfer(t *testing.T) {
	nodes := startNodes(t, 3)
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	file := randomBytes(t, 32<<20)
	c := addEverywhere(t, ctx, file, nodes...)

	k := startKitsune(t, nodes, func(r *runCmd) { r.HealthInterval = 300 * time.Millisecond })
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	victim := nodes[1]
	go func() {
		for k.relay.Counters().BlocksOut.Load() < 24 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		victim.Kill()
	}()
	got, err := client.Cat(ctx, c.String())
	if err != nil {
		t.Fatalf("fetch with a node killed mid-transfer: %v", err)
	}
	if !bytes.Equal(got, file) {
		t.Fatalf("got %d bytes, not the 32 MiB file", len(got))
	}
	// Over QUIC a dead peer is only noticed by its idle timeout; the
	// health checks take it out of rotation well before that.
	eventually(t, 5*time.Second, "the killed node to leave the rotation", func() bool {
		return k.nodeStatus(t, victim).State != downstream.StateHealthy
	})
	if k.nodeStatus(t, victim).Counters.WantsSent == 0 {
		t.Fatal("the killed node never received a want: the test proved nothing")
	}
	t.Logf("failovers: %d", k.relay.Counters().Failovers.Load())
	waitRelayEmpty(t, k)
}

// A node frozen with SIGSTOP mid-transfer: its wants time out and move, it
// is ejected within a bounded time, gets no traffic while ejected, and is
// re-admitted after SIGCONT.
func TestFrozenNodeEjectedAndReadmitted(t *testing.T) {
	nodes := startNodes(t, 3)
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	file := randomBytes(t, 16<<20)
	c := addEverywhere(t, ctx, file, nodes...)

	k := startKitsune(t, nodes, func(r *runCmd) {
		r.HealthInterval = 300 * time.Millisecond
		r.HealthTimeout = 300 * time.Millisecond
		r.EjectBase = 2 * time.Second
	})
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	frozen := nodes[2]
	var frozeAt time.Time
	var once sync.Once
	go func() {
		for k.relay.Counters().BlocksOut.Load() < 8 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		once.Do(func() { frozeAt = time.Now(); frozen.Pause() })
	}()
	got, err := client.Cat(ctx, c.String())
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("fetch with a frozen node: %v (%d bytes)", err, len(got))
	}
	once.Do(func() { t.Fatal("the fetch ended before the node could be frozen") })
	const ejectBound = 5 * time.Second
	eventually(t, ejectBound, "the frozen node to be ejected", func() bool {
		return k.nodeStatus(t, frozen).State == downstream.StateEjected
	})
	t.Logf("ejected %v after SIGSTOP (bound %v); %d wants moved on timeouts",
		time.Since(frozeAt).Round(time.Millisecond), ejectBound, k.relay.Counters().Timeouts.Load())

	// While it is ejected, traffic goes to the others.
	before := k.nodeStatus(t, frozen).Counters.WantsSent
	file2 := randomBytes(t, 4<<20)
	c2 := addEverywhere(t, ctx, file2, nodes[0], nodes[1])
	if got, err := client.Cat(ctx, c2.String()); err != nil || !bytes.Equal(got, file2) {
		t.Fatalf("fetch while a node is ejected: %v", err)
	}
	if after := k.nodeStatus(t, frozen).Counters.WantsSent; after != before {
		t.Fatalf("the ejected node got %d new wants", after-before)
	}

	frozen.Resume()
	eventually(t, 10*time.Second, "the node to be re-admitted after SIGCONT", func() bool {
		return k.nodeStatus(t, frozen).State == downstream.StateHealthy
	})
	// And it serves again: content only it holds comes through it.
	only := randomBytes(t, 1<<20)
	c3, err := frozen.AddBytes(ctx, only)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := client.Cat(ctx, c3.String()); err != nil || !bytes.Equal(got, only) {
		t.Fatalf("fetch from the re-admitted node: %v", err)
	}
	waitRelayEmpty(t, k)
}

// putBlocks stores the same raw blocks on every node.
func putBlocks(t *testing.T, ctx context.Context, blocks [][]byte, nodes ...*kubotest.Node) []cid.Cid {
	t.Helper()
	cids := make([]cid.Cid, len(blocks))
	for _, n := range nodes {
		for i, b := range blocks {
			st, err := n.API.Block().Put(ctx, bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			cids[i] = st.Path().RootCid()
		}
	}
	return cids
}

// fetchBlocks gets each block with its own request, a few at a time.
func fetchBlocks(t *testing.T, ctx context.Context, client *kubotest.Node, cids []cid.Cid) {
	t.Helper()
	work := make(chan cid.Cid)
	errs := make(chan error, len(cids))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				r, err := client.API.Block().Get(ctx, path.FromCid(c))
				if err == nil {
					_, err = io.Copy(io.Discard, r)
				}
				if err != nil {
					errs <- fmt.Errorf("block get %s: %w", c, err)
				}
			}
		}()
	}
	for _, c := range cids {
		work <- c
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func blocksPerNode(k *kitsune) map[peer.ID]uint64 {
	m := make(map[peer.ID]uint64)
	for _, s := range k.pool.Nodes() {
		m[s.ID] = s.Counters.Blocks
	}
	return m
}

func delta(after, before map[peer.ID]uint64) map[peer.ID]uint64 {
	d := make(map[peer.ID]uint64)
	for id, v := range after {
		d[id] = v - before[id]
	}
	return d
}

// Affinity: the same blocks fetched by two clients land on the same nodes
// both times; with one node removed, only the blocks that lived on it move.
func TestAffinityKeepsBlocksOnTheirNode(t *testing.T) {
	nodes := startNodes(t, 3)
	ctx := testCtx(t, 3*time.Minute)
	raw := make([][]byte, 200)
	for i := range raw {
		raw[i] = randomBytes(t, 2048)
	}
	cids := putBlocks(t, ctx, raw, nodes...)
	// Affinity is the default policy. A loose load bound keeps this test
	// about placement: the bound itself is tested in the downstream package.
	// No recent blocks: each run must ask the fleet for all 200 again.
	k := startKitsune(t, nodes, func(r *runCmd) { r.AffinityEpsilon = 10; r.RecentBlockBytes = 0 })

	run := func() map[peer.ID]uint64 {
		client := kubotest.Start(t, kubotest.Options{})
		if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
			t.Fatal(err)
		}
		before := blocksPerNode(k)
		fetchBlocks(t, ctx, client, cids)
		client.Stop()
		return delta(blocksPerNode(k), before)
	}
	first, second := run(), run()
	t.Logf("blocks per node: first %v second %v", first, second)
	if !maps.Equal(first, second) {
		t.Fatalf("the same blocks landed differently: %v then %v", first, second)
	}
	for _, n := range nodes {
		if first[n.ID] == 0 {
			t.Fatalf("node %s served none of 200 blocks: affinity does not spread", n.ID)
		}
	}

	// Remove nodes[2]: its blocks move, nobody else's do.
	var keep []string
	for _, n := range nodes[:2] {
		keep = append(keep, n.APIAddr.String())
	}
	if err := k.pool.SetMembers("flags", keep); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the removed node to leave", func() bool { return k.pool.Len() == 2 })
	third := run()
	t.Logf("after removing a node: %v", third)
	var total uint64
	for _, n := range nodes[:2] {
		if third[n.ID] < first[n.ID] {
			t.Fatalf("node %s lost blocks (%d -> %d) when another node left", n.ID, first[n.ID], third[n.ID])
		}
		total += third[n.ID]
	}
	if total != 200 {
		t.Fatalf("%d blocks served after the removal, want 200", total)
	}
}

// delayProxy forwards TCP to target, holding every chunk for d: a node
// behind it looks slow to Kitsune.
func delayProxy(t *testing.T, target string, d time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	pipe := func(dst, src net.Conn) {
		defer dst.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				time.Sleep(d)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return ln.Addr().String()
}

// startDelayedNode starts a Kubo node that announces only a delayProxy
// in front of its swarm port, holding each chunk for d: Kitsune, which
// dials the announced address, sees a slow node. It returns the proxy's
// port for requireDialsThrough.
func startDelayedNode(t *testing.T, d time.Duration) (*kubotest.Node, string) {
	t.Helper()
	port := freePort(t)
	_, proxyPort, _ := net.SplitHostPort(delayProxy(t, fmt.Sprintf("127.0.0.1:%d", port), d))
	n := kubotest.Start(t, kubotest.Options{Config: map[string]any{
		"Addresses.Swarm":    []string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)},
		"Addresses.Announce": []string{"/ip4/127.0.0.1/tcp/" + proxyPort},
	}})
	return n, proxyPort
}

// requireDialsThrough fails the test unless k reaches n through the
// delaying proxy on proxyPort alone.
func (k *kitsune) requireDialsThrough(t *testing.T, n *kubotest.Node, proxyPort string) {
	t.Helper()
	if got := k.nodeStatus(t, n).Addrs; len(got) != 1 || !strings.HasSuffix(got[0].String(), "/tcp/"+proxyPort) {
		t.Fatalf("kitsune reaches node %s through %v, not the delaying proxy", n.ID, got)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Least-loaded: a node that answers slowly gets measurably fewer wants.
func TestLeastLoadedAvoidsSlowNode(t *testing.T) {
	slow, proxyPort := startDelayedNode(t, 25*time.Millisecond)
	fast := startNodes(t, 2)
	nodes := append([]*kubotest.Node{slow}, fast...)
	ctx := testCtx(t, 3*time.Minute)
	tree := smallFiles(t, 300)
	var root cid.Cid
	for _, n := range nodes {
		c, err := n.AddDir(ctx, tree)
		if err != nil {
			t.Fatal(err)
		}
		root = c
	}
	k := startKitsune(t, nodes, func(r *runCmd) { r.Policy = "least-loaded" })
	k.requireDialsThrough(t, slow, proxyPort)
	client := kubotest.Start(t, kubotest.Options{})
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	got, err := client.ReadDir(ctx, root)
	if err != nil || !maps.EqualFunc(got, tree, bytes.Equal) {
		t.Fatalf("directory through kitsune: %v (%d files)", err, len(got))
	}
	slowWants := k.nodeStatus(t, slow).Counters.WantsSent
	var fastWants uint64
	for _, n := range fast {
		fastWants += k.nodeStatus(t, n).Counters.WantsSent
	}
	t.Logf("wants: slow node %d, two fast nodes %d", slowWants, fastWants)
	if mean := fastWants / 2; slowWants*2 > mean {
		t.Fatalf("the slow node got %d wants, not well under half the fast nodes' mean %d", slowWants, mean)
	}
}

// A node added to the --downstream-file (re-read on SIGHUP) or to the
// --downstream-dns answer starts receiving wants without a restart.
func TestMembershipFromFileAndDNS(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	t.Run("file", func(t *testing.T) {
		a, b := kubotest.Start(t, kubotest.Options{}), kubotest.Start(t, kubotest.Options{})
		data := randomBytes(t, 512<<10)
		c, err := b.AddBytes(ctx, data)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "fleet.txt")
		if err := os.WriteFile(file, []byte("# the fleet\n"+a.APIURL+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		k := startKitsune(t, nil, func(r *runCmd) {
			r.Downstream = nil
			r.DownstreamFile = file
			r.FetchMisses = false
		})
		eventually(t, 20*time.Second, "node a to join from the file", func() bool { return k.pool.ConnectedCount() == 1 })
		if err := os.WriteFile(file, []byte(a.APIURL+"\n"+b.APIAddr.String()+"  # added\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := k.reload(); err != nil {
			t.Fatal(err)
		}
		eventually(t, 20*time.Second, "node b to join after the reload", func() bool { return k.pool.ConnectedCount() == 2 })
		client := kubotest.Start(t, kubotest.Options{})
		if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
			t.Fatal(err)
		}
		if got, err := client.Cat(ctx, c.String()); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("fetch from the added node: %v", err)
		}
		if k.nodeStatus(t, b).Counters.Blocks == 0 {
			t.Fatal("the added node served nothing")
		}
		// A broken file changes nothing.
		if err := os.WriteFile(file, []byte("not an address\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := k.reload(); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Fatalf("reload of a bad file: %v", err)
		}
		if k.pool.Len() != 2 {
			t.Fatalf("a bad file changed the fleet to %d nodes", k.pool.Len())
		}
	})
	t.Run("dns", func(t *testing.T) {
		// Two nodes whose RPC APIs share a port on two loopback addresses,
		// as pods behind a headless Service do.
		port := freePort(t)
		api := func(ip string) kubotest.Options {
			return kubotest.Options{Config: map[string]any{"Addresses.API": fmt.Sprintf("/ip4/%s/tcp/%d", ip, port)}}
		}
		a, b := kubotest.Start(t, api("127.0.0.2")), kubotest.Start(t, api("127.0.0.3"))
		data := randomBytes(t, 512<<10)
		c, err := b.AddBytes(ctx, data)
		if err != nil {
			t.Fatal(err)
		}
		answer := []string{"127.0.0.2"}
		var mu sync.Mutex
		server := dnsServer(t, "fleet.kitsune.test.", func() []string {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(answer)
		})
		k := startKitsune(t, nil, func(r *runCmd) {
			r.Downstream = nil
			r.DownstreamDNS = fmt.Sprintf("fleet.kitsune.test:%d", port)
			r.DNSServer = server
			r.DNSInterval = 200 * time.Millisecond
			r.FetchMisses = false
		})
		eventually(t, 20*time.Second, "node a to join from DNS", func() bool { return k.pool.ConnectedCount() == 1 })
		if k.nodeStatus(t, a).URL != fmt.Sprintf("http://127.0.0.2:%d", port) {
			t.Fatalf("node a joined as %s", k.nodeStatus(t, a).URL)
		}
		mu.Lock()
		answer = append(answer, "127.0.0.3")
		mu.Unlock()
		eventually(t, 20*time.Second, "node b to join after the DNS answer changed", func() bool { return k.pool.ConnectedCount() == 2 })
		client := kubotest.Start(t, kubotest.Options{})
		if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
			t.Fatal(err)
		}
		if got, err := client.Cat(ctx, c.String()); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("fetch from the node DNS added: %v", err)
		}
	})
}

// dnsServer answers A queries for name with the addresses answer returns,
// on a UDP port of its own; it returns that port's address.
func dnsServer(t *testing.T, name string, answer func() []string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Authoritative = true
		if len(req.Question) == 1 && req.Question[0].Name == name {
			if req.Question[0].Qtype == dns.TypeA {
				for _, ip := range answer() {
					m.Answer = append(m.Answer, &dns.A{
						Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
						A:   net.ParseIP(ip),
					})
				}
			}
		} else {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: mux}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

// A block that no fleet node holds, but an origin node the fleet is
// connected to does: Kitsune has a fleet node fetch it, and the client gets
// the whole file.
func TestMissesFetchedFromTheNetwork(t *testing.T) {
	origin := kubotest.Start(t, kubotest.Options{})
	nodes := startNodes(t, 2)
	outsider := kubotest.Start(t, kubotest.Options{}) // measures the direct path
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	file := randomBytes(t, 16<<20)
	c, err := origin.AddBytes(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range append(slices.Clone(nodes), outsider) {
		if err := n.Connect(ctx, origin.AddrInfo()); err != nil {
			t.Fatal(err)
		}
	}
	k := startKitsune(t, nodes)
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	got, err := client.Cat(ctx, c.String())
	through := time.Since(began)
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("fetch of content only the origin holds: %v (%d bytes)", err, len(got))
	}
	began = time.Now()
	if got, err := outsider.Cat(ctx, c.String()); err != nil || !bytes.Equal(got, file) {
		t.Fatalf("direct fetch from the origin: %v", err)
	}
	direct := time.Since(began)
	cn := k.relay.Counters()
	t.Logf("16 MiB from an origin outside the fleet: through kitsune %v, one Kubo node from the origin %v (ratio %.1f); %d miss fetches, %d succeeded",
		through.Round(time.Millisecond), direct.Round(time.Millisecond), float64(through)/float64(direct), cn.MissFetches.Load(), cn.MissFetched.Load())
	if cn.MissFetched.Load() == 0 {
		t.Fatal("no miss was fetched, yet the fleet held nothing")
	}
	waitRelayEmpty(t, k)
}
