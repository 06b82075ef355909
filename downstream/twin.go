package downstream

import (
	"context"

	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"
)

// swarmConn is one entry of Kubo's `swarm peers`: one per connection.
type swarmConn struct {
	Addr string
	Peer string
}

// twins is how many of a node's connections (as its `swarm peers` lists
// them) come from me beyond the mine this host has open to it: another
// process connected under the same peer ID, such as a Kitsune replica
// sharing this one's back key. Kubo opens its reply streams to a peer ID
// over whichever of those connections looks best, so the two would get
// each other's blocks.
func twins(listed []swarmConn, me peer.ID, mine int) int {
	n := 0
	for _, c := range listed {
		if c.Peer == me.String() {
			n++
		}
	}
	return max(n-mine, 0)
}

// checkTwins asks the node whom it is connected to and warns when another
// process shares this back host's peer ID. It only reads; an RPC error is
// logged at debug and otherwise ignored.
func (p *Pool) checkTwins(ctx context.Context, n *Node, id peer.ID, log *zap.Logger) {
	var out struct{ Peers []swarmConn }
	if err := n.API.Request("swarm/peers").Exec(ctx, &out); err != nil {
		log.Debug("swarm peers for the back key check", zap.Error(err))
		return
	}
	me := p.host.ID()
	if k := twins(out.Peers, me, len(p.host.Network().ConnsToPeer(id))); k > 0 {
		log.Warn("another process is connected to this node under the back host's peer ID, probably a replica sharing the back key: "+
			"the node sends its replies over either connection, so both lose blocks. Give each replica its own --back-key",
			zap.Stringer("back_peer", me), zap.Int("other_connections", k))
	}
}
