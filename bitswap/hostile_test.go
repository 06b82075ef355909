package bitswap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnetiface "github.com/ipfs/boxo/bitswap/network"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
)

const bitswap120 = "/ipfs/bitswap/1.2.0"

// heapBytes is the live heap after a full collection.
func heapBytes() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// pbField encodes one length-delimited protobuf field.
func pbField(field int, b []byte) []byte {
	out := binary.AppendUvarint(nil, uint64(field<<3|2))
	out = binary.AppendUvarint(out, uint64(len(b)))
	return append(out, b...)
}

// frame prefixes msg with its length, as Bitswap streams carry messages.
func frame(msg []byte) []byte {
	return append(binary.AppendUvarint(nil, uint64(len(msg))), msg...)
}

// A peer that opens stream after stream and announces a maximal message on
// each, then sends nothing more, costs Kitsune only what it sent. bsnet's
// reader allocated the announced 4 MiB per stream up front: 256 streams
// held a gigabyte.
func TestStreamFloodDoesNotPinMemory(t *testing.T) {
	const streams = 256
	const ceiling = 24 << 20
	e := newEnv(t, Config{})
	blk := makeBlock(t, 8<<10)
	e.addServerNode(0, blk)
	h := newHost(t)
	connect(t, h, e.front)
	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()

	before := heapBytes()
	prefix := binary.AppendUvarint(nil, network.MessageSizeMax)
	var open []network.Stream
	for range streams {
		s, err := h.NewStream(ctx, e.front.ID(), bitswap120)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(append(prefix, 0x0a, 0x00)); err != nil {
			t.Fatal(err)
		}
		open = append(open, s)
	}
	// Every stream reached the handler and sits in its read.
	time.Sleep(500 * time.Millisecond)
	grew := int64(heapBytes()) - int64(before)
	t.Logf("%d streams announcing %d bytes each: heap grew %.1f MiB (ceiling %d MiB)", streams, network.MessageSizeMax, float64(grew)/(1<<20), ceiling>>20)
	if grew > ceiling {
		t.Fatalf("heap grew %.1f MiB for %d stalled streams, over the %d MiB ceiling", float64(grew)/(1<<20), streams, ceiling>>20)
	}

	// Other peers are served meanwhile.
	f := e.newFetcher()
	got, err := f.fetch(ctx, []cid.Cid{blk.Cid()})
	if err != nil || string(got[blk.Cid()]) != string(blk.RawData()) {
		t.Fatalf("fetch beside the flood: %v", err)
	}
	for _, s := range open {
		_ = s.Reset()
	}
}

// A complete message still arrives whole when its bytes trickle in, and a
// stream that ends in the middle of one is dropped without a message.
func TestGuardedStreamReassemblesSlowMessages(t *testing.T) {
	e := newEnv(t, Config{})
	blk := makeBlock(t, 300<<10) // spans many reads and buffer growths
	n := e.addServerNode(0)
	p := e.newRawPeer()
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()

	// A want-block for blk, written a few bytes at a time on a new stream.
	entry := pbField(1, blk.Cid().Bytes())
	entry = append(entry, 0x28, 0x01) // sendDontHave
	msg := pbField(1, pbField(1, entry))
	// And a large block payload in the same message: the reader must cope
	// with a body far larger than its first buffer.
	prefix := blk.Cid().Prefix().Bytes()
	msg = append(msg, pbField(3, append(pbField(1, prefix), pbField(2, blk.RawData())...))...)
	s, err := p.h.NewStream(ctx, e.front.ID(), bitswap120)
	if err != nil {
		t.Fatal(err)
	}
	data := frame(msg)
	for len(data) > 0 {
		k := min(len(data), 7919)
		if _, err := s.Write(data[:k]); err != nil {
			t.Fatal(err)
		}
		data = data[k:]
		time.Sleep(time.Millisecond)
	}
	eventually(t, 5*time.Second, func() string { return "the trickled want to reach the node: " + e.describe() }, func() bool {
		return n.wlog.wanted(blk.Cid()) == 1
	})
	// The node says DONT_HAVE, the only node: the peer hears DONT_HAVE.
	eventually(t, 5*time.Second, func() string { return "DONT_HAVE to the peer" }, func() bool {
		return p.got.dontHave(blk.Cid()) == 1
	})
	_ = s.Close()
	p.cancel(blk.Cid())

	// Half a message, then the end of the stream: nothing is delivered.
	before := e.relay.Counters().WantsReceived.Load()
	s2, err := p.h.NewStream(ctx, e.front.ID(), bitswap120)
	if err != nil {
		t.Fatal(err)
	}
	other := missingCid(t)
	half := frame(pbField(1, pbField(1, pbField(1, other.Bytes()))))
	if _, err := s2.Write(half[:len(half)-3]); err != nil {
		t.Fatal(err)
	}
	_ = s2.CloseWrite()
	expectReset(t, s2)
	if got := e.relay.Counters().WantsReceived.Load(); got != before {
		t.Fatalf("a truncated message delivered %d wants", got-before)
	}
	e.waitIdle()
}

