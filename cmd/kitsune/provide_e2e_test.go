package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/core/coreiface/options"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/internal/testkit"
	"github.com/kitsune-lb/kitsune/provide"
)

// findsProvider asks client's DHT once for c's providers and reports
// whether want is among them.
func findsProvider(t *testing.T, ctx context.Context, client *kubotest.Node, c cid.Cid, want peer.ID) (bool, []peer.ID) {
	t.Helper()
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ch, err := client.API.Routing().FindProviders(fctx, path.FromCid(c), options.Routing.NumProviders(5))
	if err != nil {
		return false, nil
	}
	var seen []peer.ID
	for ai := range ch {
		seen = append(seen, ai.ID)
	}
	return slices.Contains(seen, want), seen
}

// waitProvider waits until client's DHT names want as a provider of c,
// and checks it never names notWanted.
func waitProvider(t *testing.T, ctx context.Context, client *kubotest.Node, c cid.Cid, want, notWanted peer.ID) {
	t.Helper()
	var seen []peer.ID
	testkit.EventuallyEvery(t, 3*time.Minute, time.Second,
		func() string {
			return fmt.Sprintf("client %s finds %s as provider of %s (saw %v)", client.AgentVersion, want, c, seen)
		},
		func() bool {
			var ok bool
			ok, seen = findsProvider(t, ctx, client, c, want)
			return ok
		})
	if slices.Contains(seen, notWanted) {
		t.Fatalf("%s was announced as a provider of %s: %v", notWanted, c, seen)
	}
}

// --provide: a DHT of two Kubo nodes on loopback; a fleet node outside it
// (Routing none: it announces nothing) holds a pinned file; Kitsune
// announces the fleet's pins, and a root a preload call pulled into the
// fleet, on that DHT. A fresh Kubo client whose only bootstrap peer is a
// DHT node, with neither Kitsune nor the fleet in its config and no
// swarm connect, finds Kitsune as the provider of both and fetches them
// through it; so does a client on the compatibility Kubo.
func TestProvideFleetContentOnDHT(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	d1 := dhtKubo(t, 0)
	dhtKubo(t, 0, d1) // a second DHT server, so records go somewhere but d1
	// The fleet node has Routing.Type none (kubotest's default): it
	// announces nothing itself.
	fleet := kubotest.Start(t, kubotest.Options{})
	pinned := randomBytes(t, 1<<20)
	pinnedCID, err := fleet.AddBytes(ctx, pinned)
	if err != nil {
		t.Fatal(err)
	}
	// The preloaded root lives on a node the fleet node is connected to
	// but that is in no DHT: only the preload call brings it into the
	// fleet, and only Kitsune can announce it.
	origin := kubotest.Start(t, kubotest.Options{})
	preloaded := randomBytes(t, 300<<10)
	preloadedCID, err := origin.AddBytes(ctx, preloaded)
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.Connect(ctx, origin.AddrInfo()); err != nil {
		t.Fatal(err)
	}

	var boot []string
	for _, a := range d1.AddrInfoFor("tcp").Addrs {
		boot = append(boot, fmt.Sprintf("%s/p2p/%s", a, d1.ID))
	}
	began := time.Now()
	k := startKitsune(t, []*kubotest.Node{fleet}, func(c *runCmd) {
		c.Provide = true
		c.Bootstrap = boot
		c.ProvideLANLoopback = true
		c.Preload = "127.0.0.1:0"
	})
	first := dhtKubo(t, 0, d1)
	waitProvider(t, ctx, first, pinnedCID, k.front.ID(), fleet.ID)
	t.Logf("pinned root findable %v after Kitsune started", time.Since(began).Round(time.Millisecond))

	// The preload call pulls the root into the fleet; Kitsune announces it.
	resp, err := http.Post(k.preload.URL()+"/api/v0/refs?r=true&arg="+preloadedCID.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Trailer.Get("X-Stream-Error") != "" || len(body) == 0 {
		t.Fatalf("preload call: %d %s (trailer %v)", resp.StatusCode, body, resp.Trailer)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(body)), "\n") {
		var r struct{ Ref, Err string }
		if err := json.Unmarshal([]byte(line), &r); err != nil || r.Err != "" {
			t.Fatalf("preload call answered %q (%v)", line, err)
		}
	}
	preloadedAt := time.Now()
	waitProvider(t, ctx, first, preloadedCID, k.front.ID(), origin.ID)
	t.Logf("preloaded root findable %v after the preload call", time.Since(preloadedAt).Round(time.Millisecond))

	// The client the tests run and one on the compatibility Kubo each find
	// both and fetch them through Kitsune alone: never connected to the
	// fleet node or the origin.
	for _, client := range []*kubotest.Node{first, dhtKuboWith(t, dhtOpts{bin: kubotest.CompatBinary(t)}, d1)} {
		for _, f := range []struct {
			c    cid.Cid
			data []byte
		}{{pinnedCID, pinned}, {preloadedCID, preloaded}} {
			waitProvider(t, ctx, client, f.c, k.front.ID(), fleet.ID)
			got, err := client.Cat(ctx, "/ipfs/"+f.c.String())
			if err != nil {
				t.Fatalf("client %s (%s): cat %s: %v", client.ID, client.AgentVersion, f.c, err)
			}
			if !bytes.Equal(got, f.data) {
				t.Fatalf("client %s got %d bytes, not the file %s", client.ID, len(got), f.c)
			}
		}
		peers, err := client.Peers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(peers, k.front.ID()) || slices.Contains(peers, fleet.ID) || slices.Contains(peers, origin.ID) {
			t.Fatalf("client %s (%s) peers %v: want Kitsune %s, not the fleet %s or the origin %s",
				client.ID, client.AgentVersion, peers, k.front.ID(), fleet.ID, origin.ID)
		}
		// A Kubo client provides what it fetched: left running, it would
		// serve the next client instead of Kitsune (seen in CI, where the
		// compatibility client never connected to Kitsune at all).
		client.Stop()
	}

	// Announced: the node's pins (Kubo pins the empty directory too) and
	// the preloaded root.
	pins, err := provide.KuboPins{}.Pins(ctx, fleet.APIURL, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pins, pinnedCID) || slices.Contains(pins, preloadedCID) {
		t.Fatalf("the fleet node's pins %v", pins)
	}
	if n, _ := k.provide.announcer.Announced(); n != len(pins)+1 {
		t.Fatalf("%d keys announced, want %d: the node's pins %v and the preloaded root", n, len(pins)+1, pins)
	}
	code, metrics := k.adminGet(t, "/metrics")
	if want := fmt.Sprintf("kitsune_provide_keys %d\n", len(pins)+1); code != http.StatusOK || !strings.Contains(metrics, want) ||
		!strings.Contains(metrics, "kitsune_provide_keys_truncated 0\n") {
		t.Fatalf("/metrics (%d) lacks %q and the truncated gauge at 0", code, want)
	}
}
