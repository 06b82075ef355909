package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/kitsune-lb/kitsune/internal/heliatest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// startPreloadKitsune runs Kitsune with the preload port in front of one
// downstream node.
func startPreloadKitsune(t *testing.T, node *kubotest.Node) *kitsune {
	t.Helper()
	k := startKitsune(t, []*kubotest.Node{node}, func(c *runCmd) {
		c.Preload = "127.0.0.1:0"
		c.PreloadGrace = 500 * time.Millisecond
		// A broken reverse path shows as a refs call that never ends: cut
		// it short so the test fails instead of hanging.
		c.PreloadTimeout = 60 * time.Second
	})
	if k.preload.URL() == "" {
		t.Fatal("preload port not started")
	}
	return k
}

// reverseRefs calls the preload API for root and returns every ref.
func reverseRefs(t *testing.T, k *kitsune, root string) []string {
	t.Helper()
	resp := preloadPost(t, k.preload.URL()+"/api/v0/refs?r=true&arg="+root, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("preload refs: status %d", resp.StatusCode)
	}
	return preloadRefs(t, resp)
}

// waitReverseEmpty waits until every reverse session and its tables are
// gone (the refs call ended and the grace passed).
func waitReverseEmpty(t *testing.T, k *kitsune) {
	t.Helper()
	eventually(t, 10*time.Second, "reverse sessions to close and their tables to empty", func() bool {
		s := k.relay.Stats()
		return s.Sessions == 0 && s.Authorised == 0 && s.ReverseWants == 0
	})
}

func holdsAll(t *testing.T, n *kubotest.Node, cids []string) {
	t.Helper()
	ctx := testCtx(t, time.Minute)
	for _, s := range cids {
		c, err := cid.Decode(s)
		if err != nil {
			t.Fatal(err)
		}
		ok, err := n.HasBlock(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Fatalf("the downstream node lacks %s after the preload call", c)
		}
	}
}

// The js-ipfs preload flow with a Kubo node as the client that holds new
// content: a refs call makes the fleet fetch the whole DAG from the client
// through Kitsune, so another client gets it after the first one left.
func TestPreloadPullsDAGFromUpstreamKubo(t *testing.T) {
	down := kubotest.Start(t, kubotest.Options{})
	origin := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	tree := smallFiles(t, 30)
	tree["media/big.bin"] = randomBytes(t, 4<<20)
	tree["deep/er/and/deeper/leaf.txt"] = []byte("leaf")
	root, err := origin.AddDir(ctx, tree)
	if err != nil {
		t.Fatal(err)
	}
	// Something the origin holds outside that DAG: never authorised.
	secret := randomBytes(t, 64<<10)
	secretCID, err := origin.AddBytes(ctx, secret)
	if err != nil {
		t.Fatal(err)
	}

	k := startPreloadKitsune(t, down)
	if err := origin.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	want := preloadRefs(t, preloadPost(t, origin.APIURL+"/api/v0/refs?r=true&arg="+root.String(), nil))
	got := reverseRefs(t, k, root.String())
	if !slices.Equal(got, want) {
		t.Fatalf("refs through Kitsune: %d, the origin lists %d", len(got), len(want))
	}
	holdsAll(t, down, append(got, root.String()))
	if n := k.relay.Counters().ReverseBlocks.Load(); n < uint64(len(want)) {
		t.Fatalf("only %d blocks came through reverse sessions for %d refs", n, len(want))
	}

	// Outside a session, and outside the DAG, the fleet gets nothing from
	// upstream: the node cannot fetch the origin's other content.
	missCtx := testCtx(t, 3*time.Second)
	if _, err := down.Cat(missCtx, secretCID.String()); err == nil {
		t.Fatal("the downstream node fetched content outside any preloaded DAG through Kitsune")
	}
	waitReverseEmpty(t, k)

	// The first client leaves; a second one gets the content from the fleet.
	origin.Stop()
	second := kubotest.Start(t, kubotest.Options{})
	if err := second.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	gotTree, err := second.ReadDir(ctx, root)
	if err != nil || !maps.EqualFunc(gotTree, tree, bytes.Equal) {
		t.Fatalf("second client through Kitsune: %v (%d files)", err, len(gotTree))
	}
	waitRelayEmpty(t, k)
}

// The browser case the preload nodes existed for: Helia adds content, the
// preload call makes the fleet fetch it from Helia through Kitsune, and the
// content outlives the Helia node.
func TestPreloadPullsDAGFromHelia(t *testing.T) {
	down := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	k := startPreloadKitsune(t, down)

	adder, err := heliatest.StartAdder(ctx, t, k.addr(t, "ws").String(), heliatest.AddOptions{Dir: true})
	if err != nil {
		t.Fatalf("helia adder: %v", err)
	}
	refs := reverseRefs(t, k, adder.CID)
	if len(refs) < len(adder.Files) {
		t.Fatalf("%d refs for a directory of %d files", len(refs), len(adder.Files))
	}
	holdsAll(t, down, append(refs, adder.CID))
	if err := adder.Stop(); err != nil {
		t.Fatal(err)
	}
	waitReverseEmpty(t, k)

	client := kubotest.Start(t, kubotest.Options{})
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	for _, f := range adder.Files {
		data, err := client.Cat(ctx, adder.CID+"/"+f.Path)
		if err != nil {
			t.Fatalf("cat %s after Helia left: %v", f.Path, err)
		}
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != f.SHA256 {
			t.Fatalf("%s differs from what Helia added", f.Path)
		}
	}
}
