package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"

	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/core/coreiface/options"
	"github.com/libp2p/go-libp2p/core/peer"
	mh "github.com/multiformats/go-multihash"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// DefaultKuboOutstandingBytes is the per-peer Bitswap budget the
// benchmark's fleet gets, as the README advises for a node behind Kitsune;
// Kubo's own default is 1 MiB.
const DefaultKuboOutstandingBytes = 16 << 20

// kuboOptions is the fleet's configuration: the per-peer Bitswap budget
// (outstanding bytes; 0 leaves Kubo's default), applied to every node
// whichever path reaches it, and no connection trimming, so 2,000 idle
// connections to a node stay open as they do on Kitsune.
func kuboOptions(outstanding int) kubotest.Options {
	cfg := map[string]any{"Swarm.ConnMgr.Type": "none"}
	if outstanding > 0 {
		cfg["Internal.Bitswap.MaxOutstandingBytesPerPeer"] = outstanding
	}
	return kubotest.Options{Config: cfg}
}

func (e *env) startKubo() *kubotest.Node {
	e.tb.Helper()
	return kubotest.Start(e.tb, kuboOptions(e.cfg.KuboOutstandingBytes))
}

// tcpAddrInfo is how every client reaches a Kubo node: TCP, as through
// Kitsune and the forwarder.
func tcpAddrInfo(n *kubotest.Node) peer.AddrInfo { return n.AddrInfoFor("tcp") }

// peer makes front keep a connection to each of nodes (`swarm peering
// add`), as a preload node in front of a fleet is set up.
func peerWith(ctx context.Context, front *kubotest.Node, nodes ...*kubotest.Node) error {
	for _, n := range nodes {
		var args []string
		for _, a := range n.SwarmAddrs {
			args = append(args, fmt.Sprintf("%s/p2p/%s", a, n.ID))
		}
		// One address per call: the command takes one peer per argument.
		for _, a := range args {
			if err := drain(ctx, front, "swarm/peering/add", a); err != nil {
				return err
			}
		}
		if err := front.Connect(ctx, n.AddrInfo()); err != nil {
			return err
		}
	}
	return nil
}

// warm is what a preload call does: `refs -r` through the front node's
// RPC API, which makes it fetch the whole DAG.
func warm(ctx context.Context, front *kubotest.Node, root cid.Cid) error {
	resp, err := front.API.Request("refs", root.String()).Option("recursive", true).Send(ctx)
	if err != nil {
		return err
	}
	defer resp.Close()
	if resp.Error != nil {
		return resp.Error
	}
	body, err := io.ReadAll(resp.Output)
	if err != nil {
		return fmt.Errorf("refs -r %s: %w", root, err)
	}
	for _, l := range lines(body) {
		var r struct{ Ref, Err string }
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			return fmt.Errorf("refs -r %s: %q: %w", root, l, err)
		}
		if r.Err != "" {
			return fmt.Errorf("refs -r %s: %s", root, r.Err)
		}
	}
	return nil
}

// gc empties the front node between runs, so every run warms it afresh.
func gc(ctx context.Context, front *kubotest.Node) error {
	return drain(ctx, front, "repo/gc")
}

func drain(ctx context.Context, n *kubotest.Node, cmd string, args ...string) error {
	resp, err := n.API.Request(cmd, args...).Send(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	defer resp.Close()
	if resp.Error != nil {
		return fmt.Errorf("%s: %w", cmd, resp.Error)
	}
	if _, err := io.Copy(io.Discard, resp.Output); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	return nil
}

// rawCID is the CIDv1 (raw codec, SHA-256) of data, as `block put` makes.
func rawCID(data []byte) cid.Cid {
	h, err := mh.Sum(data, mh.SHA2_256, -1)
	if err != nil {
		panic(err) // SHA-256 is always there
	}
	return cid.NewCidV1(cid.Raw, h)
}

// putRaw stores data on n as a raw block and checks the CID it reports.
func putRaw(ctx context.Context, n *kubotest.Node, data []byte) (cid.Cid, error) {
	want := rawCID(data)
	st, err := n.API.Block().Put(ctx, bytes.NewReader(data), options.Block.CidCodec("raw"))
	if err != nil {
		return cid.Undef, err
	}
	if got := st.Path().RootCid(); !got.Equals(want) {
		return cid.Undef, fmt.Errorf("block put returned %s, want %s", got, want)
	}
	return want, nil
}

func apiAddrs(nodes ...*kubotest.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.APIAddr.String())
	}
	return out
}

func kuboVersion(n *kubotest.Node) string {
	return strings.TrimSuffix(strings.TrimPrefix(n.AgentVersion, "kubo/"), "/")
}

// transportFrom names the transport (last protocol of the address, e.g.
// "quic-v1", "tcp") of n's connection with p, "" if none.
func transportFrom(ctx context.Context, n *kubotest.Node, p peer.ID) string {
	conns, err := n.API.Swarm().Peers(ctx)
	if err != nil {
		return ""
	}
	for _, c := range conns {
		if c.ID() == p {
			a := c.Address()
			if len(a) == 0 {
				return ""
			}
			return a[len(a)-1].Protocol().Name
		}
	}
	return ""
}

// tcpOnlyAPI serves n's RPC API with /api/v0/id listing only the node's
// TCP swarm addresses. Kitsune learns where to dial a node from that call,
// so behind this it reaches the node over TCP, as the clients and the
// floor do, rather than over the QUIC it picks by itself: the kitsune-tcp
// path, which shows what the transport of the fleet leg costs.
func tcpOnlyAPI(n *kubotest.Node) (string, func(), error) {
	target, err := url.Parse(n.APIURL)
	if err != nil {
		return "", nil, err
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path != "/api/v0/id" || resp.StatusCode != http.StatusOK {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		var out map[string]any
		if err := json.Unmarshal(body, &out); err != nil {
			return err
		}
		var keep []any
		addrs, _ := out["Addresses"].([]any)
		for _, a := range addrs {
			if s, ok := a.(string); ok && strings.Contains(s, "/tcp/") && !strings.Contains(s, "/ws") {
				keep = append(keep, s)
			}
		}
		out["Addresses"] = keep
		if body, err = json.Marshal(out); err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		resp.ContentLength = int64(len(body))
		resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
		resp.Header.Del("Transfer-Encoding")
		resp.TransferEncoding = nil
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: rp}
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() { _ = srv.Close() }, nil
}
