package bitswap

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnetiface "github.com/ipfs/boxo/bitswap/network"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
)

// slowReader hands out at most chunk bytes per tick: a peer on a slow link.
type slowReader struct {
	r     io.Reader
	chunk int
	tick  time.Duration
}

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.tick)
	if len(p) > s.chunk {
		p = p[:s.chunk]
	}
	return s.r.Read(p)
}

// An upstream peer that reads slower than the fleet delivers does not make
// Kitsune buffer without bound: blocks past the peer's buffer are set
// aside (only their CIDs kept) and fetched again once it caught up, and in
// the end the peer gets every block.
func TestSlowPeerIsBufferedWithinBudget(t *testing.T) {
	const budget = 128 << 10
	e := newEnv(t, Config{PeerBufferBytes: budget})
	var blks []blocks.Block
	for range 40 {
		blks = append(blks, makeBlock(t, 16<<10))
	}
	e.addServerNode(0, blks...)

	// The slow peer reads its bitswap streams itself, 8 KiB per 10 ms.
	h := newHost(t)
	var mu sync.Mutex
	got := make(map[cid.Cid]bool)
	for _, proto := range []string{"/ipfs/bitswap/1.2.0", "/ipfs/bitswap/1.1.0", "/ipfs/bitswap/1.0.0", "/ipfs/bitswap"} {
		h.SetStreamHandler(protocol.ID(proto), func(s network.Stream) {
			defer s.Close()
			r := msgio.NewVarintReaderSize(slowReader{s, 8 << 10, 10 * time.Millisecond}, network.MessageSizeMax)
			for {
				m, _, err := bsmsg.FromMsgReader(r)
				if err != nil {
					return
				}
				mu.Lock()
				for _, b := range m.Blocks() {
					got[b.Cid()] = true
				}
				mu.Unlock()
			}
		})
	}
	connect(t, h, e.front)
	net := bsnet.NewFromIpfsHost(h)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sender, err := net.NewMessageSender(ctx, e.front.ID(), &bsnetiface.MessageSenderOpts{MaxRetries: 3})
	if err != nil {
		t.Fatal(err)
	}
	msg := bsmsg.New(false)
	for _, b := range blks {
		msg.AddEntry(b.Cid(), 1, pb.Message_Wantlist_Block, true)
	}
	if err := sender.SendMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}

	eventually(t, 30*time.Second, func() string { return "every block at the slow peer: " + e.describe() }, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == len(blks)
	})
	c := e.relay.Counters()
	if c.Deferred.Load()+c.HeldWants.Load() == 0 {
		t.Fatal("640 KiB for a slow peer with a 128 KiB buffer, yet nothing was held back or deferred")
	}
	t.Logf("held back %d wants, deferred %d blocks, forwarded %d wants for %d blocks",
		c.HeldWants.Load(), c.Deferred.Load(), c.WantsForwarded.Load(), len(blks))
	e.waitIdle()
}
