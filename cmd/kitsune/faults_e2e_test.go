package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/boxo/datastore/dshelp"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/kitsune-lb/kitsune/downstream"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// Fault tests with real Kubo nodes on loopback: nodes restarted, replaced,
// all gone, or serving corrupt blocks, and Kitsune itself restarted, each
// while clients fetch.

// catAsync starts client.Cat(c) and returns a channel with its result.
func catAsync(ctx context.Context, client *kubotest.Node, c cid.Cid) <-chan catResult {
	ch := make(chan catResult, 1)
	go func() {
		data, err := client.Cat(ctx, c.String())
		ch <- catResult{data, err, time.Now()}
	}()
	return ch
}

type catResult struct {
	data []byte
	err  error
	at   time.Time
}

// whenBlocksOut runs f once Kitsune has sent n blocks upstream (counted
// from now), and returns when f ran; a fetch that ends first makes the
// test fail, since the fault would not have hit a transfer.
func whenBlocksOut(ctx context.Context, k *kitsune, n uint64, f func()) <-chan time.Time {
	start := k.relay.Counters().BlocksOut.Load()
	ch := make(chan time.Time, 1)
	go func() {
		for k.relay.Counters().BlocksOut.Load() < start+n && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		at := time.Now()
		// Sent even if f fails the test (t.Fatal ends this goroutine).
		defer func() { ch <- at }()
		f()
	}()
	return ch
}

func checkCat(t *testing.T, what string, r catResult, want []byte, faultAt time.Time) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("%s: fetch failed: %v", what, r.err)
	}
	if !bytes.Equal(r.data, want) {
		t.Fatalf("%s: got %d bytes, not the %d bytes added", what, len(r.data), len(want))
	}
	if !faultAt.Before(r.at) {
		t.Fatalf("%s: the fetch ended before the fault: the test proved nothing", what)
	}
}

// A downstream node restarted with the same peer ID during a transfer,
// then one replaced by a node with a new peer ID (a new repository) behind
// the same RPC address during another: each client fetch completes with
// identical bytes, and Kitsune follows the node back (same ID) and to its
// replacement (new ID) without a restart.
func TestNodeRestartedAndReplacedMidTransfer(t *testing.T) {
	port := freePort(t)
	a := fixedAPINode(t, port)
	b := kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	file1, file2 := randomBytes(t, 32<<20), randomBytes(t, 32<<20)
	c1 := addEverywhere(t, ctx, file1, a, b)
	c2 := addEverywhere(t, ctx, file2, a, b)

	k := startKitsune(t, []*kubotest.Node{a, b}, func(r *runCmd) {
		r.HealthInterval = 300 * time.Millisecond
		r.HealthTimeout = 500 * time.Millisecond
	})
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	oldID := a.ID

	// Same peer ID: kubotest's Restart stops the daemon (SIGTERM) and
	// starts it on the same repository.
	fetch := catAsync(ctx, client, c1)
	restarted := whenBlocksOut(ctx, k, 16, func() { a.Restart(t) })
	checkCat(t, "node restarted", <-fetch, file1, <-restarted)
	eventually(t, 20*time.Second, "the restarted node to rejoin under its peer ID", func() bool {
		s := k.nodeStatus(t, a)
		return s.Connected && s.State == downstream.StateHealthy
	})
	only := randomBytes(t, 1<<20)
	co, err := a.AddBytes(ctx, only)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := client.Cat(ctx, co.String()); err != nil || !bytes.Equal(got, only) {
		t.Fatalf("content only the restarted node holds: %v", err)
	}

	// New peer ID behind the same address: a fresh repository takes the
	// stopped node's API port.
	var a2 *kubotest.Node
	fetch = catAsync(ctx, client, c2)
	replaced := whenBlocksOut(ctx, k, 16, func() {
		a.Stop()
		a2 = fixedAPINode(t, port)
	})
	checkCat(t, "node replaced", <-fetch, file2, <-replaced)
	if a2.ID == oldID {
		t.Fatal("the replacement has the old peer ID")
	}
	eventually(t, 20*time.Second, "Kitsune to follow the replacement's new peer ID", func() bool {
		for _, s := range k.pool.Nodes() {
			if s.URL == a2.APIURL {
				return s.ID == a2.ID && s.Connected && s.State == downstream.StateHealthy
			}
		}
		return false
	})
	only2 := randomBytes(t, 1<<20)
	co2, err := a2.AddBytes(ctx, only2)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := client.Cat(ctx, co2.String()); err != nil || !bytes.Equal(got, only2) {
		t.Fatalf("content only the replacement holds: %v", err)
	}
	if k.frontConnected(oldID) || k.back.Network().Connectedness(oldID) == network.Connected {
		t.Fatal("Kitsune still holds a connection to the replaced peer ID")
	}
	t.Logf("failovers %d, timeouts %d", k.relay.Counters().Failovers.Load(), k.relay.Counters().Timeouts.Load())
	waitRelayEmpty(t, k)
}

// readyz is the admin server's /readyz status code.
func (k *kitsune) readyz(t *testing.T) int {
	t.Helper()
	code, _ := k.adminGet(t, "/readyz")
	return code
}

