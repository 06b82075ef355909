// Package testkit holds the helpers the tests of every package repeat:
// waiting on a condition, a libp2p host on loopback, test CIDs.
package testkit

import (
	"fmt"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	mh "github.com/multiformats/go-multihash"
)

// pollEvery is how often Eventually looks again.
const pollEvery = 5 * time.Millisecond

// Eventually polls cond until it holds, and fails the test with what()
// once within has passed. Tests wait on events this way, never on sleeps.
func Eventually(tb testing.TB, within time.Duration, what func() string, cond func() bool) {
	tb.Helper()
	EventuallyEvery(tb, within, pollEvery, what, cond)
}

// EventuallyEvery is Eventually looking every so often, for a condition
// that costs something to evaluate (an RPC call to a Kubo node).
func EventuallyEvery(tb testing.TB, within, every time.Duration, what func() string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", within, what())
		}
		time.Sleep(every)
	}
}

// Say is a fixed description for Eventually.
func Say(what string) func() string { return func() string { return what } }

// Host is a libp2p host for tests, listening on the given addresses (none
// when empty), closed when the test ends. Its resource manager has no
// limits: every test host shares 127.0.0.1, and the default limits allow
// only a few connections per IP.
func Host(tb testing.TB, listen ...string) host.Host {
	tb.Helper()
	opt := libp2p.ListenAddrStrings(listen...)
	if len(listen) == 0 {
		opt = libp2p.NoListenAddrs
	}
	h, err := libp2p.New(opt,
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = h.Close() })
	return h
}

// CID is a distinct raw-block CIDv1 for each i (of no real block), for
// tests that need many keys.
func CID(tb testing.TB, i int) cid.Cid {
	tb.Helper()
	h, err := mh.Sum([]byte(fmt.Sprint("block ", i)), mh.SHA2_256, -1)
	if err != nil {
		tb.Fatal(err)
	}
	return cid.NewCidV1(cid.Raw, h)
}
