package gateway

import (
	"context"
	"net/http"
	"strings"
	"sync"

	"github.com/ipfs/boxo/ipld/merkledag"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
)

// A CAR is written as boxo walks the DAG, one block at a time, so every
// block cost a full round trip through the relay to a node before the
// next was asked for (about 0.35 of a Kubo node's own gateway for 64 MiB
// on loopback). A CAR request therefore gets a prefetch window: when a
// dag-pb node arrives, its links are the next blocks the walk will want
// (depth first), and up to window of them are fetched ahead. Everything
// lives in the request: it ends, and its fetches and blocks go with it.

// DefaultPrefetch is the blocks a CAR request fetches ahead.
const DefaultPrefetch = 16

// maxPlanned bounds the links remembered ahead of the walk.
const maxPlanned = 4096

type prefetchKey struct{}

// prefetch is one CAR request's window.
type prefetch struct {
	f      Fetcher
	ctx    context.Context // the request's
	window int

	mu      sync.Mutex
	planned []cid.Cid // links not yet fetched, in walk order
	slots   map[cid.Cid]*slot
}

type slot struct {
	done chan struct{}
	blk  blocks.Block
	err  error
}

func withPrefetch(ctx context.Context, f Fetcher, window int) context.Context {
	return context.WithValue(ctx, prefetchKey{}, &prefetch{f: f, ctx: ctx, window: window, slots: make(map[cid.Cid]*slot)})
}

func prefetchFrom(ctx context.Context) *prefetch {
	p, _ := ctx.Value(prefetchKey{}).(*prefetch)
	return p
}

// wantsCAR tells a CAR request from the others (a raw block request must
// not make the fleet fetch the block's children).
func wantsCAR(r *http.Request) bool {
	if r.URL.Query().Get("format") == "car" {
		return r.URL.Query().Get("dag-scope") != "block"
	}
	return strings.Contains(r.Header.Get("Accept"), "application/vnd.ipld.car")
}

// get returns c's block, from the window when it was fetched ahead.
func (p *prefetch) get(ctx context.Context, c cid.Cid, one func(context.Context, cid.Cid) (blocks.Block, error)) (blocks.Block, error) {
	p.mu.Lock()
	s := p.slots[c]
	delete(p.slots, c)
	if s == nil && len(p.planned) > 0 && p.planned[0] == c {
		p.planned = p.planned[1:] // asked for before it was fetched ahead
	}
	p.mu.Unlock()
	var blk blocks.Block
	var err error
	if s != nil {
		select {
		case <-s.done:
			blk, err = s.blk, s.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if s == nil || err != nil {
		blk, err = one(ctx, c)
	}
	if err != nil {
		return nil, err
	}
	p.learn(blk)
	p.topUp(one)
	return blk, nil
}

// learn puts a dag-pb node's links first in line: the walk goes to them
// before the node's later siblings.
func (p *prefetch) learn(b blocks.Block) {
	if b.Cid().Prefix().Codec != cid.DagProtobuf {
		return
	}
	n, err := merkledag.DecodeProtobuf(b.RawData())
	if err != nil || len(n.Links()) == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	links := make([]cid.Cid, 0, len(n.Links())+len(p.planned))
	for _, l := range n.Links() {
		links = append(links, l.Cid)
	}
	p.planned = append(links, p.planned...)
	if len(p.planned) > maxPlanned {
		p.planned = p.planned[:maxPlanned]
	}
}

// topUp starts fetches until window blocks are in flight or waiting.
func (p *prefetch) topUp(one func(context.Context, cid.Cid) (blocks.Block, error)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(p.slots) < p.window && len(p.planned) > 0 && p.ctx.Err() == nil {
		c := p.planned[0]
		p.planned = p.planned[1:]
		if _, ok := p.slots[c]; ok {
			continue
		}
		s := &slot{done: make(chan struct{})}
		p.slots[c] = s
		go func() {
			s.blk, s.err = one(p.ctx, c)
			close(s.done)
		}()
	}
}

// pending is the blocks in flight or waiting, for tests.
func (p *prefetch) pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.slots)
}