// Every downstream node down: a client that asked for DONT_HAVE hears it
// at once, one that did not hears nothing and cancels cleanly, a Kubo
// client's fetch times out and leaves nothing behind, /readyz fails; when
// a node comes back, service resumes without restarting Kitsune: the
// client still waiting gets its block, and new fetches work.
func TestAllNodesDownThenOneReturns(t *testing.T) {
	port := freePort(t)
	a := fixedAPINode(t, port)
	b := kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	file := randomBytes(t, 2<<20)
	fc := addEverywhere(t, ctx, file, a, b)
	raw := [][]byte{randomBytes(t, 3000), randomBytes(t, 3000), randomBytes(t, 3000)}
	cids := putBlocks(t, ctx, raw, a, b)

	k := startKitsune(t, []*kubotest.Node{a, b}, func(r *runCmd) {
		r.HealthInterval = 200 * time.Millisecond
		r.HealthTimeout = 500 * time.Millisecond
	})
	if code := k.readyz(t); code != http.StatusOK {
		t.Fatalf("/readyz with both nodes up: %d", code)
	}
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	asksDont, silent := newRawUpstream(t, k), newRawUpstream(t, k)

	a.Kill()
	b.Kill()
	// Over QUIC a killed peer's connection lingered for the 30 s idle
	// timeout, and with no healthy node left Kitsune kept sending wants to
	// the dead ones; the pool now drops a node whose RPC port refuses
	// connections at its next health check.
	killed := time.Now()
	eventually(t, 5*time.Second, "both killed nodes to leave the pool", func() bool { return k.pool.ConnectedCount() == 0 })
	t.Logf("both nodes left the pool %v after SIGKILL", time.Since(killed).Round(time.Millisecond))
	eventually(t, 5*time.Second, "/readyz to fail with no node", func() bool { return k.readyz(t) == http.StatusServiceUnavailable })

	asksDont.want(t, true, cids[0])
	silent.want(t, false, cids[1])
	eventually(t, 5*time.Second, "DONT_HAVE for the client that asked for it", func() bool {
		_, dont, _ := asksDont.got(cids[0])
		return dont == 1
	})
	// The other hears nothing: no block, no DONT_HAVE.
	time.Sleep(time.Second)
	if blk, dont, have := silent.got(cids[1]); blk != nil || dont != 0 || have != 0 {
		t.Fatalf("a client that did not ask for DONT_HAVE heard: block %v, %d DONT_HAVE, %d HAVE", blk != nil, dont, have)
	}
	// A Kubo client gives up after its timeout, and its wants go with it.
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err := client.Cat(short, fc.String())
	cancel()
	if err == nil {
		t.Fatal("a fetch succeeded with every node down")
	}
	asksDont.cancel(t, cids[0])
	eventually(t, 10*time.Second, "only the silent client's want left", func() bool {
		s := k.relay.Stats()
		return s.Wants == 1 && s.Queued == 0
	})

	// A node comes back at the same address; Kitsune is not restarted.
	a.Restart(t)
	back := time.Now()
	eventually(t, 10*time.Second, "the node to rejoin", func() bool { return k.pool.HealthyCount() == 1 })
	t.Logf("the node rejoined %v after it was back", time.Since(back).Round(time.Millisecond))
	eventually(t, 5*time.Second, "/readyz to pass again", func() bool { return k.readyz(t) == http.StatusOK })
	eventually(t, 10*time.Second, "the waiting client's block", func() bool {
		blk, _, _ := silent.got(cids[1])
		return bytes.Equal(blk, raw[1])
	})
	if got, err := client.Cat(ctx, fc.String()); err != nil || !bytes.Equal(got, file) {
		t.Fatalf("fetch once a node is back: %v", err)
	}
	asksDont.want(t, true, cids[2])
	eventually(t, 10*time.Second, "a new want answered", func() bool {
		blk, _, _ := asksDont.got(cids[2])
		return bytes.Equal(blk, raw[2])
	})
	waitRelayEmpty(t, k)
}

