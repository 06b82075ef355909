package httpfront

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/ipfs/boxo/ipns"
	"github.com/ipfs/boxo/routing/http/client"
	"github.com/ipfs/boxo/routing/http/types"
	"github.com/ipfs/boxo/routing/http/types/iter"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	"go.uber.org/zap"
)

// RoutingLocator maps a fleet node's RPC API URL to the base URL of its
// own delegated routing API (Kubo serves /routing/v1 on its gateway port,
// Gateway.ExposeRoutingAPI, on by default since v0.40).
type RoutingLocator interface {
	RoutingURL(ctx context.Context, rpcURL string) (string, error)
}

// FleetConfig configures Fleet.
type FleetConfig struct {
	// Locator orders the nodes to try for a key (the policy's node first,
	// then other healthy ones), as RPC URLs; at most MaxNodes are tried.
	Locator Locator
	// Routing finds each node's /routing/v1 base URL.
	Routing RoutingLocator
	// MaxNodes bounds the nodes tried per request (3).
	MaxNodes int
	// MaxRecords bounds the peer records read from a node per answer
	// (256); boxo's server caps what it sends on top of this.
	MaxRecords int
	// Transport makes the calls; http.DefaultTransport when nil. The
	// request's context (boxo's routing timeout) bounds each.
	Transport http.RoundTripper
	// Hidden, when set, names peers whose records are never handed out:
	// the fleet's own nodes and Kitsune's back host, whose addresses are
	// internal. A peers query for one is not found; closest-peers answers
	// leave them out.
	Hidden func(peer.ID) bool
	// Log hears why the nodes failed; the caller only learns that they
	// did, never the fleet's internal addresses. zap.NewNop when nil.
	Log *zap.Logger
}

// maxFleetAnswer bounds what is read of one node's answer.
const maxFleetAnswer = 1 << 20

// ErrNoFleetNode means no fleet node could be asked; ErrFleetFailed that
// every node asked failed.
var (
	ErrNoFleetNode = errors.New("no fleet node available to answer routing queries")
	ErrFleetFailed = errors.New("no fleet node could answer")
)

// Fleet answers the routing queries Kitsune cannot answer from its own
// knowledge (other peers' records, IPNS, closest peers) by asking a fleet
// node's /routing/v1 with boxo's client, chosen by the pool, failing over
// to the next on an error. The client checks what comes back (an IPNS
// record against its name), so a node cannot pass a bad record through.
type Fleet struct {
	cfg    FleetConfig
	client *http.Client
}

// NewFleet checks cfg and returns a Fleet.
func NewFleet(cfg FleetConfig) (*Fleet, error) {
	if cfg.Locator == nil || cfg.Routing == nil {
		return nil, errors.New("httpfront: Fleet needs a Locator and a RoutingLocator")
	}
	if cfg.MaxNodes <= 0 {
		cfg.MaxNodes = 3
	}
	if cfg.MaxRecords <= 0 {
		cfg.MaxRecords = 256
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport
	}
	// boxo's client wants its own body-limiting transport.
	c := &http.Client{Transport: &client.ResponseBodyLimitedTransport{
		RoundTripper: cfg.Transport, LimitBytes: maxFleetAnswer, UserAgent: "kitsune",
	}}
	return &Fleet{cfg: cfg, client: c}, nil
}

