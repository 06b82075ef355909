package main

// Helpers for the reliability tests (faults_e2e_test.go, flood_e2e_test.go):
// a raw Bitswap peer that sends hand-built messages and records every
// answer, memory and goroutine measurements, and fixed API ports for Kubo
// nodes that must come back at the same address.

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnetiface "github.com/ipfs/boxo/bitswap/network"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// rawUpstream is an upstream peer that speaks Bitswap by hand: it sends
// the messages a test builds, on one stream, and records every answer.
type rawUpstream struct {
	h      host.Host
	net    bsnetiface.BitSwapNetwork
	sender bsnetiface.MessageSender

	mu        sync.Mutex
	blocks    map[cid.Cid][]byte
	dontHaves map[cid.Cid]int
	haves     map[cid.Cid]int
}

func newRawUpstream(t *testing.T, k *kitsune) *rawUpstream {
	t.Helper()
	h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(tcp.NewTCPTransport),
		libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{h: h, blocks: make(map[cid.Cid][]byte), dontHaves: make(map[cid.Cid]int), haves: make(map[cid.Cid]int)}
	u.net = bsnet.NewFromIpfsHost(h)
	u.net.Start(u)
	t.Cleanup(u.close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	if u.sender, err = u.net.NewMessageSender(ctx, k.front.ID(), &bsnetiface.MessageSenderOpts{MaxRetries: 3}); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u *rawUpstream) close() {
	u.net.Stop()
	_ = u.h.Close()
}

func (u *rawUpstream) ReceiveMessage(_ context.Context, _ peer.ID, m bsmsg.BitSwapMessage) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, b := range m.Blocks() {
		u.blocks[b.Cid()] = b.RawData()
	}
	for _, c := range m.DontHaves() {
		u.dontHaves[c]++
	}
	for _, c := range m.Haves() {
		u.haves[c]++
	}
}
func (u *rawUpstream) ReceiveError(error)       {}
func (u *rawUpstream) PeerConnected(peer.ID)    {}
func (u *rawUpstream) PeerDisconnected(peer.ID) {}

func (u *rawUpstream) send(t *testing.T, m bsmsg.BitSwapMessage) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := u.sender.SendMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// want asks for cs as want-block.
func (u *rawUpstream) want(t *testing.T, sendDontHave bool, cs ...cid.Cid) {
	t.Helper()
	m := bsmsg.New(false)
	for _, c := range cs {
		m.AddEntry(c, 1, pb.Message_Wantlist_Block, sendDontHave)
	}
	u.send(t, m)
}

func (u *rawUpstream) cancel(t *testing.T, cs ...cid.Cid) {
	t.Helper()
	m := bsmsg.New(false)
	for _, c := range cs {
		m.Cancel(c)
	}
	u.send(t, m)
}

func (u *rawUpstream) got(c cid.Cid) ([]byte, int, int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.blocks[c], u.dontHaves[c], u.haves[c]
}

// liveHeap is the in-process heap (Kitsune's, and the test's own hosts')
// after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// fixedAPINode starts a Kubo node whose RPC API listens on a port of its
// own choosing that survives restarts, so Kitsune finds it (or a
// replacement) at the same address.
func fixedAPINode(t *testing.T, port int) *kubotest.Node {
	t.Helper()
	return kubotest.Start(t, kubotest.Options{Config: map[string]any{
		"Addresses.API": fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port),
	}})
}

// frontConnected reports whether the front host holds a connection to p.
func (k *kitsune) frontConnected(p peer.ID) bool {
	return k.front.Network().Connectedness(p) == network.Connected
}
