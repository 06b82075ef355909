// Package kubotest starts real Kubo daemons on loopback for Go tests.
//
// Kitsune's job is to sit between libp2p peers and a fleet of Kubo nodes, so
// its tests are only believable against the real thing: a fake Bitswap peer
// would encode our own reading of the protocol and agree with every bug in it.
// This package runs the Kubo binary the repository pins (Version, v0.43.1;
// CompatVersion, v0.41.0, for a compatibility subset) as a child process,
// one fresh repository per node, and hands the test a typed handle.
//
// # Finding the binary
//
//	func Binary(t testing.TB) string
//	func CompatBinary(t testing.TB) string
//
// Binary returns $KITSUNE_KUBO_BIN if set, else
// <module root>/.cache/bin/ipfs-v0.43.1, where the module root is the nearest
// directory above the working directory whose go.mod declares
// github.com/kitsune-lb/kitsune. CompatBinary does the same for the older
// release with $KITSUNE_KUBO_COMPAT_BIN and .cache/bin/ipfs-v0.41.0;
// `make kubo` builds both, and `make test` passes both variables. A missing binary is a
// test failure (t.Fatalf telling the user to run `make kubo`), never a skip:
// a suite that silently skips its integration tests looks green while proving
// nothing.
//
// # Starting nodes
//
//	type Options struct {
//		WebSocket bool           // also listen on /ip4/127.0.0.1/tcp/0/ws
//		Config    map[string]any // dotted key -> value, as `ipfs config --json key value`
//		Env       []string       // extra KEY=VALUE for the daemon, e.g. GOLOG_LOG_LEVEL=bitswap=debug
//		Binary    string         // another Kubo, e.g. CompatBinary(t)
//		In        Place          // run inside e.g. a netns.NS: listens on 0.0.0.0, API dialled inside
//	}
//
//	func Start(t testing.TB, opts Options) *Node
//
// Start runs `ipfs init --profile=test --empty-repo` in a directory from
// t.TempDir, rewrites the config so the node is isolated (API, swarm tcp and
// quic-v1 on random 127.0.0.1 ports, no gateway, no bootstrap peers, no mDNS,
// Routing.Type=none, no relays, no AutoNAT service, no telemetry), applies
// Options.Config, starts `ipfs daemon` and waits up to 60 s for the RPC API to
// answer and for "Daemon is ready". Start logs the node's agent version and
// binary, so a test's output says which Kubo it ran. Every failure calls t.Fatalf with the tail
// of the daemon's stderr; a daemon that exits during startup (Kubo rejects
// bad config with a fatal log) fails at once rather than at the timeout.
// t.Cleanup stops the daemon. It fails the test if the daemon had exited on
// its own (a crash is a finding even when every assertion held), and if the
// test failed it logs the stderr tail, since the repository (log files
// included) is deleted with the temp dir.
//
// The daemon runs in its own process group with a parent-death signal
// (Linux), so a test binary that panics or is killed does not leave daemons
// behind. Its stdout and stderr are appended to daemon.stdout and
// daemon.stderr in the repository.
//
// # The node handle
//
//	type Node struct {
//		Dir          string                // IPFS_PATH
//		APIAddr      multiaddr.Multiaddr   // /ip4/127.0.0.1/tcp/<port>
//		APIURL       string                // http://127.0.0.1:<port>
//		ID           peer.ID
//		SwarmAddrs   []multiaddr.Multiaddr // loopback listen addrs, incl. /ws when enabled
//		API          *rpc.HttpApi
//		AgentVersion string                // e.g. kubo/0.41.0/
//	}
//
//	func (n *Node) AddrInfo() peer.AddrInfo
//	func (n *Node) AddrInfoFor(proto string) peer.AddrInfo
//	func (n *Node) AddBytes(ctx context.Context, data []byte) (cid.Cid, error)
//	func (n *Node) AddDir(ctx context.Context, files map[string][]byte) (cid.Cid, error)
//	func (n *Node) Cat(ctx context.Context, path string) ([]byte, error)
//	func (n *Node) Get(ctx context.Context, c cid.Cid, dir string) error
//	func (n *Node) ReadDir(ctx context.Context, c cid.Cid) (map[string][]byte, error)
//	func (n *Node) Connect(ctx context.Context, ai peer.AddrInfo) error
//	func (n *Node) Disconnect(ctx context.Context, p peer.ID) error
//	func (n *Node) Wantlist(ctx context.Context, p peer.ID) ([]cid.Cid, error)
//	func (n *Node) OwnWantlist(ctx context.Context) ([]cid.Cid, error)
//	func (n *Node) HasBlock(ctx context.Context, c cid.Cid) (bool, error)
//	func (n *Node) Peers(ctx context.Context) ([]peer.ID, error)
//	func (n *Node) Stop()
//	func (n *Node) Kill()
//	func (n *Node) Pause()
//	func (n *Node) Resume()
//	func (n *Node) Restart(t testing.TB)
//
// SwarmAddrs holds only IP addresses: Kubo also lists a bare /p2p-circuit,
// which names nowhere to dial. With WebSocket on, go-libp2p serves tcp and
// ws on one shared port. AddrInfoFor keeps the addresses whose last
// protocol is the given one ("tcp", "quic-v1", "ws") to force a transport.
//
// AddBytes and AddDir behave like a plain `ipfs add` (CIDv0, 256 KiB chunks,
// pinned). AddDir takes slash-separated paths ("a/b/c.txt") and returns the
// root directory's CID. Get writes a UnixFS tree to dir (which must not exist
// yet, as with `ipfs get -o`); ReadDir returns the same tree as a map shaped
// like AddDir's input, which is the easier thing to compare. HasBlock asks the
// node with --offline, so it never makes the node fetch what it is asked
// about. Wantlist(p) is what peer p wants from this node (`bitswap wantlist
// --peer`); OwnWantlist is what this node wants.
//
// Stop sends SIGTERM (and SIGCONT, in case the node is paused), waits up to
// 15 s, then SIGKILLs; it is idempotent and is what the cleanup calls. Kill
// skips the grace period. Pause and Resume send SIGSTOP and SIGCONT, which
// freezes the node with its connections open: the way to look like a hung
// peer rather than a dead one. Restart stops the daemon if it runs and
// starts it again on the same repository: same peer ID and blocks, new
// ports. It replaces APIAddr, APIURL, SwarmAddrs and API, so it must not run
// concurrently with anything else using the node, and old copies of those
// fields point at a dead daemon.
package kubotest
