package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/boxo/files"
	"github.com/ipfs/kubo/core/coreiface/options"

	"github.com/kitsune-lb/kitsune/internal/heliatest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// Issue 11, hole 2 (priorities), end to end: a Helia client and a busy Kubo
// client share one downstream node through Kitsune, with so few wants
// allowed out at the node that most of the Kubo client's backlog waits in
// Kitsune's queue. Helia's small fetch must still take about as long as
// it does alone, because Kitsune ranks each peer's n-th want MaxInt32−n
// (downstream and in its own queue), so Helia's few wants go ahead of the
// Kubo client's deep backlog instead of behind it.
func TestHeliaStaysFastBesideBusyKuboClient(t *testing.T) {
	node := kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)

	small := randomBytes(t, 1<<20)
	smallCID, err := node.AddBytes(ctx, small)
	if err != nil {
		t.Fatal(err)
	}
	// The busy client's files are made of 1 MiB blocks, the largest
	// Bitswap moves, so that each of its queued wants stands for as much
	// transfer as it can: a FIFO queue then costs Helia seconds, not ms.
	const busyFiles = 4
	var bigCIDs []string
	for range busyFiles {
		p, err := node.API.Unixfs().Add(ctx, files.NewBytesFile(randomBytes(t, 64<<20)),
			options.Unixfs.Chunker("size-1048576"), options.Unixfs.RawLeaves(true), options.Unixfs.Pin(true, ""))
		if err != nil {
			t.Fatal(err)
		}
		bigCIDs = append(bigCIDs, p.RootCid().String())
	}
	const inflight = 2
	k := startKitsune(t, []*kubotest.Node{node}, func(c *runCmd) { c.MaxInflightPerNode = inflight })
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	ws := k.addr(t, "ws").String()
	sum := sha256.Sum256(small)
	helia := func(phase string) time.Duration {
		t.Helper()
		res, err := heliatest.Fetch(ctx, t, ws, smallCID.String(), heliatest.WithTimeout(45*time.Second))
		if err != nil {
			t.Fatalf("helia fetch (%s): %v", phase, err)
		}
		if res.Bytes != int64(len(small)) || res.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("helia (%s) got %d bytes sha256 %s, want %d bytes %x", phase, res.Bytes, res.SHA256, len(small), sum)
		}
		// res.MS runs from Helia's dial to its last byte: Node's
		// start-up, which the load slows too, is not in it.
		return time.Duration(res.MS) * time.Millisecond
	}

	const runs = 3
	var alone []time.Duration
	for range runs {
		alone = append(alone, helia("alone"))
	}

	// The Kubo client pins each 64 MiB file over and over, in parallel
	// (as a mirror or a backup does): pin add walks a DAG with up to 32
	// fetches at once, so about a hundred wants arrive together. pin rm
	// and repo gc drop the blocks after each round so every round
	// crosses Kitsune again.
	busyCtx, stopBusy := context.WithCancel(ctx)
	var rounds atomic.Int64
	busyErr := make(chan error, busyFiles)
	var wg sync.WaitGroup
	for _, c := range bigCIDs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for busyCtx.Err() == nil {
				err := kuboRun(busyCtx, client, "pin/add", c)
				if err == nil {
					err = kuboRun(busyCtx, client, "pin/rm", c)
				}
				if err == nil {
					err = kuboRun(busyCtx, client, "repo/gc")
				}
				if busyCtx.Err() != nil {
					return
				}
				if err != nil {
					busyErr <- err
					return
				}
				rounds.Add(1)
			}
		}()
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		stopBusy()
		wg.Wait()
		close(busyErr)
		if err := <-busyErr; err != nil {
			t.Fatalf("busy kubo client: %v", err)
		}
	}
	t.Cleanup(stop)

	var busy []time.Duration
	var queued []int
	for range runs {
		// Contention is real only while the Kubo client's wants wait in
		// Kitsune's queue behind a full node: wait for that (it comes
		// back within a round's first blocks, and again after each GC).
		eventually(t, 30*time.Second, "the kubo client's wants queued in kitsune", func() bool {
			return k.relay.Stats().Queued >= inflight
		})
		queued = append(queued, k.relay.Stats().Queued)
		busy = append(busy, helia("busy"))
	}
	r := rounds.Load()
	stop()
	waitRelayEmpty(t, k)

	aloneMed, busyMed := median(alone), median(busy)
	t.Logf("helia 1 MiB alone %v (median %v); beside a kubo client pinning %d×64 MiB with %v of its wants queued in kitsune: %v (median %v); kubo client finished %d rounds",
		alone, aloneMed, busyFiles, queued, busy, busyMed, r)
	// The bound: 3× alone plus 1 s. Alone, Helia fetches 1 MiB in a few
	// hundred ms on a loopback; beside the busy client it shares the one
	// node (inflight 4) with it, so each of its wants waits for a slot
	// among the Kubo client's blocks in flight, and the 2-core machine is
	// busy serving 64 MiB. Measured on the 2-core CI box: see the report
	// in issue 11; without the priorities Helia waits behind the whole
	// queued backlog and takes several times longer.
	if bound := 3*aloneMed + time.Second; busyMed > bound {
		t.Fatalf("helia took %v (median) beside a busy kubo client, over the bound %v (3× its %v alone + 1 s)", busyMed, bound, aloneMed)
	}
}

// kuboRun runs one RPC command on n and reads its whole answer.
func kuboRun(ctx context.Context, n *kubotest.Node, cmd string, args ...string) error {
	resp, err := n.API.Request(cmd, args...).Send(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	defer resp.Close()
	if resp.Error != nil {
		return fmt.Errorf("%s: %w", cmd, resp.Error)
	}
	if _, err := io.Copy(io.Discard, resp.Output); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	return nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
