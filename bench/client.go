package bench

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	bsclient "github.com/ipfs/boxo/bitswap/client"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/ipfs/boxo/blockservice"
	"github.com/ipfs/boxo/blockstore"
	"github.com/ipfs/boxo/ipld/merkledag"
	unixfsio "github.com/ipfs/boxo/ipld/unixfs/io"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/connmgr"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
)

// plainHost is a libp2p host with exactly the stack every path in the
// benchmark shares: TCP, Noise, yamux. No resource manager or connection
// manager of its own, so the client side never throttles or trims what is
// being measured; no listen address, since nothing dials a client.
func plainHost(listen ...string) (host.Host, error) {
	opts := []libp2p.Option{
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.ConnectionManager(connmgr.NullConnMgr{}),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}
	if len(listen) == 0 {
		opts = append(opts, libp2p.NoListenAddrs)
	} else {
		opts = append(opts, libp2p.ListenAddrStrings(listen...))
	}
	return libp2p.New(opts...)
}

// client is one in-process Bitswap client: its own host, boxo's Bitswap
// client and an in-memory blockstore behind a blockservice, as a Go
// application embedding IPFS would have.
type client struct {
	h      host.Host
	net    interface{ Stop() }
	bs     *bsclient.Client
	bstore blockstore.Blockstore
	bserv  blockservice.BlockService
}

func newClient(ctx context.Context) (*client, error) {
	h, err := plainHost()
	if err != nil {
		return nil, err
	}
	n := bsnet.NewFromIpfsHost(h)
	bstore := blockstore.NewBlockstore(dssync.MutexWrap(datastore.NewMapDatastore()))
	bs := bsclient.New(ctx, n, nil, bstore)
	n.Start(bs)
	return &client{h: h, net: n, bs: bs, bstore: bstore, bserv: blockservice.New(bstore, bs)}, nil
}

func (c *client) connect(ctx context.Context, ai peer.AddrInfo) error {
	if err := c.h.Connect(ctx, ai); err != nil {
		return fmt.Errorf("connecting to %s: %w", ai.ID, err)
	}
	return nil
}

// connectedClient is a new client connected to target; the caller closes
// it.
func connectedClient(ctx context.Context, target peer.AddrInfo) (*client, error) {
	c, err := newClient(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.connect(ctx, target); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// connectedClients makes n clients and connects client i to target(i),
// 16 at a time. The clients made are returned even on an error: close
// them with closeClients.
func connectedClients(ctx context.Context, n int, target func(i int) peer.AddrInfo) ([]*client, error) {
	clients := make([]*client, n)
	for i := range clients {
		c, err := newClient(ctx)
		if err != nil {
			return clients, err
		}
		clients[i] = c
	}
	return clients, parallel(ctx, len(clients), 16, func(ctx context.Context, i int) error {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return clients[i].connect(cctx, target(i))
	})
}

// crowdFetch is what a crowd of clients fetching at once got.
type crowdFetch struct {
	start    time.Time // when the clock started
	last     time.Time // the end of the last fetch that succeeded
	ends     []float64 // each successful fetch's end, seconds after start
	ok       int       // fetches that succeeded
	blocks   int       // blocks of a DAG fetched (the last success's count)
	bytesDAG int64     // block bytes fetched, failed fetches included
	errs     []error
}

// fetchCrowd runs fetch for every client at once, each within timeout.
// Gated, the clock starts once every client's goroutine runs and they are
// let go together (the hot content's crowd); otherwise it starts before
// the first is started.
func fetchCrowd(ctx context.Context, clients []*client, timeout time.Duration, gated bool, fetch func(ctx context.Context, i int, c *client) (int, int64, error)) crowdFetch {
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		cf crowdFetch
	)
	gate := make(chan struct{})
	if !gated {
		close(gate)
	}
	cf.start = time.Now()
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			fctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			n, size, err := fetch(fctx, i, c)
			end := time.Now()
			mu.Lock()
			defer mu.Unlock()
			cf.bytesDAG += size
			if err != nil {
				cf.errs = append(cf.errs, fmt.Errorf("client %d: %w", i, err))
				return
			}
			cf.blocks = n
			cf.ok++
			cf.ends = append(cf.ends, end.Sub(cf.start).Seconds())
			if end.After(cf.last) {
				cf.last = end
			}
		}()
	}
	if gated {
		cf.start = time.Now()
		close(gate)
	}
	wg.Wait()
	return cf
}

func closeClients(clients []*client) {
	for _, c := range clients {
		if c != nil {
			c.close()
		}
	}
}

func (c *client) close() {
	c.net.Stop()
	_ = c.bs.Close()
	_ = c.h.Close()
}

// fetchDAG fetches every block of the DAG under root through one
// blockservice session, a whole level of the tree at a time (so every
// block of a level is wanted at once, as a pin or `refs -r` would), and
// returns the number of blocks and their bytes.
func (c *client) fetchDAG(ctx context.Context, root cid.Cid) (int, int64, error) {
	sess := blockservice.NewSession(ctx, c.bserv)
	level := []cid.Cid{root}
	var n int
	var size int64
	for depth := 0; len(level) > 0; depth++ {
		if depth > 32 {
			return n, size, errors.New("DAG deeper than 32 levels")
		}
		missing := make(map[cid.Cid]bool, len(level))
		uniq := level[:0]
		for _, k := range level {
			if !missing[k] {
				missing[k] = true
				uniq = append(uniq, k)
			}
		}
		var next []cid.Cid
		for b := range sess.GetBlocks(ctx, uniq) {
			if !missing[b.Cid()] {
				continue
			}
			delete(missing, b.Cid())
			n++
			size += int64(len(b.RawData()))
			links, err := linksOf(b)
			if err != nil {
				return n, size, err
			}
			next = append(next, links...)
		}
		if len(missing) > 0 {
			if err := ctx.Err(); err != nil {
				return n, size, fmt.Errorf("%d of %d blocks at depth %d missing: %w", len(missing), len(uniq), depth, err)
			}
			return n, size, fmt.Errorf("%d of %d blocks at depth %d missing", len(missing), len(uniq), depth)
		}
		level = next
	}
	return n, size, nil
}

func linksOf(b blocks.Block) ([]cid.Cid, error) {
	switch b.Cid().Prefix().Codec {
	case cid.Raw:
		return nil, nil
	case cid.DagProtobuf:
		nd, err := merkledag.DecodeProtobufBlock(b)
		if err != nil {
			return nil, fmt.Errorf("block %s: %w", b.Cid(), err)
		}
		var out []cid.Cid
		for _, l := range nd.Links() {
			out = append(out, l.Cid)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("block %s: codec %#x is not UnixFS", b.Cid(), b.Cid().Prefix().Codec)
	}
}

// fileHash reads the UnixFS file under root from the local blockstore only
// and returns its SHA-256 and length: proof the fetched bytes are the file.
func (c *client) fileHash(ctx context.Context, root cid.Cid) ([32]byte, int64, error) {
	var sum [32]byte
	dag := merkledag.NewDAGService(blockservice.New(c.bstore, nil))
	nd, err := dag.Get(ctx, root)
	if err != nil {
		return sum, 0, err
	}
	r, err := unixfsio.NewDagReader(ctx, nd, dag)
	if err != nil {
		return sum, 0, err
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return sum, n, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, n, nil
}
