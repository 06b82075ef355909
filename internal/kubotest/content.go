package kubotest

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ipfs/boxo/files"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	"github.com/ipfs/kubo/core/coreiface/options"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
)

// AddrInfo returns the node's peer ID with every swarm listen address.
func (n *Node) AddrInfo() peer.AddrInfo {
	return peer.AddrInfo{ID: n.ID, Addrs: slices.Clone(n.SwarmAddrs)}
}

// AddrInfoFor returns the node's peer ID with only the listen addresses whose
// last protocol is transport ("tcp", "quic-v1", "ws"), so a test can force
// one transport; libp2p would otherwise pick its own favourite.
func (n *Node) AddrInfoFor(transport string) peer.AddrInfo {
	ai := peer.AddrInfo{ID: n.ID}
	for _, a := range n.SwarmAddrs {
		if len(a) > 0 && a[len(a)-1].Protocol().Name == transport {
			ai.Addrs = append(ai.Addrs, a)
		}
	}
	return ai
}

// addOptions mirror a plain `ipfs add` on the command line; the rpc client's
// defaults would leave content unpinned.
func addOptions() []options.UnixfsAddOption {
	return []options.UnixfsAddOption{options.Unixfs.CidVersion(0), options.Unixfs.Pin(true, "")}
}

// AddBytes adds data as one UnixFS file (CIDv0, 256 KiB chunks, pinned) and
// returns its root CID.
func (n *Node) AddBytes(ctx context.Context, data []byte) (cid.Cid, error) {
	p, err := n.API.Unixfs().Add(ctx, files.NewBytesFile(data), addOptions()...)
	if err != nil {
		return cid.Undef, fmt.Errorf("adding %d bytes: %w", len(data), err)
	}
	return p.RootCid(), nil
}

// AddDir adds a directory tree, given as slash-separated relative paths
// ("a/b/c.txt") to file contents, and returns the root directory's CID.
func (n *Node) AddDir(ctx context.Context, tree map[string][]byte) (cid.Cid, error) {
	root, err := buildTree(tree)
	if err != nil {
		return cid.Undef, err
	}
	p, err := n.API.Unixfs().Add(ctx, root, addOptions()...)
	if err != nil {
		return cid.Undef, fmt.Errorf("adding directory of %d files: %w", len(tree), err)
	}
	return p.RootCid(), nil
}

func buildTree(tree map[string][]byte) (files.Directory, error) {
	// Each level is map[string]any holding []byte (file) or map[string]any
	// (subdirectory) until converted, so conflicts are caught on insert.
	root := map[string]any{}
	for name, data := range tree {
		parts := strings.Split(name, "/")
		dir := root
		for i, part := range parts {
			if part == "" || part == "." || part == ".." {
				return nil, fmt.Errorf("AddDir: invalid path %q", name)
			}
			if i == len(parts)-1 {
				if _, ok := dir[part]; ok {
					return nil, fmt.Errorf("AddDir: %q is both a file and a directory", name)
				}
				dir[part] = data
				break
			}
			switch next := dir[part].(type) {
			case nil:
				sub := map[string]any{}
				dir[part] = sub
				dir = sub
			case map[string]any:
				dir = next
			default:
				return nil, fmt.Errorf("AddDir: %q is both a file and a directory", strings.Join(parts[:i+1], "/"))
			}
		}
	}
	return toNode(root), nil
}

func toNode(dir map[string]any) files.Directory {
	entries := make(map[string]files.Node, len(dir))
	for name, v := range dir {
		switch v := v.(type) {
		case []byte:
			entries[name] = files.NewBytesFile(v)
		case map[string]any:
			entries[name] = toNode(v)
		}
	}
	return files.NewMapDirectory(entries)
}

// Cat returns the contents of a UnixFS file; p is a CID or a path such as
// /ipfs/<cid>/sub/file. The node fetches missing blocks from its peers.
func (n *Node) Cat(ctx context.Context, p string) ([]byte, error) {
	resp, err := n.API.Request("cat", p).Send(ctx)
	if err != nil {
		return nil, fmt.Errorf("cat %s: %w", p, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("cat %s: %w", p, resp.Error)
	}
	defer resp.Close()
	data, err := io.ReadAll(resp.Output)
	if err != nil {
		return nil, fmt.Errorf("cat %s: %w", p, err)
	}
	return data, nil
}

// Get writes the UnixFS tree rooted at c to dir, which must not exist yet
// (as with `ipfs get -o dir`): directories become directories, files files.
func (n *Node) Get(ctx context.Context, c cid.Cid, dir string) error {
	err := n.walk(ctx, c, func(rel string, nd files.Node) error {
		target := filepath.Join(dir, filepath.FromSlash(rel))
		switch nd := nd.(type) {
		case files.Directory:
			return os.Mkdir(target, 0o755)
		case *files.Symlink:
			return os.Symlink(nd.Target, target)
		case files.File:
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, nd)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return err
		default:
			return fmt.Errorf("%s: unsupported node type %T", rel, nd)
		}
	})
	if err != nil {
		return fmt.Errorf("get %s into %s: %w", c, dir, err)
	}
	return nil
}

