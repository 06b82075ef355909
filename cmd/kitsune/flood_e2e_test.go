package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnetiface "github.com/ipfs/boxo/bitswap/network"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	mh "github.com/multiformats/go-multihash"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// Floods against the real front host (resource manager, stream guard,
// relay limits) with real Kubo nodes behind it: one hostile peer, and a
// crowd of peers coming and going.

func randomCid(t *testing.T) cid.Cid {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	h, _ := mh.Sum(b, mh.SHA2_256, -1)
	return cid.NewCidV1(cid.Raw, h)
}

// streamsFrom counts the streams the front host has open with p.
func (k *kitsune) streamsFrom(p peer.ID) int {
	n := 0
	for _, c := range k.front.Network().ConnsToPeer(p) {
		n += len(c.GetStreams())
	}
	return n
}

// One upstream peer sends 100,000 wants, oversized messages, and opens
// streams in a loop that each announce a maximal message and never finish
// it, while a Kubo client fetches through Kitsune. The peer's wantlist is
// capped, its oversized messages are dropped and its extra streams
// refused; Kitsune's heap stays under a ceiling; the client's fetch
// completes with identical bytes; and once the peer is gone the tables are
// empty.
func TestFloodingPeerIsBounded(t *testing.T) {
	const (
		floodWants     = 100_000
		maxWants       = 1024 // --max-wants-per-peer (the default)
		maxStreams     = 1024 // --max-streams-per-peer (the default)
		maxMessageSize = 1 << 20
		streamAttempts = 1500
		heapCeiling    = 64 << 20
	)
	a, b := kubotest.Start(t, kubotest.Options{}), kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	file := randomBytes(t, 16<<20)
	fc := addEverywhere(t, ctx, file, a, b)
	k := startKitsune(t, []*kubotest.Node{a, b}, func(r *runCmd) {
		r.MaxMessageSize = maxMessageSize
		r.FetchMisses = false // the flood's random CIDs would keep nodes busy for 30s each
	})
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	flood := newRawUpstream(t, k)
	cn := k.relay.Counters()
	baseHeap := liveHeap()
	var peakHeap atomic.Uint64
	sample := func() {
		if h := liveHeap(); h > peakHeap.Load() {
			peakHeap.Store(h)
		}
	}

	fetch := catAsync(ctx, client, fc)

	// 100,000 wants in messages of 5,000 (each well under the size limit).
	droppedBefore := cn.DroppedWants.Load()
	for i := 0; i < floodWants/5000; i++ {
		m := bsmsg.New(false)
		for range 5000 {
			m.AddEntry(randomCid(t), 1, pb.Message_Wantlist_Block, true)
		}
		flood.send(t, m)
	}
	eventually(t, 30*time.Second, "the relay to read the 100,000 wants", func() bool {
		return cn.DroppedWants.Load()-droppedBefore >= floodWants-maxWants
	})
	if s := k.relay.Stats(); s.Wants > maxWants+64 {
		t.Fatalf("%d wants in the table after a 100,000-want flood (cap %d per peer)", s.Wants, maxWants)
	}
	sample()

	// Oversized: a message over --max-message-size is dropped whole, and
	// a frame over 4 MiB resets its stream.
	msgsBefore := cn.DroppedMessages.Load()
	big := bsmsg.New(false)
	for range 30000 {
		big.AddEntry(randomCid(t), 1, pb.Message_Wantlist_Have, false)
	}
	if big.Size() <= maxMessageSize {
		t.Fatalf("test message of %d bytes is not over the limit", big.Size())
	}
	flood.send(t, big)
	eventually(t, 10*time.Second, "the oversized message to be dropped", func() bool {
		return cn.DroppedMessages.Load() > msgsBefore
	})
	for range 5 {
		s, err := flood.h.NewStream(ctx, k.front.ID(), "/ipfs/bitswap/1.2.0")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = s.Write(binary.AppendUvarint(nil, network.MessageSizeMax+1))
		expectStreamReset(t, s)
	}

	// Streams in a loop, each announcing 4 MiB and sending 2 bytes.
	prefix := append(binary.AppendUvarint(nil, network.MessageSizeMax), 0x0a, 0x00)
	var opened []network.Stream
	for range streamAttempts {
		s, err := flood.h.NewStream(ctx, k.front.ID(), "/ipfs/bitswap/1.2.0")
		if err != nil {
			continue
		}
		_, _ = s.Write(prefix)
		opened = append(opened, s)
	}
	time.Sleep(time.Second)
	held := k.streamsFrom(flood.h.ID())
	sample()
	var scope network.ScopeStat
	_ = k.front.Network().ResourceManager().ViewPeer(flood.h.ID(), func(ps network.PeerScope) error {
		scope = ps.Stat()
		return nil
	})
	t.Logf("of %d streams opened in a loop, Kitsune holds %d (limit %d per peer); the peer's resource scope: %d inbound streams, %s reserved",
		streamAttempts, held, maxStreams, scope.NumStreamsInbound, mib(uint64(scope.Memory)))
	if held > maxStreams {
		t.Fatalf("the flooding peer holds %d streams, over the per-peer limit %d", held, maxStreams)
	}
	if !k.frontConnected(flood.h.ID()) {
		t.Log("Kitsune closed the flooding peer's connection")
	}

	r := <-fetch
	if r.err != nil || !bytes.Equal(r.data, file) {
		t.Fatalf("fetch beside the flood: %v (%d bytes)", r.err, len(r.data))
	}
	sample()
	grew := int64(peakHeap.Load()) - int64(baseHeap)
	t.Logf("heap %s before the flood, peak %s (grew %s, ceiling %s)", mib(baseHeap), mib(peakHeap.Load()), mib(uint64(max(grew, 0))), mib(heapCeiling))
	if grew > heapCeiling {
		t.Fatalf("the heap grew %s under one flooding peer, over the %s ceiling", mib(uint64(grew)), mib(heapCeiling))
	}

	for _, s := range opened {
		_ = s.Reset()
	}
	flood.close()
	waitRelayEmpty(t, k)
	eventually(t, 10*time.Second, "the flooding peer to leave the relay's tables", func() bool {
		return k.relay.Stats().Peers <= 1 // the Kubo client
	})
}

