package bitswap

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-msgio"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// slowLink puts a testkit.SlowLink of rate bytes a second in front of a
// host's TCP address.
func slowLink(t *testing.T, h host.Host, rate int) ma.Multiaddr {
	t.Helper()
	target, err := manet.ToNetAddr(tcpAddr(t, h))
	if err != nil {
		t.Fatal(err)
	}
	a, err := manet.FromNetAddr(testkit.SlowLink(t, target.String(), rate))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// receiver is an upstream peer whose Bitswap stream handler the test
// writes: how it closes or resets each reply stream is the point.
type receiver struct {
	h       host.Host
	mu      sync.Mutex
	got     map[cid.Cid]int
	aborted int
}

// readReply is one way of taking a reply stream: it returns the messages
// read, and an error if it cut the stream off.
type readReply func(s network.Stream) ([]bsmsg.BitSwapMessage, error)

// newReceiver connects a receiver to the relay's front host at addr.
func newReceiver(t *testing.T, e *env, addr ma.Multiaddr, read readReply) *receiver {
	t.Helper()
	r := &receiver{h: newHost(t), got: make(map[cid.Cid]int)}
	for _, proto := range replyProtocols() {
		r.h.SetStreamHandler(proto, func(s network.Stream) {
			msgs, err := read(s)
			r.mu.Lock()
			defer r.mu.Unlock()
			if err != nil {
				r.aborted++
			}
			for _, m := range msgs {
				for _, b := range m.Blocks() {
					r.got[b.Cid()]++
				}
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.h.Connect(ctx, peer.AddrInfo{ID: e.front.ID(), Addrs: []ma.Multiaddr{addr}}); err != nil {
		t.Fatal(err)
	}
	return r
}

// want asks the relay for blks, each once, as Helia does.
func (r *receiver) want(t *testing.T, to peer.ID, blks []blocks.Block) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sender, err := bsnet.NewFromIpfsHost(r.h).NewMessageSender(ctx, to, &bsnetiface.MessageSenderOpts{MaxRetries: 3})
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
}

// counts returns the distinct blocks received, the most times one came,
// and the streams the receiver cut off.
func (r *receiver) counts() (distinct, most, aborted int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.got {
		most = max(most, n)
	}
	return len(r.got), most, r.aborted
}

// waitAll waits until the receiver has n distinct blocks.
func (r *receiver) waitAll(t *testing.T, e *env, n int, within time.Duration) {
	t.Helper()
	eventually(t, within, func() string {
		got, _, _ := r.counts()
		return fmt.Sprintf("got %d of %d blocks: %s", got, n, e.describe())
	}, func() bool {
		got, _, _ := r.counts()
		return got == n
	})
}

// readWithin reads one message, which must be complete within d (as Helia
// wants within 10 s), then closes; a late or broken message is reset.
func readWithin(d time.Duration) readReply {
	return func(s network.Stream) ([]bsmsg.BitSwapMessage, error) {
		_ = s.SetReadDeadline(time.Now().Add(d))
		m, _, err := bsmsg.FromMsgReader(msgio.NewVarintReaderSize(s, network.MessageSizeMax))
		if err != nil {
			_ = s.Reset()
			return nil, err
		}
		_ = s.Close()
		return []bsmsg.BitSwapMessage{m}, nil
	}
}

// readLikeHelia closes its writable end first, then reads messages until
// the sender's EOF, as @helia/bitswap 4.0.19's Network._onStream does.
func readLikeHelia(s network.Stream) ([]bsmsg.BitSwapMessage, error) {
	_ = s.CloseWrite()
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := msgio.NewVarintReaderSize(s, network.MessageSizeMax)
	var msgs []bsmsg.BitSwapMessage
	for {
		m, _, err := bsmsg.FromMsgReader(r)
		if errors.Is(err, io.EOF) {
			return msgs, nil
		}
		if err != nil {
			_ = s.Reset()
			return msgs, err
		}
		msgs = append(msgs, m)
	}
}

// readNeverClose reads one message and leaves the stream as it is.
func readNeverClose(s network.Stream) ([]bsmsg.BitSwapMessage, error) {
	m, _, err := bsmsg.FromMsgReader(msgio.NewVarintReaderSize(s, network.MessageSizeMax))
	if err != nil {
		return nil, nil
	}
	return []bsmsg.BitSwapMessage{m}, nil
}

func tcpAddr(t *testing.T, h host.Host) ma.Multiaddr {
	t.Helper()
	for _, a := range h.Addrs() {
		if _, err := a.ValueForProtocol(ma.P_TCP); err == nil {
			return a
		}
	}
	t.Fatal("no TCP address")
	return nil
}

// Hole 3, on a throttled link: a client that drops any message not fully
// arrived within its deadline (Helia: 10 s; here 2 s over a 256 KB/s link,
// the same ratio as 10 s at about 50 KB/s) still gets every block, because
// reply messages follow its rate and one cut off is sent again. Before,
// 1 MiB messages took 4 s to arrive and were lost for good.
func TestSlowLinkClientGetsEveryBlock(t *testing.T) {
	const (
		rate     = 256 << 10
		deadline = 2 * time.Second
	)
	e := newEnv(t, Config{}, func(r *Relay) { r.replyWindow = deadline / 4 })
	var blks []blocks.Block
	for range 24 {
		blks = append(blks, makeBlock(t, 64<<10))
	}
	e.addServerNode(0, blks...)

	r := newReceiver(t, e, slowLink(t, e.front, rate), readWithin(deadline))
	start := time.Now()
	r.want(t, e.front.ID(), blks)
	r.waitAll(t, e, len(blks), 45*time.Second)
	_, most, aborted := r.counts()
	t.Logf("%d blocks of 64 KiB in %v over a %d KB/s link; %d messages cut off by the client's %v deadline; a block came at most %d times",
		len(blks), time.Since(start).Round(time.Millisecond), rate>>10, aborted, deadline, most)
	if got := e.relay.Counters().RepliesCutOff.Load(); got != uint64(aborted) {
		t.Errorf("the client cut off %d messages, the relay saw %d", aborted, got)
	}
	e.waitIdle()
}

// Over a slow link a peer's wants are all answered from the fleet long
// before their blocks reach it: the blocks wait in its outbox and in the
// messages being written. InFlight, what a graceful stop waits for,
// counts them, so a drain does not close on them; it counted only wants
// before, and read 0 here.
func TestInFlightCountsRepliesOnTheirWay(t *testing.T) {
	const rate = 256 << 10 // 1 MiB takes about 4 s
	e := newEnv(t, Config{})
	var blks []blocks.Block
	for range 16 {
		blks = append(blks, makeBlock(t, 64<<10))
	}
	e.addServerNode(0, blks...)
	r := newReceiver(t, e, slowLink(t, e.front, rate), readWithin(10*time.Second))
	r.want(t, e.front.ID(), blks)
	var answered Stats
	eventually(t, 10*time.Second, func() string { return "every want answered: " + e.describe() }, func() bool {
		answered = e.stats()
		return answered.Wants == 0 && answered.ReplyBytes > 0
	})
	got, _, _ := r.counts()
	if answered.InFlight() == 0 || got == len(blks) {
		t.Fatalf("every want answered with %d of %d blocks delivered, %d bytes of replies on their way: InFlight %d (stats %+v)",
			got, len(blks), answered.ReplyBytes, answered.InFlight(), answered)
	}
	r.waitAll(t, e, len(blks), 30*time.Second)
	e.waitIdle()
	if s := e.stats(); s.InFlight() != 0 {
		t.Errorf("every block delivered and settled, InFlight %d (stats %+v)", s.InFlight(), s)
	}
}

// A receiver that closes its side before reading (Helia) or after (boxo)
// gets every block once, and Kitsune counts no message cut off: a normal
// close is never taken for a failure.
func TestReplyReceiversCloseNormally(t *testing.T) {
	for _, tc := range []struct {
		name string
		read readReply
	}{
		{"boxo", readWithin(10 * time.Second)},
		{"helia", readLikeHelia},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, Config{})
			// 3 MiB: several messages, all in one from the node (under
			// its 4 MiB message limit).
			var blks []blocks.Block
			for range 48 {
				blks = append(blks, makeBlock(t, 64<<10))
			}
			e.addServerNode(0, blks...)
			r := newReceiver(t, e, tcpAddr(t, e.front), tc.read)
			r.want(t, e.front.ID(), blks)
			r.waitAll(t, e, len(blks), 20*time.Second)
			e.waitIdle()
			if _, most, aborted := r.counts(); most != 1 || aborted != 0 {
				t.Errorf("a block came %d times; %d streams cut off", most, aborted)
			}
			if got := e.relay.Counters().RepliesCutOff.Load(); got != 0 {
				t.Errorf("%d replies taken for cut off", got)
			}
			if got := e.relay.Counters().BlocksOut.Load(); got != uint64(len(blks)) {
				t.Errorf("BlocksOut=%d, want %d", got, len(blks))
			}
		})
	}
}

// A receiver that never closes its reply streams does not hold Kitsune's
// memory: at most maxRepliesInFlight streams wait, each for replyAckWait,
// then they are let go and counted delivered.
func TestReplyWaitBoundedForSilentReceiver(t *testing.T) {
	e := newEnv(t, Config{}, func(r *Relay) {
		r.replyAckWait = 500 * time.Millisecond
		r.replyWindow = time.Millisecond // one block a message: several out at once
	})
	var blks []blocks.Block
	for range 16 {
		blks = append(blks, makeBlock(t, 64<<10))
	}
	e.addServerNode(0, blks...)
	r := newReceiver(t, e, tcpAddr(t, e.front), readNeverClose)
	r.want(t, e.front.ID(), blks)
	most := 0
	eventually(t, 20*time.Second, func() string {
		n, _, _ := r.counts()
		return fmt.Sprintf("got %d of %d: %s", n, len(blks), e.describe())
	}, func() bool {
		most = max(most, e.relay.Stats().ReplyStreams)
		n, _, _ := r.counts()
		return n == len(blks)
	})
	if most > maxRepliesInFlight {
		t.Errorf("%d reply streams out at once, at most %d allowed", most, maxRepliesInFlight)
	}
	e.waitIdle() // every stream let go, though the receiver never closed one
	if got := e.relay.Counters().BlocksOut.Load(); got != uint64(len(blks)) {
		t.Errorf("BlocksOut=%d, want %d", got, len(blks))
	}
}

// A peer that leaves takes its outbox and the reply streams waiting on it
// with it at once, not after replyAckWait.
func TestReplyStreamsGoWithPeer(t *testing.T) {
	e := newEnv(t, Config{})
	var blks []blocks.Block
	for range 8 {
		blks = append(blks, makeBlock(t, 64<<10))
	}
	e.addServerNode(0, blks...)
	r := newReceiver(t, e, tcpAddr(t, e.front), readNeverClose)
	r.want(t, e.front.ID(), blks)
	eventually(t, 10*time.Second, func() string { return "reply streams waiting: " + e.describe() }, func() bool {
		n, _, _ := r.counts()
		s := e.relay.Stats()
		return n > 0 && s.ReplyStreams > 0 && s.ReplyBytes > 0
	})
	_ = r.h.Close()
	// Well under replyAckWait (15 s).
	eventually(t, 5*time.Second, func() string { return "no outbox left: " + e.describe() }, func() bool {
		s := e.relay.Stats()
		return s.ReplyPeers == 0 && s.ReplyBytes == 0 && s.ReplyStreams == 0
	})
	if replyAckWait <= 5*time.Second {
		t.Fatalf("replyAckWait %v: this test needs it longer than its wait", replyAckWait)
	}
}

// Hole 3 at the wire: a reply stream the receiver resets is seen as cut
// off, and its blocks come again, each once in the end. Before, the
// message was gone once written.
func TestCutOffReplySentAgain(t *testing.T) {
	e := newEnv(t, Config{})
	var blks []blocks.Block
	for range 8 {
		blks = append(blks, makeBlock(t, 64<<10))
	}
	e.addServerNode(0, blks...)
	var mu sync.Mutex
	cut := 0
	r := newReceiver(t, e, tcpAddr(t, e.front), func(s network.Stream) ([]bsmsg.BitSwapMessage, error) {
		mu.Lock()
		first := cut < 2
		if first {
			cut++
		}
		mu.Unlock()
		if first {
			_ = s.Reset()
			return nil, errors.New("cut off")
		}
		return readWithin(10 * time.Second)(s)
	})
	r.want(t, e.front.ID(), blks)
	r.waitAll(t, e, len(blks), 20*time.Second)
	e.waitIdle()
	if _, most, _ := r.counts(); most != 1 {
		t.Errorf("a block came %d times", most)
	}
	c := e.relay.Counters()
	if got := c.RepliesCutOff.Load(); got != 2 {
		t.Errorf("RepliesCutOff=%d, want 2", got)
	}
	if got := c.BlocksOut.Load(); got != uint64(len(blks)) {
		t.Errorf("BlocksOut=%d, want %d", got, len(blks))
	}
}