// Kitsune stopped during a transfer and started again with the same key
// and listen address: same peer ID, the client reconnects (Kitsune is in
// its Peering.Peers), and its fetch finishes with identical bytes.
//
// The client redials on its own, as a long-lived client does (Kubo's
// peering waits 7.5 s or more after a disconnect), not the test at once:
// redialled some 50 ms after Kitsune went, the client's Bitswap session
// could take the disconnect and the reconnect in one batch (boxo's
// sessionWantSender keeps the last availability of each peer), so it
// never noticed the peer leave and kept waiting on the want-blocks it had
// sent the first run; the second answered its want-haves with HAVE and
// got no want-block (1 run in 16 under load: the fetch hung until the
// test's context ended).
func TestKitsuneRestartedMidTransfer(t *testing.T) {
	a, b := kubotest.Start(t, kubotest.Options{}), kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	file := randomBytes(t, 48<<20)
	c := addEverywhere(t, ctx, file, a, b)
	key := filepath.Join(t.TempDir(), "kitsune.key")
	id := keyFileID(t, key)
	listen := fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", freePort(t))
	client := kubotest.Start(t, kubotest.Options{Config: map[string]any{
		"Peering.Peers": []map[string]any{{"ID": id.String(), "Addrs": []string{listen}}},
	}})
	same := func(r *runCmd) {
		r.Key = key
		r.Listen = []string{listen}
		r.WS = nil
	}
	k1 := startKitsune(t, []*kubotest.Node{a, b}, same)
	if k1.front.ID() != id {
		t.Fatalf("Kitsune runs as %s, not the key's %s", k1.front.ID(), id)
	}
	// The first connection is the test's: peering's first dial comes
	// only after its back-off.
	if err := client.Connect(ctx, k1.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}

	fetch := catAsync(ctx, client, c)
	var k2 atomic.Pointer[kitsune]
	restarted := whenBlocksOut(ctx, k1, 24, func() {
		k1.stop()
		<-k1.done
		k2.Store(startKitsune(t, []*kubotest.Node{a, b}, same))
	})
	at := <-restarted
	res := <-fetch
	checkCat(t, "Kitsune restarted", res, file, at)
	k := k2.Load()
	if k.front.ID() != id {
		t.Fatalf("peer ID changed across the restart: %s then %s", id, k.front.ID())
	}
	if k.relay.Counters().BlocksOut.Load() == 0 {
		t.Fatal("the restarted Kitsune sent no block: the fetch did not go on through it")
	}
	t.Logf("first run sent %d blocks, the second %d; the fetch ended %v after the restart",
		k1.relay.Counters().BlocksOut.Load(), k.relay.Counters().BlocksOut.Load(), res.at.Sub(at).Round(time.Millisecond))
	waitRelayEmpty(t, k)
}

// refsOf lists every block below root (not root itself) on node n.
func refsOf(t *testing.T, ctx context.Context, n *kubotest.Node, root cid.Cid) []cid.Cid {
	t.Helper()
	resp, err := n.API.Request("refs", root.String()).Option("recursive", true).Send(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Close()
	if resp.Error != nil {
		t.Fatal(resp.Error)
	}
	var out []cid.Cid
	dec := json.NewDecoder(resp.Output)
	for {
		var line struct{ Ref, Err string }
		if err := dec.Decode(&line); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if line.Err != "" {
			t.Fatal(line.Err)
		}
		c, err := cid.Decode(line.Ref)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// corruptBlocks flips one byte in the middle of each block's file in the
// node's flatfs blockstore (<repo>/blocks/<shard>/<key>.data). Kubo does
// not hash blocks on read by default, so it serves the damaged bytes.
func corruptBlocks(t *testing.T, n *kubotest.Node, cs []cid.Cid) {
	t.Helper()
	files := make(map[string]string)
	root := filepath.Join(n.Dir, "blocks")
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".data") {
			files[strings.TrimSuffix(d.Name(), ".data")] = p
		}
		return err
	})
	if err != nil {
		t.Fatalf("the node's blockstore is not a flatfs under %s: %v", root, err)
	}
	for _, c := range cs {
		key := strings.TrimPrefix(dshelp.MultihashToDsKey(c.Hash()).String(), "/")
		p, ok := files[key]
		if !ok {
			t.Fatalf("no flatfs file for %s (key %s) among %d files", c, key, len(files))
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		data[len(data)/2] ^= 0xff
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A node whose blockstore returns damaged bytes: its blocks match no want
// (their CIDs are computed from the bytes), so they never reach a client,
// the node is penalised, and the client gets identical bytes from the
// other node that holds the file.
func TestCorruptBlocksOnDiskNeverReachClients(t *testing.T) {
	bad, good := kubotest.Start(t, kubotest.Options{}), kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	file := randomBytes(t, 8<<20)
	c := addEverywhere(t, ctx, file, bad, good)
	leaves := refsOf(t, ctx, bad, c)
	corruptBlocks(t, bad, leaves)
	// The node really serves the damage.
	if got, err := bad.Cat(ctx, c.String()); err != nil || bytes.Equal(got, file) {
		t.Fatalf("the corrupted node still returns the file intact (%v): the corruption did not take", err)
	}

	k := startKitsune(t, []*kubotest.Node{bad, good})
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	got, err := client.Cat(ctx, c.String())
	if err != nil || !bytes.Equal(got, file) {
		t.Fatalf("fetch with one node serving corrupt blocks: %v (%d bytes, identical %v)", err, len(got), bytes.Equal(got, file))
	}
	took := time.Since(began)
	badBlocks := k.relay.Counters().BadBlocks.Load()
	st := k.nodeStatus(t, bad)
	t.Logf("%d corrupt blocks on one node: fetch took %v; %d bad blocks dropped; the node has %d failures, %d ejections, state %s",
		len(leaves), took.Round(time.Millisecond), badBlocks, st.Counters.Failures, st.Counters.Ejections, st.State)
	if badBlocks == 0 {
		t.Fatal("no bad block was seen: the corrupt node was never asked for a damaged block")
	}
	if st.Counters.Failures == 0 {
		t.Fatal("the node that sent corrupt blocks was not penalised")
	}
	waitRelayEmpty(t, k)
}