// expectStreamReset waits for Kitsune to reset s.
func expectStreamReset(t *testing.T, s network.Stream) {
	t.Helper()
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	for {
		if _, err := s.Read(buf); err != nil {
			if err.Error() == "i/o timeout" || isTimeout(err) {
				t.Fatal("an over-4-MiB frame did not reset its stream within 5s")
			}
			return
		}
	}
}

func isTimeout(err error) bool {
	te, ok := err.(interface{ Timeout() bool })
	return ok && te.Timeout()
}

// 500 upstream peers connect, want blocks (some there, some missing), and
// disconnect, 25 at a time, half of them without waiting for an answer,
// while a Kubo client keeps fetching. The client's fetches complete, and
// afterwards the goroutine count, the relay's tables and the front host's
// connections are back at their baseline.
func TestUpstreamChurnReturnsToBaseline(t *testing.T) {
	const (
		concurrent  = 25
		goroutSlack = 40
		heapSlack   = 16 << 20
	)
	// make soak raises this (KITSUNE_SOAK_PEERS).
	churners := 500
	if v, err := strconv.Atoi(os.Getenv("KITSUNE_SOAK_PEERS")); err == nil && v > 0 {
		churners = v
	}
	a, b := kubotest.Start(t, kubotest.Options{}), kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	var raw [][]byte
	for range 40 {
		raw = append(raw, randomBytes(t, 4096))
	}
	blocks := putBlocks(t, ctx, raw, a, b)
	// Only the files' digests stay in the test's heap, which is Kitsune's.
	var files [][32]byte
	var fileCids []cid.Cid
	for range 6 {
		f := randomBytes(t, 8<<20)
		files = append(files, sha256.Sum256(f))
		fileCids = append(fileCids, addEverywhere(t, ctx, f, a, b))
	}
	k := startKitsune(t, []*kubotest.Node{a, b})
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	// Warm up, so the client's own entries are part of the baseline.
	warm := randomBytes(t, 64<<10)
	wc := addEverywhere(t, ctx, warm, a, b)
	if got, err := client.Cat(ctx, wc.String()); err != nil || !bytes.Equal(got, warm) {
		t.Fatalf("warm-up fetch: %v", err)
	}
	waitRelayEmpty(t, k)
	time.Sleep(500 * time.Millisecond)
	baseG := runtime.NumGoroutine()
	baseStats := k.relay.Stats()
	baseConns := len(k.front.Network().Conns())
	baseHeap := liveHeap()
	basePeerstore := len(k.front.Peerstore().PeersWithKeys())

	done := make(chan struct{})
	fetched := make(chan error, 1)
	go func() {
		// The client keeps fetching while the crowd churns; after the
		// last file it drops what it fetched (repo gc) and starts over,
		// so a long soak keeps going through Kitsune.
		for round := 0; ; round++ {
			for i := range files {
				got, err := client.Cat(ctx, fileCids[i].String())
				if err == nil && sha256.Sum256(got) != files[i] {
					err = errDifferentBytes
				}
				if err != nil {
					fetched <- err
					return
				}
				select {
				case <-done:
					fetched <- nil
					return
				default:
				}
			}
			if err := client.API.Request("repo/gc").Exec(ctx, nil); err != nil {
				fetched <- err
				return
			}
		}
	}()

	var served, dontHaves atomic.Int64
	work := make(chan int)
	var wg sync.WaitGroup
	began := time.Now()
	for range concurrent {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				s, d := churnOnce(t, ctx, k, blocks, i)
				served.Add(int64(s))
				dontHaves.Add(int64(d))
			}
		}()
	}
	for i := range churners {
		work <- i
	}
	close(work)
	wg.Wait()
	close(done)
	t.Logf("%d peers came and went in %v: %d blocks and %d DONT_HAVEs reached those that waited",
		churners, time.Since(began).Round(time.Millisecond), served.Load(), dontHaves.Load())
	if err := <-fetched; err != nil {
		t.Fatalf("the client's fetches during the churn: %v", err)
	}
	if served.Load() == 0 {
		t.Fatal("no churning peer got a block: the churn did not exercise the relay")
	}

	waitRelayEmpty(t, k)
	// The recent blocks (--recent-block-bytes) go 10 s after their last
	// use: until then they are the heap the churn left, by design.
	eventually(t, 20*time.Second, "the relay's tables, its recent blocks and the front host's connections back at their baseline", func() bool {
		s := k.relay.Stats()
		return s.Peers == baseStats.Peers && s.Wants == 0 && s.Sessions == 0 && s.ReverseWants == 0 &&
			s.RecentBlocks == 0 && len(k.front.Network().Conns()) == baseConns
	})
	eventually(t, 20*time.Second, "the goroutine count back at its baseline", func() bool {
		return runtime.NumGoroutine() <= baseG+goroutSlack
	})
	heapNow := liveHeap()
	ps := k.front.Peerstore()
	t.Logf("baseline: %d goroutines, %s heap, %d peers in the front peerstore; after: %d goroutines, %s heap, %d peers (%d with keys, %d with addresses)",
		baseG, mib(baseHeap), basePeerstore, runtime.NumGoroutine(), mib(heapNow), len(ps.Peers()), len(ps.PeersWithKeys()), len(ps.PeersWithAddrs()))
	if heapNow > baseHeap+heapSlack {
		t.Fatalf("the heap grew from %s to %s over the churn", mib(baseHeap), mib(heapNow))
	}
	// The peerstore is not checked: go-libp2p's peerstore manager forgets
	// a departed peer a minute after it left, so it holds at most a
	// minute of churn. The resource manager's per-peer scopes likewise
	// go at its next minutely collection: the heap slack covers both.
}

