package bitswap

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	blocks "github.com/ipfs/go-block-format"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap/zaptest"
)

// holdNet is a replySender whose receiver confirms nothing until release:
// every message stays in flight, its blocks counted by the outbox.
type holdNet struct {
	mu       sync.Mutex
	held     []func(replyEvents)
	released bool
}

func (n *holdNet) send(_ context.Context, _ peer.ID, _ bsmsg.BitSwapMessage, _ time.Duration, done func(replyEvents)) {
	n.mu.Lock()
	if !n.released {
		n.held = append(n.held, done)
		n.mu.Unlock()
		return
	}
	n.mu.Unlock()
	done(deliveredEvents())
}

// deliveredEvents are a stream a boxo receiver read to the end and closed.
func deliveredEvents() replyEvents {
	now := time.Now()
	return replyEvents{opened: now, wrote: now, closed: now, ended: now.Add(time.Millisecond)}
}

func (n *holdNet) release() {
	n.mu.Lock()
	n.released = true
	held := n.held
	n.held = nil
	n.mu.Unlock()
	for _, done := range held {
		done(deliveredEvents())
	}
}

// A peer's reply budget bounds the memory its queued and unconfirmed
// blocks keep alive, their node messages' buffers included, and is all
// given back once the replies are confirmed.
func TestReplyBudgetCountsRetainedBuffers(t *testing.T) {
	const budget = 64 << 10
	net := &holdNet{}
	o := newReplyOutbox(context.Background(), "peer", net, zaptest.NewLogger(t), budget, replyWindow, replyHooks{})
	defer o.close()
	// Blocks of 4 KiB parsed in place from messages of about 5.8 KiB.
	bs, frames := parsedBlocks(t, "o", 40, 1, 4<<10, 40)
	var queued []blocks.Block
	for _, b := range bs {
		if o.full() {
			break
		}
		o.addBlock(b)
		queued = append(queued, b)
	}
	// The outbox takes blocks until it is full: it may pass the budget
	// by the last block's message.
	if held, most := heldBy(queued, frames), budget+cap(frames[0]); held > most {
		t.Errorf("%d blocks queued for the peer hold %d bytes alive, over its %d budget", len(queued), held, budget)
	}
	net.release()
	eventually(t, 5*time.Second, func() string { return fmt.Sprintf("outbox holding %+v after every reply was confirmed", o.load()) },
		func() bool { l := o.load(); return l.bytes == 0 && l.flights == 0 })
}
