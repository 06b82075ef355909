package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/kitsune-lb/kitsune/internal/heliatest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/internal/netns"
)

// wan is a world where clients sit across the internet from Kitsune: the
// client namespace (198.51.100.2) reaches Kitsune (198.51.100.1) over a
// link shaped to a rate by tbf, through delay proxies (toxiproxy) that add
// the round-trip time, on TCP and on WebSocket. The fleet runs next to
// Kitsune, on its namespace's loopback: a LAN leg with no added delay
// (toxiproxy's delay is whole milliseconds, and Kitsune dials the addresses
// nodes announce, so a proxy cannot sit on that leg).
type wan struct {
	srv, cli *netns.NS
	link     netns.Link
	fleet    []*kubotest.Node
	k        *nsKitsune
	tcp, ws  string // Kitsune's front addresses through the delay, with /p2p/
	tcpAddr  string // tcp without /p2p/
	preload  string // the preload API through the delay
}

const (
	wanTCP     = "198.51.100.1:4001"
	wanWS      = "198.51.100.1:4002"
	wanPreload = "198.51.100.1:5001"
)

func newWAN(t *testing.T, bin string, nodes int, rate int64, rtt time.Duration) *wan {
	t.Helper()
	w := netns.New(t)
	o := &wan{srv: w.Namespace("kitsune"), cli: w.Namespace("client")}
	o.link = w.Link(o.srv, "198.51.100.1/24", o.cli, "198.51.100.2/24")
	o.link.Shape(t, netns.Shape{Rate: rate})
	for range nodes {
		o.fleet = append(o.fleet, kubotest.Start(t, kubotest.Options{In: o.srv}))
	}
	o.k = startKitsuneIn(t, bin, o.srv, o.fleet,
		[]string{"/ip4/198.51.100.1/tcp/4001"}, "-w", "/ip4/198.51.100.1/tcp/4002",
		"-p", wanPreload, "--preload-grace", "500ms", "--preload-timeout", "2m")
	d := netns.Delay{OneWay: rtt / 2, Jitter: rtt / 20}
	tp := netns.NewProxy(t, o.srv, "198.51.100.1:4101", o.srv, wanTCP, d)
	wp := netns.NewProxy(t, o.srv, "198.51.100.1:4102", o.srv, wanWS, d)
	o.tcpAddr = fmt.Sprintf("/ip4/198.51.100.1/tcp/%d", tp.Addr().Port)
	o.tcp = o.tcpAddr + "/p2p/" + o.k.ID.String()
	o.ws = fmt.Sprintf("/ip4/198.51.100.1/tcp/%d/ws/p2p/%s", wp.Addr().Port, o.k.ID)
	// The preload call goes through a delay proxy too: Kitsune asks only
	// upstream peers connected from the caller's address for the DAG, and
	// the proxies are where both connections come from, as behind a NAT.
	pp := netns.NewProxy(t, o.srv, "198.51.100.1:4103", o.srv, wanPreload, d)
	o.preload = fmt.Sprintf("http://198.51.100.1:%d", pp.Addr().Port)
	t.Logf("WAN: %d Mbit/s, RTT %v (±%v per direction) between client and Kitsune; fleet of %d (%s) on Kitsune's loopback",
		rate/1_000_000, rtt, d.Jitter, nodes, o.fleet[0].AgentVersion)
	return o
}

// add puts data on the given fleet nodes (same bytes, same CID).
func (o *wan) add(t *testing.T, data []byte, on ...*kubotest.Node) cid.Cid {
	t.Helper()
	var root cid.Cid
	for _, n := range on {
		c, err := n.AddBytes(testCtx(t, time.Minute), data)
		if err != nil {
			t.Fatal(err)
		}
		root = c
	}
	return root
}

// kuboClient starts a Kubo client across the WAN, connected to Kitsune
// and greeted: Kitsune is off the client's LAN, so the client's first
// broadcast reaches Kitsune only once it has handled Kitsune's greeting
// (see waitGreeted; a `cat` sent at once lost that race in CI and hung).
func (o *wan) kuboClient(t *testing.T) *kubotest.Node {
	t.Helper()
	c := kubotest.Start(t, kubotest.Options{In: o.cli})
	ctx := testCtx(t, time.Minute)
	if err := c.Connect(ctx, o.k.info(t, o.tcpAddr)); err != nil {
		t.Fatal(err)
	}
	waitGreeted(t, ctx, c)
	return c
}

func mbits(n int, d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e6 }

