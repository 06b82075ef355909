package httpfront

import (
	"context"
	"time"

	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/boxo/routing/http/server"
	"github.com/ipfs/boxo/routing/http/types"
	"github.com/ipfs/boxo/routing/http/types/iter"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	ma "github.com/multiformats/go-multiaddr"
)

// TransportBitswap is the protocol name a peer record gives for Bitswap
// over libp2p (IPIP-337 / the routing/v1 spec's "known transports").
const TransportBitswap = "transport-bitswap"

// Self is Kitsune's own identity as clients should dial it.
type Self struct {
	ID peer.ID
	// Addrs returns the front host's announced addresses (without
	// /p2p/<id>), read at each answer so a changed announce list shows.
	Addrs func() []ma.Multiaddr
}

func (s Self) record() *types.PeerRecord {
	id := s.ID
	rec := &types.PeerRecord{Schema: types.SchemaPeer, ID: &id, Protocols: []string{TransportBitswap}}
	for _, a := range s.Addrs() {
		rec.Addrs = append(rec.Addrs, types.Multiaddr{Multiaddr: a})
	}
	return rec
}

// Router answers boxo's routing server from Kitsune's point of view: the
// fleet's content is provided by Kitsune itself.
type Router struct {
	self     Self
	holdings *Holdings
	observe  func(Outcome, time.Duration)
}

var _ server.DelegatedRouter = (*Router)(nil)

// FindProviders answers Kitsune's own record when the fleet holds c, and
// not found otherwise.
func (r *Router) FindProviders(ctx context.Context, c cid.Cid, _ int) (iter.ResultIter[types.Record], error) {
	start := time.Now()
	holds, o := r.holdings.Holds(ctx, c)
	if r.observe != nil {
		r.observe(o, time.Since(start))
	}
	if !holds {
		return nil, routing.ErrNotFound
	}
	return iter.FromSlice([]iter.Result[types.Record]{{Val: r.self.record()}}), nil
}

// FindPeers answers Kitsune's own record for its own ID. Other peers are
// not looked up (not found): Kitsune is not a general peer router yet.
func (r *Router) FindPeers(ctx context.Context, pid peer.ID, _ int) (iter.ResultIter[*types.PeerRecord], error) {
	if pid != r.self.ID {
		return nil, routing.ErrNotFound
	}
	return iter.FromSlice([]iter.Result[*types.PeerRecord]{{Val: r.self.record()}}), nil
}

// The rest of the API is refused before it reaches boxo's handler (see
// Handler); these are never called, and say so if they are.

// ProvideBitswap implements server.DelegatedRouter.
func (r *Router) ProvideBitswap(context.Context, *server.BitswapWriteProvideRequest) (time.Duration, error) {
	return 0, routing.ErrNotSupported
}

// GetIPNS implements server.DelegatedRouter.
func (r *Router) GetIPNS(context.Context, ipns.Name) (*ipns.Record, error) {
	return nil, routing.ErrNotSupported
}

// PutIPNS implements server.DelegatedRouter.
func (r *Router) PutIPNS(context.Context, ipns.Name, *ipns.Record) error {
	return routing.ErrNotSupported
}

// GetClosestPeers implements server.DelegatedRouter.
func (r *Router) GetClosestPeers(context.Context, cid.Cid) (iter.ResultIter[*types.PeerRecord], error) {
	return nil, routing.ErrNotSupported
}
