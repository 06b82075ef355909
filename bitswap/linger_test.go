package bitswap

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap/zaptest"
)

func (o *replyOutbox) writing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.running
}

func (o *wantOutbox) writing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.running
}

// The outboxes' writers wait a moment for more (writerLinger) and then
// end: what comes while one waits goes out, none is left once the peer is
// quiet or gone, and what comes after that starts a new one.
func TestReplyWriterLingersThenEnds(t *testing.T) {
	net := &sendNet{got: make(map[cid.Cid]int), pres: make(map[cid.Cid]int)}
	o := newReplyOutbox(context.Background(), "peer", net, zaptest.NewLogger(t), 0, replyWindow, replyHooks{})
	defer o.close()
	sent := func(n int) {
		t.Helper()
		eventually(t, 5*time.Second, func() string { b, _ := net.delivered(); return fmt.Sprintf("%d of %d blocks sent", b, n) },
			func() bool { b, _ := net.delivered(); return b == n })
	}
	o.addBlock(makeBlock(t, 1024))
	sent(1)
	o.addBlock(makeBlock(t, 1024)) // most likely to the lingering writer
	o.addPresence(missingCid(t), pb.Message_DontHave)
	sent(2)
	eventually(t, writerLinger+5*time.Second, func() string { return "the reply writer still runs after the peer went quiet" },
		func() bool { return !o.writing() })
	o.addBlock(makeBlock(t, 1024))
	sent(3)
	o.close()
	eventually(t, 5*time.Second, func() string { return "the reply writer still runs after close" }, func() bool { return !o.writing() })
	if _, p := net.delivered(); p != 1 {
		t.Errorf("%d presences sent, want 1", p)
	}
}

func TestWantWriterLingersThenEnds(t *testing.T) {
	var (
		mu    sync.Mutex
		wants = map[cid.Cid]int{}
	)
	net := &fuzzNet{check: func(_ peer.ID, m bsmsg.BitSwapMessage) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range m.Wantlist() {
			wants[e.Cid]++
		}
		return nil
	}}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(wants)
	}
	sent := func(n int) {
		t.Helper()
		eventually(t, 5*time.Second, func() string { return fmt.Sprintf("%d of %d wants sent", count(), n) },
			func() bool { return count() == n })
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := newWantOutbox("node", net, zaptest.NewLogger(t))
	o.want(ctx, makeBlock(t, 64).Cid(), pb.Message_Wantlist_Block, 1)
	sent(1)
	o.want(ctx, makeBlock(t, 64).Cid(), pb.Message_Wantlist_Block, 1)
	sent(2)
	eventually(t, writerLinger+5*time.Second, func() string { return "the want writer still runs after the node went quiet" },
		func() bool { return !o.writing() })
	o.want(ctx, makeBlock(t, 64).Cid(), pb.Message_Wantlist_Block, 1)
	sent(3)
	cancel()
	eventually(t, 5*time.Second, func() string { return "the want writer still runs after its context ended" }, func() bool { return !o.writing() })
}
