package bitswap

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	blocks "github.com/ipfs/go-block-format"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
)

// readLikeBoxo reads messages until the sender's EOF, then closes, as
// boxo's handleNewStream does.
func readLikeBoxo(s network.Stream) ([]bsmsg.BitSwapMessage, error) {
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := msgio.NewVarintReaderSize(s, network.MessageSizeMax)
	var msgs []bsmsg.BitSwapMessage
	for {
		m, _, err := bsmsg.FromMsgReader(r)
		if errors.Is(err, io.EOF) {
			_ = s.Close()
			return msgs, nil
		}
		if err != nil {
			_ = s.Reset()
			return msgs, err
		}
		msgs = append(msgs, m)
	}
}

// openReplyStreams counts the streams the relay's front host opened to p
// with a protocol set (Bitswap's: Kitsune opens no other kind to its
// peers): reply streams in flight, and one opened ahead.
func openReplyStreams(e *env, p peer.ID) int {
	n := 0
	for _, c := range e.front.Network().ConnsToPeer(p) {
		for _, s := range c.GetStreams() {
			if s.Stat().Direction == network.DirOutbound && s.Protocol() != "" {
				n++
			}
		}
	}
	return n
}

// A receiver that reads first (boxo) gets each block after the first ones
// on a stream Kitsune opened while it waited for that block, so opening
// one is off the block's path; once the peer is quiet the stream is let go.
// A receiver that closes first (Helia), whose clock runs from a stream's
// opening, never gets one ahead.
func TestReplyStreamOpenedAhead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		read  readReply
		ahead bool
	}{
		{"boxo", readLikeBoxo, true},
		{"helia", readLikeHelia, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			var blks []blocks.Block
			for range 3 {
				blks = append(blks, makeBlock(t, 1<<10))
			}
			e.addServerNode(0, blks...)
			var mu sync.Mutex
			var opened []time.Time // when each reply stream the receiver took was opened
			r := newReceiver(t, e, tcpAddr(t, e.front), func(s network.Stream) ([]bsmsg.BitSwapMessage, error) {
				mu.Lock()
				opened = append(opened, s.Stat().Opened)
				mu.Unlock()
				return tc.read(s)
			})
			// The first message probes the receiver's kind; the second
			// goes once it is known.
			r.want(t, e.front.ID(), blks[:1])
			r.waitAll(t, e, 1, 10*time.Second)
			eventually(t, 5*time.Second, func() string { return "the probe ended: " + e.describe() },
				func() bool { return e.relay.Stats().ReplyStreams == 0 })
			r.want(t, e.front.ID(), blks[1:2])
			r.waitAll(t, e, 2, 10*time.Second)
			if !tc.ahead {
				eventually(t, 5*time.Second, func() string { return "reply streams done: " + e.describe() },
					func() bool { return e.relay.Stats().ReplyStreams == 0 })
				if n := openReplyStreams(e, r.h.ID()); n != 0 {
					t.Fatalf("%d reply streams opened ahead for a receiver that closes first", n)
				}
				return
			}
			eventually(t, 5*time.Second, func() string {
				return fmt.Sprintf("%d streams opened ahead: %s", openReplyStreams(e, r.h.ID()), e.describe())
			}, func() bool { return e.relay.Stats().ReplyStreams == 0 && openReplyStreams(e, r.h.ID()) == 1 })
			before := time.Now()
			r.want(t, e.front.ID(), blks[2:])
			r.waitAll(t, e, 3, 10*time.Second)
			mu.Lock()
			last := opened[len(opened)-1]
			mu.Unlock()
			if !last.Before(before) {
				t.Errorf("the third block came on a stream opened %v after it was wanted, not on the one opened ahead", last.Sub(before))
			}
			// Quiet for writerLinger: nothing left open.
			eventually(t, writerLinger+5*time.Second, func() string {
				return fmt.Sprintf("%d streams still open ahead: %s", openReplyStreams(e, r.h.ID()), e.describe())
			}, func() bool { return openReplyStreams(e, r.h.ID()) == 0 })
			if _, most, aborted := r.counts(); most != 1 || aborted != 0 {
				t.Errorf("a block came %d times; %d streams cut off", most, aborted)
			}
			if got := e.relay.Counters().RepliesCutOff.Load(); got != 0 {
				t.Errorf("%d replies taken for cut off", got)
			}
		})
	}
}
