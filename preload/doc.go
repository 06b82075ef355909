// Package preload serves the js-ipfs preload call, and only that call, on
// Kitsune's preload port.
//
// js-ipfs asked its hard-coded preload nodes to pull every DAG it added or
// fetched:
//
//	POST /api/v0/refs?r=true&arg=<cid>
//
// The node answering that call walks the DAG, which makes it fetch every
// block it lacks, over Bitswap, from whoever has it: usually the browser
// that just added the content. Kitsune takes over those nodes' identities,
// so it must answer the same call. The Handler re-issues the call to the
// RPC API of one downstream Kubo node, picked by a Chooser, and streams
// Kubo's answer back line by line as it arrives, Kubo's errors included.
//
// # What is served
//
// Only POST (and the CORS preflight OPTIONS) on /api/v0/refs. Every other
// path, every other RPC command (/api/v0/refs/local, /api/v0/shutdown, ...)
// gets 404 and never reaches a node: the preload port is public, the
// fleet's RPC API must not be. The request is re-issued, never forwarded:
// only the refs options below are copied, and none of the caller's headers
// (Kubo's RPC rejects browser Origin headers; Kitsune answers CORS itself).
//
//	arg        one CID, "<cid>/sub/path" or "/ipfs/<cid>/sub/path" (required)
//	r, recursive, u, unique, e, edges   booleans ("" means true, as in Kubo)
//	max-depth  integer, -1 for no limit (Kubo's default)
//	format     Kubo's edge format string, e.g. "<src> -> <dst>"
//
// Kubo v0.41 accepts exactly these for refs; other query parameters
// (encoding, stream-channels, timeout, ...) are dropped, and the call is
// always made with Kubo's JSON encoding.
//
// Answers: the node's status and body as Kubo sent them, one JSON object
// per line ({"Ref":"…","Err":""}), flushed per line. An error Kubo reports
// after the first line arrives, as with Kubo, in the X-Stream-Error HTTP
// trailer, which Kubo's and js-ipfs's clients read. Kitsune's own refusals
// use Kubo's error shape, {"Message":"…","Code":n,"Type":"error"}:
//
//	400  no arg, several args, a bad CID or a bad option value
//	404  any path but /api/v0/refs
//	405  any method but POST and OPTIONS (with Allow)
//	429  more concurrent calls from this client than MaxPerIP (Retry-After)
//	502  the node could not be reached
//	503  no node is connected (Retry-After)
//	504  the node sent nothing before Timeout
//
// A call that reaches Timeout after the node started answering ends
// cleanly: the lines so far, then X-Stream-Error naming the limit.
//
// # Clients and limits
//
// The client is the connection's remote IP. X-Forwarded-For is read only
// when that peer is in TrustedProxies, and then from the right: the first
// hop not itself a trusted proxy is the client. MaxPerIP counts concurrent
// calls per client address, per /64 for IPv6 (one host's usual share).
//
// # Reverse sessions
//
// The reason the call exists is the reverse direction: while a refs call
// runs, the chosen node may fetch that DAG's blocks from the client through
// Kitsune. This package does not move blocks; it tells a Sessions hook
// when a call starts and ends, and the Bitswap relay decides what that
// authorises. See Sessions for the exact contract.
package preload
