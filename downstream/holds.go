package downstream

import (
	"context"
	"errors"
	"fmt"

	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/ipfs/kubo/core/coreiface/options"
)

// ErrNoNode means no downstream node is connected to ask.
var ErrNoNode = errors.New("no connected downstream node")

// Holds reports whether the node the policy picks for c has block c in its
// blockstore. It asks offline, so the node never goes and fetches the
// block to answer: a node that would have to fetch it does not hold it.
func (p *Pool) Holds(ctx context.Context, c cid.Cid) (bool, error) {
	id, ok := p.Pick(c, nil)
	if !ok {
		return false, ErrNoNode
	}
	n := p.node(id)
	if n == nil {
		return false, ErrNoNode
	}
	offline, err := n.API.WithOptions(options.Api.Offline(true))
	if err != nil {
		return false, fmt.Errorf("downstream %s: %w", n.URL, err)
	}
	// Block().Stat rather than a raw request: it turns Kubo's "not found"
	// message back into an ipld.ErrNotFound.
	_, err = offline.Block().Stat(ctx, path.FromCid(c))
	switch {
	case err == nil:
		return true, nil
	case ipld.IsNotFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("downstream %s: block/stat --offline %s: %w", n.URL, c, err)
	}
}