// expectReset waits for the far end to reset s, which is how bsnet ends a
// stream it could not read a message from.
func expectReset(t *testing.T, s network.Stream) {
	t.Helper()
	_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
	var buf [64]byte
	for {
		_, err := s.Read(buf[:])
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatal("the stream was not reset within 5s")
		}
		if !errors.Is(err, network.ErrReset) {
			t.Fatalf("the stream ended with %v, not a reset", err)
		}
		return
	}
}

// A malformed message closes only the stream it came on: the same peer is
// still served on its other stream and on a new one, and other peers are
// served throughout.
func TestMalformedMessageClosesOnlyItsStream(t *testing.T) {
	e := newEnv(t, Config{})
	var blks []blocks.Block
	for range 8 {
		blks = append(blks, makeBlock(t, 2048))
	}
	e.addServerNode(0, blks...)
	p := e.newRawPeer() // its sender stream is open from here on
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()

	garbage := map[string][]byte{
		"not protobuf":          frame([]byte{0xff, 0xff, 0xff, 0xff, 0x0f, 0x01}),
		"bad CID in a wantlist": frame(pbField(1, pbField(1, pbField(1, []byte("not a cid"))))),
		"bad block prefix":      frame(pbField(3, append(pbField(1, []byte{0x01, 0xff}), pbField(2, []byte("data"))...))),
		"bad presence CID":      frame(pbField(4, pbField(1, []byte{0x12}))),
		"over 4 MiB announced":  append(binary.AppendUvarint(nil, network.MessageSizeMax+1), 0x0a),
		"varint overflow":       {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
	}
	i := 0
	for name, data := range garbage {
		t.Run(name, func(t *testing.T) {
			s, err := p.h.NewStream(ctx, e.front.ID(), bitswap120)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Write(data); err != nil {
				t.Fatal(err)
			}
			expectReset(t, s)
			if p.h.Network().Connectedness(e.front.ID()) != network.Connected {
				t.Fatal("the connection went with the stream")
			}
			// The peer's long-lived stream still works ...
			b := blks[i]
			i++
			p.wantBlock(b.Cid())
			eventually(t, 5*time.Second, func() string { return "the block on the old stream: " + e.describe() }, func() bool {
				_, n := p.got.block(b.Cid())
				return n == 1
			})
		})
	}
	// ... and so does a new one, and another peer.
	sender, err := p.net.NewMessageSender(ctx, e.front.ID(), &bsnetiface.MessageSenderOpts{MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	b := blks[len(blks)-1]
	msg := bsmsg.New(false)
	msg.AddEntry(b.Cid(), 1, pb.Message_Wantlist_Block, true)
	if err := sender.SendMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string { return "the block asked on a new stream" }, func() bool {
		_, n := p.got.block(b.Cid())
		return n == 1
	})
	q := e.newFetcher()
	if _, err := q.fetch(ctx, []cid.Cid{blks[0].Cid(), blks[1].Cid()}); err != nil {
		t.Fatalf("another peer: %v", err)
	}
	e.waitIdle()
}

// deafNet is a front network whose receivers never hear PeerDisconnected:
// what bsnet's connect-event manager does for a peer that connects, sends
// and leaves before its worker ran (it coalesces connected+disconnected
// into nothing).
type deafNet struct{ bsnetiface.BitSwapNetwork }

func (n deafNet) Start(rs ...bsnetiface.Receiver) {
	wrapped := make([]bsnetiface.Receiver, len(rs))
	for i, r := range rs {
		wrapped[i] = deafReceiver{r}
	}
	n.BitSwapNetwork.Start(wrapped...)
}

type deafReceiver struct{ bsnetiface.Receiver }

func (deafReceiver) PeerDisconnected(peer.ID) {}

// A peer whose disconnect bsnet never reports still leaves the relay's
// tables: a 20,000-peer churn soak left 2 peers and their wants behind for
// good, because bsnet's event manager had coalesced their connect and
// disconnect.
func TestPeerGoneWithoutBsnetEvent(t *testing.T) {
	front, back := newHost(t), newHost(t)
	down := newStaticDown()
	r := New(Config{}, deafNet{bsnet.NewFromIpfsHost(GuardStreams(front))}, bsnet.NewFromIpfsHost(back), down, zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Start(ctx)
	t.Cleanup(func() { _ = r.Close(context.Background()) })

	h := newHost(t)
	connect(t, h, front)
	net := bsnet.NewFromIpfsHost(h)
	s, err := net.NewMessageSender(ctx, front.ID(), &bsnetiface.MessageSenderOpts{MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	m := bsmsg.New(false)
	m.AddEntry(missingCid(t), 1, pb.Message_Wantlist_Block, true)
	if err := s.SendMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() string { return fmt.Sprintf("the want in the table: %+v", r.Stats()) }, func() bool {
		return r.Stats().Wants == 1
	})
	_ = h.Close()
	eventually(t, 5*time.Second, func() string { return fmt.Sprintf("the departed peer gone from the tables: %+v", r.Stats()) }, func() bool {
		st := r.Stats()
		return st.Peers == 0 && st.Wants == 0
	})
}