// each calls try with a client for each candidate node for key in turn,
// until one succeeds or says routing.ErrNotFound (an answer, not a
// failure). When all fail, their errors are logged and the caller gets
// ErrFleetFailed: the details name internal addresses.
func (f *Fleet) each(ctx context.Context, key cid.Cid, try func(*client.Client) error) error {
	nodes := f.cfg.Locator.Candidates(key)
	if len(nodes) > f.cfg.MaxNodes {
		nodes = nodes[:f.cfg.MaxNodes]
	}
	if len(nodes) == 0 {
		return ErrNoFleetNode
	}
	var errs []error
	for _, rpcURL := range nodes {
		if ctx.Err() != nil {
			break
		}
		base, err := f.cfg.Routing.RoutingURL(ctx, rpcURL)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		c, err := client.New(base, client.WithHTTPClient(f.client))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", base, err))
			continue
		}
		err = try(c)
		if err == nil || errors.Is(err, routing.ErrNotFound) {
			return err
		}
		errs = append(errs, fmt.Errorf("%s: %w", base, err))
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	}
	f.cfg.Log.Warn("routing query: no fleet node answered", zap.Stringer("key", key), zap.Error(errors.Join(errs...)))
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrFleetFailed, err)
	}
	return fmt.Errorf("%w (%d tried)", ErrFleetFailed, len(errs))
}

func (f *Fleet) hidden(id peer.ID) bool { return f.cfg.Hidden != nil && f.cfg.Hidden(id) }

// readPeers drains it into a slice of at most MaxRecords records, hidden
// peers left out, so a failure mid-stream can still fail over, and closes
// it.
func (f *Fleet) readPeers(it iter.ResultIter[*types.PeerRecord]) ([]iter.Result[*types.PeerRecord], error) {
	defer it.Close()
	var out []iter.Result[*types.PeerRecord]
	for len(out) < f.cfg.MaxRecords && it.Next() {
		r := it.Val()
		if r.Err != nil {
			return nil, r.Err
		}
		if r.Val == nil || r.Val.ID == nil || f.hidden(*r.Val.ID) {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// peers asks a fleet node for key's peer records with ask, failing over.
func (f *Fleet) peers(ctx context.Context, key cid.Cid, ask func(*client.Client) (iter.ResultIter[*types.PeerRecord], error)) (iter.ResultIter[*types.PeerRecord], error) {
	var recs []iter.Result[*types.PeerRecord]
	err := f.each(ctx, key, func(c *client.Client) error {
		it, err := ask(c)
		if err != nil {
			return err
		}
		recs, err = f.readPeers(it)
		return err
	})
	if err != nil {
		return nil, err
	}
	return iter.FromSlice(recs), nil
}

// FindPeers asks a fleet node for pid's addresses.
func (f *Fleet) FindPeers(ctx context.Context, pid peer.ID) (iter.ResultIter[*types.PeerRecord], error) {
	if f.hidden(pid) {
		return nil, routing.ErrNotFound
	}
	return f.peers(ctx, peer.ToCid(pid), func(c *client.Client) (iter.ResultIter[*types.PeerRecord], error) {
		return c.FindPeers(ctx, pid)
	})
}

// GetClosestPeers asks a fleet node for the DHT peers closest to key
// (IPIP-476).
func (f *Fleet) GetClosestPeers(ctx context.Context, key cid.Cid) (iter.ResultIter[*types.PeerRecord], error) {
	return f.peers(ctx, key, func(c *client.Client) (iter.ResultIter[*types.PeerRecord], error) {
		return c.GetClosestPeers(ctx, key)
	})
}

// GetIPNS asks a fleet node for name's record; boxo's client validates it
// against name before it is returned.
func (f *Fleet) GetIPNS(ctx context.Context, name ipns.Name) (*ipns.Record, error) {
	var rec *ipns.Record
	err := f.each(ctx, name.Cid(), func(c *client.Client) error {
		var err error
		rec, err = c.GetIPNS(ctx, name)
		return err
	})
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// PutIPNS hands a record, already validated against name by boxo's
// server, to a fleet node to publish.
func (f *Fleet) PutIPNS(ctx context.Context, name ipns.Name, rec *ipns.Record) error {
	err := f.each(ctx, name.Cid(), func(c *client.Client) error {
		return c.PutIPNS(ctx, name, rec)
	})
	if errors.Is(err, routing.ErrNotFound) {
		// Not an answer a put can have; no node took the record.
		return fmt.Errorf("putting IPNS record: %w", err)
	}
	return err
}
