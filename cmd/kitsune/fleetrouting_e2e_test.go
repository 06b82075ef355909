package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/boxo/routing/http/client"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// dhtKubo starts a Kubo node in a loopback DHT: Routing.Type dht, the
// LAN DHT keeping loopback addresses (Kubo's dual DHT puts no loopback
// peer in either table otherwise), bootstrapping to boot. gateway, when
// non-zero, is the fixed port of its gateway (and so of its /routing/v1).
func dhtKubo(t *testing.T, gateway int, boot ...*kubotest.Node) *kubotest.Node {
	t.Helper()
	return dhtKuboWith(t, dhtOpts{gateway: gateway}, boot...)
}

// dhtOpts vary dhtKubo: bin is the Kubo binary ("" for the default); wan
// makes the node a DHT server with Kubo's TEST_DHT_STUB on, which lets
// loopback peers into the WAN DHT too (Kubo's own test harness does the
// same), for what Kubo answers from the WAN DHT only.
type dhtOpts struct {
	bin     string
	gateway int
	wan     bool
}

func dhtKuboWith(t *testing.T, o dhtOpts, boot ...*kubotest.Node) *kubotest.Node {
	t.Helper()
	gateway := o.gateway
	var bs []string
	for _, b := range boot {
		for _, a := range b.AddrInfoFor("tcp").Addrs {
			bs = append(bs, fmt.Sprintf("%s/p2p/%s", a, b.ID))
		}
	}
	cfg := map[string]any{
		"Routing.Type":                      "dht",
		"Routing.LoopbackAddressesOnLanDHT": true,
		"Bootstrap":                         bs,
	}
	if gateway != 0 {
		cfg["Addresses.Gateway"] = fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", gateway)
		cfg["Gateway.ExposeRoutingAPI"] = true
	}
	var env []string
	if o.wan {
		cfg["Routing.Type"] = "dhtserver"
		env = append(env, "TEST_DHT_STUB=1")
	}
	return kubotest.Start(t, kubotest.Options{Config: cfg, Binary: o.bin, Env: env})
}

