package preload

import (
	"net/netip"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Chooser picks the downstream node for a refs call whose DAG starts at c
// and returns its RPC API base URL, without /api/v0 (for example
// http://10.0.1.42:5001). ok is false when no node is usable; the caller
// then gets 503. downstream.Pool implements it with its selection policy,
// so a DAG lands on the node its blocks would go to anyway.
type Chooser interface {
	ChooseAPI(c cid.Cid) (baseURL string, ok bool)
}

// PeerLookup may be implemented by a Chooser as well, to name the peer ID
// of the node behind a base URL it returned. The reverse direction
// recognises the node's wants by that ID, so Call.Node.Peer stays empty
// without it.
type PeerLookup interface {
	PeerOf(baseURL string) (peer.ID, bool)
}

// ChooserFunc adapts a function to Chooser.
type ChooserFunc func(c cid.Cid) (string, bool)

// ChooseAPI implements Chooser.
func (f ChooserFunc) ChooseAPI(c cid.Cid) (string, bool) { return f(c) }

// Target is the downstream node a refs call goes to.
type Target struct {
	// URL is the node's RPC API base URL, as the Chooser returned it.
	URL string
	// Peer is the node's peer ID as Kitsune's back host knows it, from the
	// Chooser's PeerLookup; empty when unknown.
	Peer peer.ID
}

// Call is one admitted refs call, as the Sessions hook sees it.
type Call struct {
	// Root is the CID the call's path starts at: for "/ipfs/<cid>/a/b",
	// <cid>. The DAG the node walks is Root's, or a part of it.
	Root cid.Cid
	// Path is the arg as sent to the node: "<cid>" or "/ipfs/<cid>/a/b".
	Path string
	// MaxDepth is how deep below the resolved path the node walks, as Kubo
	// computes it: -1 for the whole DAG (r=true, no max-depth), 1 when the
	// call is not recursive (only the direct links are listed).
	MaxDepth int
	// Node is the downstream node the call was sent to.
	Node Target
	// Client is the caller's IP address (after trusted X-Forwarded-For),
	// IPv4 unmapped, without zone.
	Client netip.Addr
}

// Sessions is the hook through which a refs call authorises the reverse
// direction: while the call runs, Call.Node may fetch the blocks of
// Call.Root's DAG from upstream peers (preferably those at Call.Client)
// through Kitsune. The Bitswap relay implements it; this package only says
// when.
//
// The contract:
//
//   - Begin is called once for each admitted call: after the request was
//     validated, passed the per-client limit and got a node; never for a
//     call answered 4xx or 503 by Kitsune itself. It is called in the
//     request's goroutine, before the request is sent to the node, so the
//     node's first want (usually Root itself, while it resolves the path)
//     already finds the session open.
//   - Begin must return quickly: no network I/O, no waiting. It is called
//     concurrently, also for the same Root and node from several callers;
//     each Begin/end pair is independent (reference counting, if needed,
//     is the implementation's job).
//   - The end function it returns is called exactly once, in the same
//     goroutine, when the call is over: the node's answer was relayed to
//     the end, or the call was cut short (the client went away, the node
//     failed, the Timeout limit, Kitsune shutting down). Until then the
//     session is live. A nil end is allowed.
//   - Begin cannot refuse or delay the call. An implementation that will
//     not open a session (too many already, Node.Peer empty) returns a
//     no-op end: the refs call still runs, and the node can still fetch
//     whatever the fleet or its other peers have.
//   - Any grace period after end (wants already in flight, blocks on the
//     wire) is the implementation's to keep; the call itself is over.
type Sessions interface {
	Begin(call Call) (end func())
}

// SessionsFunc adapts a function to Sessions.
type SessionsFunc func(Call) func()

// Begin implements Sessions.
func (f SessionsFunc) Begin(c Call) func() { return f(c) }

// NoSessions opens no reverse session: refs calls still make the node walk
// the DAG, but its wants are not forwarded upstream. It is what a nil
// Config.Sessions means.
type NoSessions struct{}

// Begin implements Sessions.
func (NoSessions) Begin(Call) func() { return func() {} }
