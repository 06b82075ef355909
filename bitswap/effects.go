package bitswap

import (
	"context"
	"time"

	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
)

// shellFx carries out the core's effects; called with r.mu held.
type shellFx struct{ r *Relay }

func (f shellFx) want(node peer.ID, c cid.Cid, t pb.Message_Wantlist_WantType, prio int32) {
	f.r.nodeOutLocked(node).want(f.r.ctx, c, t, prio)
}

func (f shellFx) cancel(node peer.ID, c cid.Cid) {
	f.r.nodeOutLocked(node).cancel(f.r.ctx, c)
}

func (f shellFx) block(to peer.ID, b blocks.Block) {
	if l := f.r.locals[to]; l != nil {
		if l.block(b) {
			f.r.counters.LocalBlocks.Add(1)
			f.r.counters.LocalBytes.Add(uint64(len(b.RawData())))
		}
		return
	}
	f.r.outLocked(to).reply.addBlock(b)
}

func (f shellFx) presence(to peer.ID, c cid.Cid, t pb.Message_BlockPresenceType) {
	if l := f.r.locals[to]; l != nil {
		if t == pb.Message_DontHave {
			l.dontHave(c)
		}
		return
	}
	f.r.outLocked(to).reply.addPresence(c, t)
}

func (f shellFx) backlogged(to peer.ID) bool {
	if l := f.r.locals[to]; l != nil {
		return l.full()
	}
	o := f.r.outs[to]
	return o != nil && o.reply.full()
}

func (f shellFx) queued(to peer.ID) int {
	if l := f.r.locals[to]; l != nil {
		return l.bytes
	}
	if o := f.r.outs[to]; o != nil {
		return o.reply.queued()
	}
	return 0
}

func (f shellFx) replyBudget(to peer.ID, perPeer int) int {
	if f.r.locals[to] != nil {
		return perPeer // a local fetch's blocks are its own (fetch.go)
	}
	return f.r.replyMem.budget(perPeer)
}

func (f shellFx) protect(p peer.ID, on bool) {
	if f.r.locals[p] != nil {
		return // no connection to keep
	}
	if on {
		f.r.front.Protect(p, wantsTag)
	} else {
		f.r.front.Unprotect(p, wantsTag)
	}
}

// fetch runs a miss fetch through the node's RPC API, bounded by
// MissFetchTimeout, and reports its end to the core.
func (f shellFx) fetch(id uint64, node peer.ID, c cid.Cid) {
	r := f.r
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.MissFetchTimeout)
	r.fetches[id] = cancel
	go func() {
		err := r.down.Fetch(ctx, node, c)
		cancel()
		if err != nil {
			r.log.Debug("miss fetch failed", zap.Stringer("cid", c), zap.Stringer("node", node), zap.Error(err))
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.fetches, id)
		r.core.fetchDone(id, node, c, err == nil, time.Now())
	}()
}

func (f shellFx) stopFetch(id uint64) {
	if cancel := f.r.fetches[id]; cancel != nil {
		cancel()
		delete(f.r.fetches, id)
	}
}

// The reverse sessions' effects (reverseOut).

func (f shellFx) wantUpstream(p peer.ID, c cid.Cid, t pb.Message_Wantlist_WantType) {
	o := f.r.outLocked(p)
	if o.reverse == nil {
		o.reverse = newWantOutbox(p, f.r.front, f.r.log)
	}
	o.reverse.want(f.r.ctx, c, t, 0)
}

func (f shellFx) cancelUpstream(p peer.ID, c cid.Cid) {
	if o := f.r.outs[p]; o != nil && o.reverse != nil {
		o.reverse.cancel(f.r.ctx, c)
	}
}

func (f shellFx) dontHaveNode(node peer.ID, cs []cid.Cid) {
	f.r.nodeOutLocked(node).dontHave(f.r.ctx, cs)
}

func (f shellFx) blockNode(node peer.ID, b blocks.Block) {
	f.r.nodeOutLocked(node).block(f.r.ctx, b)
}
