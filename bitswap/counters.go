package bitswap

import (
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/peer"
)

// Counters are cumulative totals, read with Counters().
type Counters struct {
	WantsReceived   atomic.Uint64 // want entries from upstream
	WantsForwarded  atomic.Uint64 // want entries sent downstream
	BlocksIn        atomic.Uint64 // blocks received from downstream
	BytesIn         atomic.Uint64 // block bytes received from downstream
	BlocksOut       atomic.Uint64 // blocks sent upstream
	BytesOut        atomic.Uint64 // block bytes sent upstream
	HavesOut        atomic.Uint64
	DontHavesOut    atomic.Uint64
	Failovers       atomic.Uint64 // wants moved to another node
	Unsolicited     atomic.Uint64 // blocks from downstream nobody wanted
	DroppedMessages atomic.Uint64 // upstream messages over the size limit
	DroppedWants    atomic.Uint64 // want entries over a peer's limit, or refused wants they evicted
	Timeouts        atomic.Uint64 // wants moved off a silent node
	Rewants         atomic.Uint64 // wants sent again to a node that left them unanswered (RewantInterval)
	// Messages lost between Kitsune and its nodes: wantlist messages whose
	// send failed (dropped: their wants are asked again by rewant), and
	// node streams reset (a message that did not parse, or no memory for
	// it in the back host's resource manager; Kubo has forgotten the wants
	// its blocks answered).
	NodeSendFailures atomic.Uint64
	NodeStreamErrors atomic.Uint64
	MissFetches      atomic.Uint64 // nodes asked to fetch a block nobody had
	MissFetched      atomic.Uint64 // ... that got it
	// Reverse sessions (preload): the fleet fetching from upstream peers.
	ReverseWants  atomic.Uint64 // downstream wants forwarded upstream
	ReverseBlocks atomic.Uint64 // blocks relayed from upstream to the fleet
	ReverseBytes  atomic.Uint64
	Deferred      atomic.Uint64 // blocks set aside for a peer reading too slowly
	HeldWants     atomic.Uint64 // wants held back until a peer's outbox has room for their blocks
	BadBlocks     atomic.Uint64 // blocks from a node that match nothing it was asked for
	// Reply messages an upstream peer cut off (reset the stream): their
	// blocks are sent again, smaller; those given up after
	// maxReplyFailures in a row are counted in RepliesGivenUp.
	RepliesCutOff  atomic.Uint64
	RepliesGivenUp atomic.Uint64 // blocks
	// Wants Kitsune answers itself, never forwarded (local.go).
	RefusedWants atomic.Uint64 // CIDs longer than a Kubo node accepts
	InlineBlocks atomic.Uint64 // identity CIDs answered from the CID
	// Wants answered from the blocks relayed lately (recent.go).
	RecentHits atomic.Uint64
	// Node messages of 8 KiB to 4 MiB read into a new buffer, or into one
	// an earlier message had and nobody holds any more (framepool.go);
	// and buffers never reused because a local fetch took their block.
	NodeBuffersNew     atomic.Uint64
	NodeBuffersReused  atomic.Uint64
	NodeBuffersEscaped atomic.Uint64
	// Local fetches (Fetch, the HTTP gateway's blocks).
	LocalBlocks atomic.Uint64 // blocks handed to local fetches
	LocalBytes  atomic.Uint64
}

// Stats is a snapshot of the relay's tables, for tests and status.
type Stats struct {
	Wants       int
	Refused     int // wants every node refused, kept for their wanters
	Peers       int
	Queued      int
	Outstanding map[peer.ID]int
	// RecentBlocks are the blocks kept after they were relayed.
	RecentBlocks int
	// Reverse sessions: open sessions, CIDs they authorise, and wants
	// from the fleet waiting on upstream peers.
	Sessions     int
	Authorised   int
	ReverseWants int
	// Local fetches (Fetch) not yet ended.
	Local int
	// Replies to upstream peers: peers with an outbox, block bytes queued
	// or in flight, and messages whose stream has not ended.
	ReplyPeers   int
	ReplyBytes   int
	ReplyStreams int
	// What those blocks keep alive, each block once however many peers
	// it is queued for (ReplyBytes counts it for each), and the peers
	// holding any: against ReplyMemoryBytes (replymem.go).
	ReplyMemory  int
	ReplyHolders int
}

// InFlight is what a graceful stop waits for: upstream wants not yet
// answered (not those every node refused: they are kept for their TTL,
// not waited on), the fleet's wants waiting on upstream peers, and
// replies not yet delivered: each message whose stream has not ended,
// and one more while blocks wait for a message. A want is answered once
// its block is queued for the peer, and over a slow link the peer's last
// 16 MiB (PeerBufferBytes) can take seconds more to reach it: closing
// then would cut its fetch short.
func (s Stats) InFlight() int {
	n := max(0, s.Wants-s.Refused) + s.ReverseWants + s.ReplyStreams
	if s.ReplyBytes > 0 && s.ReplyStreams == 0 {
		n++
	}
	return n
}
