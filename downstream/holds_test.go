package downstream

import (
	"context"
	"errors"
	"github.com/kitsune-lb/kitsune/internal/testkit"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// Holds asks a real Kubo node, offline: the empty directory every node
// has is held, a block nobody has is not (and the node does not go looking
// for it), and without a node there is nobody to ask.
func TestHoldsAsksANodeOffline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	empty := cid.MustParse("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn")

	if _, err := newTestPool(t, Options{}).Holds(ctx, empty); !errors.Is(err, ErrNoNode) {
		t.Fatalf("empty pool: %v, want ErrNoNode", err)
	}

	node := kubotest.Start(t, kubotest.Options{})
	p := newTestPool(t, Options{})
	if err := p.SetMembers("test", []string{node.APIURL}); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); p.Run(runCtx) }()
	t.Cleanup(func() { stop(); <-done })
	testkit.Eventually(t, 30*time.Second, testkit.Say("the node never joined"),
		func() bool { return p.ConnectedCount() == 1 })

	if ok, err := p.Holds(ctx, empty); err != nil || !ok {
		t.Fatalf("Holds(empty directory) = %v, %v; want true", ok, err)
	}
	mh, err := multihash.Sum([]byte("nobody has this block"), multihash.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	missing := cid.NewCidV1(cid.Raw, mh)
	start := time.Now()
	if ok, err := p.Holds(ctx, missing); err != nil || ok {
		t.Fatalf("Holds(missing) = %v, %v; want false", ok, err)
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("Holds(missing) took %v: the node went looking for it", el)
	}
	if want, err := node.OwnWantlist(ctx); err != nil || len(want) != 0 {
		t.Fatalf("the node wants %v after Holds (%v): it must not fetch", want, err)
	}
}