var errDifferentBytes = errorString("a file came back with different bytes")

type errorString string

func (e errorString) Error() string { return string(e) }

// churnOnce is one short-lived upstream peer: it connects, wants three
// blocks the fleet holds and one it does not, and leaves, after the
// answers (even i) or at once (odd i).
func churnOnce(t *testing.T, ctx context.Context, k *kitsune, blocks []cid.Cid, i int) (served, dont int) {
	h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Error(err)
		return
	}
	defer h.Close()
	net := bsnet.NewFromIpfsHost(h)
	var mu sync.Mutex
	got := make(chan struct{}, 8)
	net.Start(recv(func(m bsmsg.BitSwapMessage) {
		mu.Lock()
		served += len(m.Blocks())
		dont += len(m.DontHaves())
		mu.Unlock()
		select {
		case got <- struct{}{}:
		default:
		}
	}))
	defer net.Stop()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h.Connect(cctx, k.info(t, "tcp")); err != nil {
		t.Errorf("churn peer %d: %v", i, err)
		return
	}
	s, err := net.NewMessageSender(cctx, k.front.ID(), &bsnetiface.MessageSenderOpts{MaxRetries: 1})
	if err != nil {
		t.Errorf("churn peer %d: %v", i, err)
		return
	}
	m := bsmsg.New(false)
	for j := range 3 {
		m.AddEntry(blocks[(i*3+j)%len(blocks)], 1, pb.Message_Wantlist_Block, true)
	}
	m.AddEntry(randomCid(t), 1, pb.Message_Wantlist_Block, true)
	if err := s.SendMsg(cctx, m); err != nil {
		t.Errorf("churn peer %d: %v", i, err)
		return
	}
	if i%2 == 0 {
		wait := time.After(3 * time.Second)
	loop:
		for {
			mu.Lock()
			enough := served >= 3
			mu.Unlock()
			if enough {
				break
			}
			select {
			case <-got:
			case <-wait:
				break loop
			}
		}
	}
	_ = s.Reset()
	mu.Lock()
	defer mu.Unlock()
	return served, dont
}

type recv func(bsmsg.BitSwapMessage)

func (r recv) ReceiveMessage(_ context.Context, _ peer.ID, m bsmsg.BitSwapMessage) { r(m) }
func (recv) ReceiveError(error)                                                    {}
func (recv) PeerConnected(peer.ID)                                                 {}
func (recv) PeerDisconnected(peer.ID)                                              {}
