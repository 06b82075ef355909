package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	bsnetwork "github.com/ipfs/boxo/bitswap/network"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// wireClient asks for one block per Bitswap message and waits for it, on
// boxo's Bitswap network and message packages without boxo's client on
// top. The client batches what it sends to a peer: after a message it
// sends the next one no sooner than 20 ms later (messagequeue's
// minSendMessageDelay), so a sequential fetch with it takes about 20 ms per
// block on every path and hides the tenths of a millisecond a proxy adds.
// Scenario 2 measures with this instead, and with the boxo client only
// for what an application sees.
type wireClient struct {
	h      host.Host
	net    bsnetwork.BitSwapNetwork
	target peer.ID
	sender bsnetwork.MessageSender

	mu      sync.Mutex
	waiting map[cid.Cid]chan wireAnswer
}

type wireAnswer struct {
	block    blocks.Block
	dontHave bool
}

func newWireClient(ctx context.Context, target peer.AddrInfo) (*wireClient, error) {
	h, err := plainHost()
	if err != nil {
		return nil, err
	}
	w := &wireClient{h: h, net: bsnet.NewFromIpfsHost(h), target: target.ID, waiting: map[cid.Cid]chan wireAnswer{}}
	w.net.Start(w)
	if err := h.Connect(ctx, target); err != nil {
		w.close()
		return nil, fmt.Errorf("connecting to %s: %w", target.ID, err)
	}
	if w.sender, err = w.net.NewMessageSender(ctx, target.ID, &bsnetwork.MessageSenderOpts{MaxRetries: 1, SendTimeout: 10 * time.Second, SendErrorBackoff: 100 * time.Millisecond}); err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

func (w *wireClient) close() {
	if w.sender != nil {
		_ = w.sender.Reset()
	}
	w.net.Stop()
	_ = w.h.Close()
}

// get sends a want-block (DONT_HAVE asked for) and returns the block; a
// cancel follows the answer, as a real client sends one, outside the
// measured time.
func (w *wireClient) get(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	ch := make(chan wireAnswer, 1)
	w.mu.Lock()
	w.waiting[c] = ch
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		delete(w.waiting, c)
		w.mu.Unlock()
	}()
	msg := bsmsg.New(false)
	msg.AddEntry(c, 1, pb.Message_Wantlist_Block, true)
	if err := w.sender.SendMsg(ctx, msg); err != nil {
		return nil, err
	}
	select {
	case a := <-ch:
		if a.dontHave {
			return nil, errors.New("DONT_HAVE")
		}
		return a.block, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (w *wireClient) cancel(ctx context.Context, c cid.Cid) error {
	msg := bsmsg.New(false)
	msg.Cancel(c)
	return w.sender.SendMsg(ctx, msg)
}

func (w *wireClient) ReceiveMessage(_ context.Context, _ peer.ID, m bsmsg.BitSwapMessage) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range m.Blocks() {
		if ch, ok := w.waiting[b.Cid()]; ok {
			select {
			case ch <- wireAnswer{block: b}:
			default:
			}
		}
	}
	for _, c := range m.DontHaves() {
		if ch, ok := w.waiting[c]; ok {
			select {
			case ch <- wireAnswer{dontHave: true}:
			default:
			}
		}
	}
}

func (w *wireClient) ReceiveError(error)       {}
func (w *wireClient) PeerConnected(peer.ID)    {}
func (w *wireClient) PeerDisconnected(peer.ID) {}
