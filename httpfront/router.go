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

// TransportGatewayHTTP names a trustless HTTP gateway (IPIP-337); its
// addresses end in /http or /tls/http.
const TransportGatewayHTTP = "transport-ipfs-gateway-http"

// Self is Kitsune's own identity as clients should dial it.
type Self struct {
	ID peer.ID
	// Addrs returns the front host's announced addresses (without
	// /p2p/<id>), read at each answer so a changed announce list shows.
	Addrs func() []ma.Multiaddr
	// GatewayAddrs, when set, returns the trustless gateway's announced
	// /http or /tls/http addresses: the record then offers
	// TransportGatewayHTTP beside Bitswap.
	GatewayAddrs func() []ma.Multiaddr
}

func (s Self) record() *types.PeerRecord {
	id := s.ID
	rec := &types.PeerRecord{Schema: types.SchemaPeer, ID: &id, Protocols: []string{TransportBitswap}}
	for _, a := range s.Addrs() {
		rec.Addrs = append(rec.Addrs, types.Multiaddr{Multiaddr: a})
	}
	if s.GatewayAddrs != nil {
		if gw := s.GatewayAddrs(); len(gw) > 0 {
			rec.Protocols = append(rec.Protocols, TransportGatewayHTTP)
			for _, a := range gw {
				rec.Addrs = append(rec.Addrs, types.Multiaddr{Multiaddr: a})
			}
		}
	}
	return rec
}

// Router answers boxo's routing server from Kitsune's point of view: the
// fleet's content is provided by Kitsune itself.
type Router struct {
	self     Self
	holdings *Holdings
	observe  func(Outcome, time.Duration)
	fleet    *Fleet // nil: other peers, IPNS and closest peers are not served
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

// FindPeers answers Kitsune's own record for its own ID; other peers are
// looked up by the fleet (see Fleet), or not found without one.
func (r *Router) FindPeers(ctx context.Context, pid peer.ID, _ int) (iter.ResultIter[*types.PeerRecord], error) {
	if pid != r.self.ID {
		if r.fleet == nil {
			return nil, routing.ErrNotFound
		}
		return r.fleet.FindPeers(ctx, pid)
	}
	return iter.FromSlice([]iter.Result[*types.PeerRecord]{{Val: r.self.record()}}), nil
}

// ProvideBitswap implements server.DelegatedRouter. It is refused before
// it reaches boxo's handler (see Handler): the fleet's content is
// announced by Kitsune, not by callers.
func (r *Router) ProvideBitswap(context.Context, *server.BitswapWriteProvideRequest) (time.Duration, error) {
	return 0, routing.ErrNotSupported
}

// The IPNS and closest-peers routes reach these only with a fleet (see
// Handler).

// GetIPNS implements server.DelegatedRouter.
func (r *Router) GetIPNS(ctx context.Context, name ipns.Name) (*ipns.Record, error) {
	if r.fleet == nil {
		return nil, routing.ErrNotSupported
	}
	return r.fleet.GetIPNS(ctx, name)
}

// PutIPNS implements server.DelegatedRouter. boxo's server has already
// checked the record's signature, validity and name.
func (r *Router) PutIPNS(ctx context.Context, name ipns.Name, rec *ipns.Record) error {
	if r.fleet == nil {
		return routing.ErrNotSupported
	}
	return r.fleet.PutIPNS(ctx, name, rec)
}

// GetClosestPeers implements server.DelegatedRouter.
func (r *Router) GetClosestPeers(ctx context.Context, key cid.Cid) (iter.ResultIter[*types.PeerRecord], error) {
	if r.fleet == nil {
		return nil, routing.ErrNotSupported
	}
	return r.fleet.GetClosestPeers(ctx, key)
}