// ReadDir returns every file under the UnixFS directory c, keyed by
// slash-separated path as AddDir takes them, so a round trip compares with
// one reflect.DeepEqual or maps.EqualFunc. Empty directories do not show.
func (n *Node) ReadDir(ctx context.Context, c cid.Cid) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := n.walk(ctx, c, func(rel string, nd files.Node) error {
		switch nd := nd.(type) {
		case files.Directory:
			return nil
		case *files.Symlink:
			return fmt.Errorf("%s: symlink to %q has no contents", rel, nd.Target)
		case files.File:
			if rel == "" {
				return fmt.Errorf("%s is a file, not a directory", c)
			}
			data, err := io.ReadAll(nd)
			if err != nil {
				return err
			}
			out[rel] = data
			return nil
		default:
			return fmt.Errorf("%s: unsupported node type %T", rel, nd)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read dir %s: %w", c, err)
	}
	return out, nil
}

// walk visits c and everything under it, parents before children, with rel
// the slash-separated path below c ("" for c itself). Each node is closed
// after its visit, which ends the HTTP response streaming a file.
func (n *Node) walk(ctx context.Context, c cid.Cid, visit func(rel string, nd files.Node) error) error {
	root, err := n.API.Unixfs().Get(ctx, path.FromCid(c))
	if err != nil {
		return err
	}
	return walkNode(root, "", visit)
}

func walkNode(nd files.Node, rel string, visit func(string, files.Node) error) error {
	defer nd.Close()
	if err := visit(rel, nd); err != nil {
		return err
	}
	dir, ok := nd.(files.Directory)
	if !ok {
		return nil
	}
	it := dir.Entries()
	for it.Next() {
		name := it.Name()
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
			it.Node().Close()
			return fmt.Errorf("unsafe entry name %q under %q", name, rel)
		}
		child := name
		if rel != "" {
			child = rel + "/" + name
		}
		if err := walkNode(it.Node(), child, visit); err != nil {
			return err
		}
	}
	return it.Err()
}

// Connect dials the peer at the given addresses.
func (n *Node) Connect(ctx context.Context, ai peer.AddrInfo) error {
	if err := n.API.Swarm().Connect(ctx, ai); err != nil {
		return fmt.Errorf("connect to %s: %w", ai.ID, err)
	}
	return nil
}

// Disconnect closes every connection to peer p.
func (n *Node) Disconnect(ctx context.Context, p peer.ID) error {
	addr, err := multiaddr.NewComponent("p2p", p.String())
	if err != nil {
		return fmt.Errorf("disconnect %s: %w", p, err)
	}
	if err := n.API.Swarm().Disconnect(ctx, addr.Multiaddr()); err != nil {
		return fmt.Errorf("disconnect %s: %w", p, err)
	}
	return nil
}

// Peers returns the peers this node has at least one connection to.
func (n *Node) Peers(ctx context.Context) ([]peer.ID, error) {
	conns, err := n.API.Swarm().Peers(ctx)
	if err != nil {
		return nil, fmt.Errorf("swarm peers: %w", err)
	}
	ids := make([]peer.ID, 0, len(conns))
	for _, c := range conns {
		if !slices.Contains(ids, c.ID()) {
			ids = append(ids, c.ID())
		}
	}
	return ids, nil
}

// BitswapMessagesReceived is how many Bitswap messages this node has
// received (`bitswap stat`), from any peer. Its Bitswap client counts a
// message before handling it, in the goroutine that marks the sender as a
// broadcast target: above 0 on a node connected only to Kitsune means
// Kitsune's greeting was taken.
func (n *Node) BitswapMessagesReceived(ctx context.Context) (uint64, error) {
	var st struct{ MessagesReceived uint64 }
	if err := n.API.Request("bitswap/stat").Exec(ctx, &st); err != nil {
		return 0, fmt.Errorf("bitswap stat: %w", err)
	}
	return st.MessagesReceived, nil
}

// Wantlist returns what peer p currently wants from this node: the server
// side's ledger for p, not this node's own wants.
func (n *Node) Wantlist(ctx context.Context, p peer.ID) ([]cid.Cid, error) {
	return n.wantlist(ctx, p)
}

// OwnWantlist returns the blocks this node itself is trying to fetch.
func (n *Node) OwnWantlist(ctx context.Context) ([]cid.Cid, error) {
	return n.wantlist(ctx, "")
}

func (n *Node) wantlist(ctx context.Context, p peer.ID) ([]cid.Cid, error) {
	req := n.API.Request("bitswap/wantlist")
	if p != "" {
		req.Option("peer", p.String())
	}
	var out struct{ Keys []cid.Cid }
	if err := req.Exec(ctx, &out); err != nil {
		return nil, fmt.Errorf("bitswap wantlist: %w", err)
	}
	return out.Keys, nil
}

// HasBlock reports whether the block is in this node's blockstore. It asks
// with --offline: a plain `block stat` would go and fetch the block, and so
// change the answer (and the wantlists) it is meant to observe.
func (n *Node) HasBlock(ctx context.Context, c cid.Cid) (bool, error) {
	offline, err := n.API.WithOptions(options.Api.Offline(true))
	if err != nil {
		return false, fmt.Errorf("block stat %s: %w", c, err)
	}
	_, err = offline.Block().Stat(ctx, path.FromCid(c))
	switch {
	case err == nil:
		return true, nil
	case ipld.IsNotFound(err):
		return false, nil
	default:
		return false, fmt.Errorf("block stat --offline %s: %w", c, err)
	}
}