// The routing queries Kitsune cannot answer itself go to the fleet's own
// /routing/v1 (Kubo's gateway port): boxo's client, talking only to
// Kitsune, reads an IPNS record a fleet node published, publishes one of
// its own that the fleet then serves, finds a peer outside the fleet and
// the peers closest to a key; a bad record gets 400; when the node the
// policy picks dies, the other answers.
func TestFleetRoutingE2E(t *testing.T) {
	portA, portB := freePort(t), freePort(t)
	a := dhtKuboWith(t, dhtOpts{gateway: portA, wan: true})
	b := dhtKuboWith(t, dhtOpts{gateway: portB, wan: true}, a)
	outsider := dhtKuboWith(t, dhtOpts{wan: true}, a) // in the DHT, not in the fleet
	ctx := testCtx(t, 4*time.Minute)
	k := startKitsune(t, []*kubotest.Node{a, b}, func(c *runCmd) { c.HTTP = "127.0.0.1:0" })
	eventually(t, 30*time.Second, "both nodes healthy", func() bool { return k.pool.HealthyCount() == 2 })
	c, err := client.New(k.http.URL())
	if err != nil {
		t.Fatal(err)
	}

	// A publishes its name; the DHT needs B in A's table first.
	content, err := a.AddBytes(ctx, randomBytes(t, 1000))
	if err != nil {
		t.Fatal(err)
	}
	target, err := path.NewPath("/ipfs/" + content.String())
	if err != nil {
		t.Fatal(err)
	}
	var lastErr error
	testkit.Eventually(t, time.Minute, func() string { return fmt.Sprintf("%s (last error: %v)", "node A publishes its IPNS name", lastErr) }, func() bool {
		pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, lastErr = a.API.Name().Publish(pctx, target)
		return lastErr == nil
	})
	nameA := ipns.NameFromPeer(a.ID)
	var rec *ipns.Record
	testkit.Eventually(t, time.Minute, func() string { return fmt.Sprintf("%s (last error: %v)", "A's record through Kitsune", lastErr) }, func() bool {
		rec, lastErr = c.GetIPNS(ctx, nameA)
		return lastErr == nil
	})
	if v, err := rec.Value(); err != nil || v.String() != target.String() {
		t.Fatalf("A's record through Kitsune points at %v (%v), want %s", v, err, target)
	}

	// A record the client made, put through Kitsune, is then served by the
	// fleet nodes themselves.
	sk, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := peer.IDFromPrivateKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := ipns.NewRecord(sk, target, 1, time.Now().Add(time.Hour), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	nameMine := ipns.NameFromPeer(pid)
	if err := c.PutIPNS(ctx, nameMine, mine); err != nil {
		t.Fatalf("PUT through Kitsune: %v", err)
	}
	for i, n := range []*kubotest.Node{a, b} {
		direct, err := client.New(fmt.Sprintf("http://127.0.0.1:%d", []int{portA, portB}[i]))
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "the put record at node "+n.ID.String(), func() bool {
			got, err := direct.GetIPNS(ctx, nameMine)
			lastErr = err
			return err == nil && got != nil
		})
	}

	// A peer outside the fleet is found through it.
	testkit.Eventually(t, time.Minute, func() string {
		return fmt.Sprintf("%s (last error: %v)", "the outsider's record through Kitsune", lastErr)
	}, func() bool {
		it, err := c.FindPeers(ctx, outsider.ID)
		if err != nil {
			lastErr = err
			return false
		}
		for _, r := range readIter(t, it) {
			if r.ID != nil && *r.ID == outsider.ID && len(r.Addrs) > 0 {
				return true
			}
		}
		return false
	})

	// The fleet's own nodes and Kitsune's back host are never looked up:
	// their addresses are internal.
	for _, id := range []peer.ID{a.ID, b.ID, k.back.ID()} {
		it, err := c.FindPeers(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got := readIter(t, it); len(got) != 0 {
			t.Fatalf("peers/%s through Kitsune: %v, want nothing", id, got)
		}
	}

	// Closest peers (IPIP-476) come from a fleet node's WAN DHT (Kubo
	// exposes only that one on a public API).
	var closest []peer.ID
	testkit.Eventually(t, time.Minute, func() string {
		return fmt.Sprintf("closest peers through Kitsune (got %v, last error %v)", closest, lastErr)
	}, func() bool {
		it, err := c.GetClosestPeers(ctx, content)
		if lastErr = err; err != nil {
			return false
		}
		closest = closest[:0]
		for _, r := range readIter(t, it) {
			closest = append(closest, *r.ID)
		}
		if slices.Contains(closest, a.ID) || slices.Contains(closest, b.ID) {
			t.Fatalf("closest peers through Kitsune name a fleet node: %v", closest)
		}
		return slices.Contains(closest, outsider.ID)
	})

	// A bad record: 400, and an unpublished name is not found.
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, k.http.URL()+"/routing/v1/ipns/"+nameMine.String(), bytes.NewReader([]byte("not a record")))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/vnd.ipfs.ipns-record")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad record: %d %q, want 400", resp.StatusCode, body)
	}
	_, sk2, _ := crypto.GenerateEd25519Key(nil)
	nobody, _ := peer.IDFromPublicKey(sk2)
	if _, err := c.GetIPNS(ctx, ipns.NameFromPeer(nobody)); !errors.Is(err, routing.ErrNotFound) {
		t.Fatalf("GET of a name nobody published: %v, want not found", err)
	}

	// What the detour through Kitsune costs: the same IPNS GET through
	// Kitsune and straight at a fleet node's /routing/v1, interleaved.
	directA, err := client.New(fmt.Sprintf("http://127.0.0.1:%d", portA))
	if err != nil {
		t.Fatal(err)
	}
	var via, direct []time.Duration
	for range 50 {
		for _, m := range []struct {
			c *client.Client
			d *[]time.Duration
		}{{c, &via}, {directA, &direct}} {
			start := time.Now()
			if _, err := m.c.GetIPNS(ctx, nameMine); err != nil {
				t.Fatal(err)
			}
			*m.d = append(*m.d, time.Since(start))
		}
	}
	slices.Sort(via)
	slices.Sort(direct)
	t.Logf("IPNS GET, 50 each: through Kitsune p50 %v p99 %v; straight at a node p50 %v p99 %v",
		via[25], via[49], direct[25], direct[49])

	// The node the policy picks for the name dies: the other answers.
	first, ok := k.pool.ChooseAPI(nameMine.Cid())
	if !ok {
		t.Fatal("no node chosen")
	}
	survivor := b
	if first == b.APIURL {
		b.Kill()
		survivor = a
	} else {
		a.Kill()
	}
	got, err := c.GetIPNS(ctx, nameMine)
	if err != nil || mustRecordValue(t, got) != target.String() {
		t.Fatalf("GET after the chosen node died: %v", err)
	}
	t.Logf("the put record read through Kitsune from %s after %s died", survivor.ID, first)
}

func mustRecordValue(t *testing.T, r *ipns.Record) string {
	t.Helper()
	v, err := r.Value()
	if err != nil {
		t.Fatal(err)
	}
	return v.String()
}