// The core cases across a 40 ms RTT, 50 Mbit/s link: a Kubo client and a
// Helia client fetching through Kitsune, a preload call whose reverse
// session pulls a DAG from the client, and a fleet node killed while a
// transfer runs.
func TestWANThroughKitsune(t *testing.T) {
	bin := buildBinary(t)
	o := newWAN(t, bin, 2, 50_000_000, 40*time.Millisecond)
	const size = 8 << 20

	t.Run("kubo client", func(t *testing.T) {
		data := randomBytes(t, size)
		root := o.add(t, data, o.fleet...)
		c := o.kuboClient(t)
		ctx, cancel := context.WithTimeout(testCtx(t, 3*time.Minute), 2*time.Minute)
		defer cancel()
		start := time.Now()
		got, err := c.Cat(ctx, root.String())
		el := time.Since(start)
		if err != nil {
			// Whether any want reached Kitsune tells a client that never
			// asked from a relay that did not answer.
			t.Fatalf("cat after %v: %v\n%s", el, err, grepLines(o.k.metrics(t), "kitsune_relay_wants"))
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("got %d bytes, not the %d added", len(got), len(data))
		}
		t.Logf("Kubo client (%s): %d MiB in %v (%.1f Mbit/s)", c.AgentVersion, size>>20, el.Round(time.Millisecond), mbits(size, el))
	})

	t.Run("helia client", func(t *testing.T) {
		data := randomBytes(t, size)
		root := o.add(t, data, o.fleet...)
		ctx := testCtx(t, 3*time.Minute)
		res, err := heliatest.Fetch(ctx, t, o.ws, root.String(), heliatest.WithWrap(o.cli.Wrap), heliatest.WithTimeout(2*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if res.Bytes != size || res.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("Helia got %d bytes (sha256 %s), want %d", res.Bytes, res.SHA256, size)
		}
		el := time.Duration(res.MS) * time.Millisecond
		t.Logf("Helia client: %d MiB in %v (%.1f Mbit/s)", size>>20, el, mbits(size, el))
	})

	t.Run("preload with its reverse session", func(t *testing.T) {
		origin := o.kuboClient(t)
		ctx := testCtx(t, 3*time.Minute)
		tree := smallFiles(t, 20)
		tree["big.bin"] = randomBytes(t, 2<<20)
		root, err := origin.AddDir(ctx, tree)
		if err != nil {
			t.Fatal(err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.preload+"/api/v0/refs?r=true&arg="+root.String(), nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		resp, err := o.cli.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Fatalf("preload refs: %d %s", resp.StatusCode, body)
		}
		refs := preloadRefs(t, resp)
		resp.Body.Close()
		el := time.Since(start)
		if len(refs) < len(tree) {
			t.Fatalf("preload listed %d refs for %d files", len(refs), len(tree))
		}
		// The whole DAG is now on a fleet node: it came from the client,
		// through Kitsune, over the slow link.
		var holder *kubotest.Node
		for _, n := range o.fleet {
			if ok, err := n.HasBlock(ctx, root); err == nil && ok {
				holder = n
			}
		}
		if holder == nil {
			t.Fatal("no fleet node holds the preloaded root")
		}
		holdsAll(t, holder, refs)
		t.Logf("preload of %d refs (2 MiB + %d small files) pulled from the client in %v", len(refs), len(tree)-1, el.Round(time.Millisecond))
	})

	// Last: it leaves the fleet one node short.
	t.Run("a node killed mid-transfer", func(t *testing.T) {
		const big = 32 << 20
		data := randomBytes(t, big)
		root := o.add(t, data, o.fleet...)
		c := o.kuboClient(t)
		ctx, cancel := context.WithTimeout(testCtx(t, 4*time.Minute), 3*time.Minute)
		defer cancel()
		type result struct {
			data []byte
			err  error
		}
		done := make(chan result, 1)
		start := time.Now()
		go func() {
			got, err := c.Cat(ctx, root.String())
			done <- result{got, err}
		}()
		// Kill once the transfer is well under way: the client has blocks.
		var received int
		eventually(t, 2*time.Minute, "the client receiving its first blocks", func() bool {
			var st struct{ BlocksReceived int }
			if err := c.API.Request("bitswap/stat").Exec(ctx, &st); err != nil {
				return false
			}
			received = st.BlocksReceived
			return received >= 16
		})
		o.fleet[0].Kill()
		t.Logf("killed node %s after the client had %d blocks", o.fleet[0].ID, received)
		r := <-done
		el := time.Since(start)
		if r.err != nil {
			t.Fatalf("cat after the kill: %v (after %v)", r.err, el)
		}
		if !bytes.Equal(r.data, data) {
			t.Fatalf("got %d bytes, not the %d added", len(r.data), len(data))
		}
		t.Logf("%d MiB despite a node killed mid-transfer, in %v", big>>20, el.Round(time.Millisecond))
	})
}

// A browser on a slow link (1 Mbit/s, 40 ms RTT) fetching through Kitsune:
// the fleet delivers far faster than the client reads, so Kitsune holds
// blocks back for it; the fetch must finish with every byte.
func TestWANSlowBrowserLink(t *testing.T) {
	bin := buildBinary(t)
	o := newWAN(t, bin, 1, 1_000_000, 40*time.Millisecond)
	const size = 1 << 20
	data := randomBytes(t, size)
	root := o.add(t, data, o.fleet...)
	ctx := testCtx(t, 4*time.Minute)
	res, err := heliatest.Fetch(ctx, t, o.ws, root.String(), heliatest.WithWrap(o.cli.Wrap), heliatest.WithTimeout(3*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if res.Bytes != size || res.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("Helia got %d bytes (sha256 %s), want %d", res.Bytes, res.SHA256, size)
	}
	el := time.Duration(res.MS) * time.Millisecond
	t.Logf("Helia over 1 Mbit/s: %d KiB in %v (%.2f Mbit/s)", size>>10, el, mbits(size, el))
}
