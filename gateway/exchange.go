package gateway

import (
	"context"
	"errors"

	"github.com/ipfs/boxo/exchange"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"

	"github.com/kitsune-lb/kitsune/bitswap"
)

// Fetcher asks the fleet for blocks (bitswap.Relay).
type Fetcher interface {
	Fetch(ctx context.Context, cids ...cid.Cid) (<-chan bitswap.Result, error)
}

// batch bounds the CIDs of one Fetch call: below the relay's per-peer
// wantlist cap (1024 by default).
const batch = 256

// Exchange is boxo's exchange.Interface over a Fetcher. It announces
// nothing and keeps nothing: NotifyNewBlocks and Close do nothing.
type Exchange struct{ f Fetcher }

// NewExchange returns an Exchange fetching through f.
func NewExchange(f Fetcher) Exchange { return Exchange{f: f} }

var _ exchange.Interface = Exchange{}

// GetBlock fetches one block; ipld.ErrNotFound when no node has it.
// In a CAR request it also fetches ahead (see prefetch).
func (e Exchange) GetBlock(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	if p := prefetchFrom(ctx); p != nil {
		return p.get(ctx, c, e.getOne)
	}
	return e.getOne(ctx, c)
}

func (e Exchange) getOne(ctx context.Context, c cid.Cid) (blocks.Block, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := e.f.Fetch(ctx, c)
	if err != nil {
		return nil, err
	}
	for r := range ch {
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Block, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return nil, errors.Join(errClosed, ipld.ErrNotFound{Cid: c})
}

var errClosed = errors.New("gateway: fetch ended without an answer")

// GetBlocks fetches cs and sends the blocks found, in the order they
// arrive; the ones no node has are left out, as boxo's exchanges do.
func (e Exchange) GetBlocks(ctx context.Context, cs []cid.Cid) (<-chan blocks.Block, error) {
	out := make(chan blocks.Block)
	go func() {
		defer close(out)
		for len(cs) > 0 && ctx.Err() == nil {
			n := min(len(cs), batch)
			chunk := cs[:n]
			cs = cs[n:]
			ch, err := e.f.Fetch(ctx, chunk...)
			if err != nil {
				return
			}
			for r := range ch {
				if r.Block == nil {
					continue
				}
				select {
				case out <- r.Block:
				case <-ctx.Done():
					return // the fetch ends with ctx
				}
			}
		}
	}()
	return out, nil
}

// NotifyNewBlocks implements exchange.Interface; Kitsune serves nothing
// it did not fetch.
func (Exchange) NotifyNewBlocks(context.Context, ...blocks.Block) error { return nil }

// Close implements exchange.Interface.
func (Exchange) Close() error { return nil }
