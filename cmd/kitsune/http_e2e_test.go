package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/boxo/routing/http/client"
	"github.com/ipfs/boxo/routing/http/types"
	"github.com/ipfs/boxo/routing/http/types/iter"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/core/coreiface/options"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"

	"github.com/kitsune-lb/kitsune/httpfront"
	"github.com/kitsune-lb/kitsune/internal/heliatest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

func rawBlockCID(t *testing.T, data []byte) cid.Cid {
	t.Helper()
	h, err := mh.Sum(data, mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.Raw, h)
}

func putBlock(t *testing.T, ctx context.Context, n *kubotest.Node, data []byte) cid.Cid {
	t.Helper()
	st, err := n.API.Block().Put(ctx, bytes.NewReader(data), options.Block.Format("raw"))
	if err != nil {
		t.Fatal(err)
	}
	return st.Path().RootCid()
}

func readIter[T any](t *testing.T, it iter.ResultIter[T]) []T {
	t.Helper()
	defer it.Close()
	var out []T
	for it.Next() {
		if r := it.Val(); r.Err != nil {
			t.Fatal(r.Err)
		} else {
			out = append(out, r.Val)
		}
	}
	return out
}

// KuboChecker against a real Kubo 0.41: block/stat --offline says yes for
// a block the node holds, no for one it lacks, and does not go looking
// for it.
func TestKuboCheckerE2E(t *testing.T) {
	node := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, time.Minute)
	held := putBlock(t, ctx, node, randomBytes(t, 1000))
	missing := rawBlockCID(t, randomBytes(t, 1000))
	var k httpfront.KuboChecker
	if has, err := k.Has(ctx, node.APIURL, held); err != nil || !has {
		t.Fatalf("held block: (%v, %v), want yes", has, err)
	}
	if has, err := k.Has(ctx, node.APIURL, missing); err != nil || has {
		t.Fatalf("missing block: (%v, %v), want a plain no", has, err)
	}
	if wl, err := node.OwnWantlist(ctx); err != nil || len(wl) != 0 {
		t.Fatalf("the check made the node want %v (%v)", wl, err)
	}
	if _, err := k.Has(ctx, "http://127.0.0.1:1", held); err == nil {
		t.Fatal("an unreachable node gave no error")
	}
}

// The delegated routing front of a running Kitsune, read by boxo's
// routing/http/client: the fleet's content is provided by Kitsune.
func TestHTTPRoutingE2E(t *testing.T) {
	a := kubotest.Start(t, kubotest.Options{})
	b := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	onA := putBlock(t, ctx, a, randomBytes(t, 2000))
	onB := putBlock(t, ctx, b, randomBytes(t, 2000))
	missing := rawBlockCID(t, randomBytes(t, 2000))
	k := startKitsune(t, []*kubotest.Node{a, b}, func(c *runCmd) { c.HTTP = "127.0.0.1:0" })
	base := k.http.URL()
	if base == "" {
		t.Fatal("--http did not start the HTTP front")
	}
	eventually(t, 30*time.Second, "both nodes healthy", func() bool { return k.pool.HealthyCount() == 2 })

	for _, streaming := range []bool{false, true} {
		var opts []client.Option
		if streaming {
			opts = append(opts, client.WithStreamResultsRequired())
		}
		c, err := client.New(base, opts...)
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name string
			c    cid.Cid
			want bool
		}{{"held by A", onA, true}, {"held by B", onB, true}, {"held by nobody", missing, false}} {
			it, err := c.FindProviders(ctx, tc.c)
			if err != nil {
				t.Fatal(err)
			}
			provs := readIter(t, it)
			if !tc.want {
				if len(provs) != 0 {
					t.Fatalf("%s (streaming %v): providers %v", tc.name, streaming, provs)
				}
				continue
			}
			if len(provs) != 1 {
				t.Fatalf("%s (streaming %v): %d providers, want Kitsune alone", tc.name, streaming, len(provs))
			}
			checkKitsuneRecord(t, k, provs[0])
		}
		it, err := c.FindPeers(ctx, k.front.ID())
		if err != nil {
			t.Fatal(err)
		}
		peers := readIter(t, it)
		if len(peers) != 1 {
			t.Fatalf("peers/%s: %d records, want 1", k.front.ID(), len(peers))
		}
		checkKitsuneRecord(t, k, peers[0])
	}
	// Asking never made a node fetch anything.
	for _, n := range []*kubotest.Node{a, b} {
		if has, err := n.HasBlock(ctx, missing); err != nil || has {
			t.Fatalf("node %s fetched the missing block (%v, %v)", n.ID, has, err)
		}
		if wl, err := n.OwnWantlist(ctx); err != nil || len(wl) != 0 {
			t.Fatalf("node %s wants %v after routing queries (%v)", n.ID, wl, err)
		}
	}
}

func checkKitsuneRecord(t *testing.T, k *kitsune, r types.Record) {
	t.Helper()
	rec, ok := r.(*types.PeerRecord)
	if !ok {
		t.Fatalf("record is %T, want a peer record", r)
	}
	if rec.ID == nil || *rec.ID != k.front.ID() {
		t.Fatalf("record names %v, want Kitsune %s", rec.ID, k.front.ID())
	}
	if !slices.Equal(rec.Protocols, []string{httpfront.TransportBitswap}) {
		t.Fatalf("protocols %v", rec.Protocols)
	}
	var got []ma.Multiaddr
	for _, a := range rec.Addrs {
		got = append(got, a.Multiaddr)
	}
	want := k.front.Addrs()
	if len(got) != len(want) || len(want) == 0 {
		t.Fatalf("addrs %v, want the front's %v", got, want)
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Fatalf("addr %d %s, want %s", i, got[i], want[i])
		}
	}
}

// TestHTTPRoutingLatency measures providers answers against one real Kubo
// node: cold (every CID asked for the first time, so the node is asked)
// and warm (the same CIDs again, from the cache). It logs p50/p99 and
// fails only on answers far outside Helia's 30s.
func TestHTTPRoutingLatency(t *testing.T) {
	node := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	const n = 200
	var cids []cid.Cid
	for i := range n {
		cids = append(cids, putBlock(t, ctx, node, []byte(fmt.Sprintf("latency block %d %x", i, randomBytes(t, 16)))))
	}
	k := startKitsune(t, []*kubotest.Node{node}, func(c *runCmd) { c.HTTP = "127.0.0.1:0" })
	eventually(t, 30*time.Second, "the node healthy", func() bool { return k.pool.HealthyCount() == 1 })
	hc := &http.Client{}
	measure := func(name string) {
		var d []time.Duration
		for _, c := range cids {
			start := time.Now()
			resp, err := hc.Get(k.http.URL() + "/routing/v1/providers/" + c.String())
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			d = append(d, time.Since(start))
			if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(k.front.ID().String())) {
				t.Fatalf("%s: %s answered %d %q, want Kitsune's record", name, c, resp.StatusCode, body)
			}
		}
		slices.Sort(d)
		p50, p99 := d[len(d)/2], d[len(d)*99/100]
		t.Logf("providers answer, %s cache, %d queries: p50 %v p99 %v max %v", name, len(d), p50, p99, d[len(d)-1])
		if p99 > 10*time.Second {
			t.Fatalf("%s p99 %v: far outside what Helia waits", name, p99)
		}
	}
	measure("cold")
	measure("warm")
}

// Helia in Node, with Kitsune's /routing/v1 as its only router, no
// bootstrap peers and no address to dial, finds Kitsune as the provider of
// a multi-MiB file that lives on one fleet node and fetches it through it.
func TestHeliaFindsKitsuneByDelegatedRouting(t *testing.T) {
	a := kubotest.Start(t, kubotest.Options{})
	b := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	file := randomBytes(t, 5<<20)
	fileCID, err := b.AddBytes(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	k := startKitsune(t, []*kubotest.Node{a, b}, func(c *runCmd) { c.HTTP = "127.0.0.1:0" })
	eventually(t, 30*time.Second, "both nodes healthy", func() bool { return k.pool.HealthyCount() == 2 })

	res, err := heliatest.Fetch(ctx, t, "", fileCID.String(), heliatest.WithRouter(k.http.URL()), heliatest.WithTimeout(90*time.Second))
	if err != nil {
		t.Fatalf("helia fetch through delegated routing: %v", err)
	}
	sum := sha256.Sum256(file)
	if res.Bytes != int64(len(file)) || res.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("helia got %d bytes sha256 %s, want %d bytes %x", res.Bytes, res.SHA256, len(file), sum)
	}
	if !slices.Equal(res.Peers, []string{k.front.ID().String()}) {
		t.Fatalf("helia ended connected to %v, want Kitsune %s alone", res.Peers, k.front.ID())
	}
	t.Logf("helia found Kitsune by /routing/v1 and fetched %d bytes in %d ms", res.Bytes, res.MS)
	waitRelayEmpty(t, k)
}

// A Kubo client whose only router is Kitsune's /routing/v1
// (Routing.Type=delegated), with no bootstrap peers and no swarm connect,
// finds Kitsune as the provider of a file one fleet node holds and fetches
// it through it.
func TestKuboFindsKitsuneByDelegatedRouting(t *testing.T) {
	a := kubotest.Start(t, kubotest.Options{})
	b := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	file := randomBytes(t, 3<<20)
	fileCID, err := b.AddBytes(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	k := startKitsune(t, []*kubotest.Node{a, b}, func(c *runCmd) { c.HTTP = "127.0.0.1:0" })
	eventually(t, 30*time.Second, "both nodes healthy", func() bool { return k.pool.HealthyCount() == 2 })
	client := kubotest.Start(t, kubotest.Options{Config: map[string]any{
		"Routing.Type":             "delegated",
		"Routing.DelegatedRouters": []string{k.http.URL()},
		"Ipns.DelegatedPublishers": []string{},
		"Provide.Enabled":          false, // delegated routing cannot provide
	}})
	got, err := client.Cat(ctx, "/ipfs/"+fileCID.String())
	if err != nil {
		t.Fatalf("kubo client cat through delegated routing: %v", err)
	}
	if !bytes.Equal(got, file) {
		t.Fatalf("kubo client got %d bytes, not the file", len(got))
	}
	peers, err := client.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(peers, []peer.ID{k.front.ID()}) {
		t.Fatalf("kubo client connected to %v, want Kitsune %s alone", peers, k.front.ID())
	}
}
