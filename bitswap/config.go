package bitswap

import "time"

// Config holds the relay's limits.
type Config struct {
	// MaxWantsPerPeer caps one upstream peer's wantlist; entries past it are
	// ignored. Kubo's server allows 1024 per peer.
	MaxWantsPerPeer int
	// MaxInFlightPerNode caps the wants outstanding on one downstream node.
	// Kubo queues at most 1024 wants per peer and Kitsune is one peer to it,
	// so the default stays below that; excess wants wait in Kitsune.
	MaxInFlightPerNode int
	// MaxMessageSize drops upstream messages larger than this. The stream
	// reader already refuses anything over 4 MiB.
	MaxMessageSize int
	// MaxHaveBlockSize is the largest block sent in reply to a want-have,
	// instead of a HAVE; Kubo uses 1024 bytes. Zero means that default;
	// negative means never (a want-have always gets a HAVE).
	MaxHaveBlockSize int
	// FetchMisses makes a node fetch a block from the wider network when
	// every node said DONT_HAVE, before the client is told so.
	FetchMisses bool
	// MissFetchTimeout bounds one such fetch.
	MissFetchTimeout time.Duration
	// MissFetchesPerNode bounds the fetches in flight on one node.
	MissFetchesPerNode int
	// MissFetchRate and MissFetchBurst bound the miss fetches one upstream
	// peer's wants may cause (a token bucket: per second, and at once).
	// Broadcasts get a sixteenth of that: every Kubo client broadcasts
	// want-have (without asking for DONT_HAVE, boxo messagequeue.go) for
	// whatever it looks for, and each would make the fleet search the
	// network; but a broadcast is also how a Kubo client asks for a DAG's
	// root, and only a HAVE for the root brings its wants for the rest,
	// which are addressed to Kitsune (want-block, or want-have asking for
	// DONT_HAVE).
	MissFetchRate  float64
	MissFetchBurst int
	// CheckInterval is how often silent nodes are looked for.
	CheckInterval time.Duration
	// PeerBufferBytes caps the memory the blocks queued for one upstream
	// peer keep alive (a block parsed in place keeps its node message).
	// A peer reading slower than the fleet delivers gets further blocks
	// later (their wants are deferred and sent again once it caught up),
	// so memory stays bounded whatever the peer does.
	PeerBufferBytes int
	// ReplyMemoryBytes caps what the blocks queued for all upstream peers
	// keep alive together, each block counted once: past it each peer's
	// budget is its equal share of this (at most PeerBufferBytes), so
	// peers that read nothing cannot make the relay run out of memory
	// for everyone (replymem.go).
	ReplyMemoryBytes int
	// ExhaustedTTL is how long a want every node refused is kept for its
	// wanters (a block added to the fleet meanwhile still reaches them);
	// then it is dropped, as if cancelled.
	ExhaustedTTL time.Duration
	// RecentBlockBytes bounds the blocks kept after they were relayed, so
	// a want arriving just after its block went out (a flash crowd
	// fetching the same content) is answered without asking the fleet
	// again; RecentBlockTTL is how long an unused one stays. Negative
	// keeps none.
	RecentBlockBytes int
	RecentBlockTTL   time.Duration
	// RewantInterval is how long a want may stay unanswered on a node
	// before it is sent there again. A want, or the node's answer, can be
	// lost on the way (a failed send to the node, a reply stream reset
	// mid-message: Kubo forgets a want once it tried to send the block),
	// and a node that keeps answering other wants is never timed out, so
	// without this the want would wait for ever. Kubo merges a want it
	// still holds, so sending one again costs a few bytes.
	RewantInterval time.Duration
	// NodeBufferPoolBytes bounds the free node message buffers kept for
	// reuse (framepool.go); negative keeps none.
	NodeBufferPoolBytes int
}

// Defaults for Config.
const (
	DefaultMaxWantsPerPeer    = 1024
	DefaultMaxInFlightPerNode = 960
	DefaultMaxMessageSize     = 4 << 20
	DefaultMaxHaveBlockSize   = 1024
	DefaultMissFetchTimeout   = 30 * time.Second
	DefaultMissFetchesPerNode = 16
	DefaultMissFetchRate      = 64.0
	DefaultMissFetchBurst     = 128
	DefaultPeerBufferBytes    = 16 << 20
	// 1 GiB: 64 peers at their full 16 MiB, with distinct blocks, before
	// the shares begin; a flash crowd of a thousand on the same blocks
	// counts them once.
	DefaultReplyMemoryBytes = 1 << 30
	DefaultExhaustedTTL     = 2 * time.Minute
	DefaultRecentBlockBytes = 32 << 20
	DefaultRecentBlockTTL   = 10 * time.Second
	DefaultRewantInterval   = 15 * time.Second
	// 8 MiB is 32 of Kubo's 256 KiB blocks: buffers come back as the
	// replies carrying them are written (or leave the recent blocks), and
	// are taken again by the next messages.
	DefaultNodeBufferPoolBytes = 8 << 20
)

func (c *Config) fill() {
	orDefault(&c.MaxWantsPerPeer, DefaultMaxWantsPerPeer)
	orDefault(&c.MaxInFlightPerNode, DefaultMaxInFlightPerNode)
	orDefault(&c.MaxMessageSize, DefaultMaxMessageSize)
	orDefault(&c.MissFetchTimeout, DefaultMissFetchTimeout)
	orDefault(&c.MissFetchesPerNode, DefaultMissFetchesPerNode)
	orDefault(&c.MissFetchBurst, DefaultMissFetchBurst)
	if c.MissFetchRate <= 0 {
		c.MissFetchRate = DefaultMissFetchRate
	}
	orDefault(&c.PeerBufferBytes, DefaultPeerBufferBytes)
	orDefault(&c.ReplyMemoryBytes, DefaultReplyMemoryBytes)
	orDefault(&c.CheckInterval, 100*time.Millisecond)
	orDefault(&c.ExhaustedTTL, DefaultExhaustedTTL)
	orDefault(&c.RecentBlockTTL, DefaultRecentBlockTTL)
	orDefault(&c.RewantInterval, DefaultRewantInterval)
	// Negative stays negative (none): fill runs more than once (New and
	// newCore), and a 0 would become the default the second time.
	if c.RecentBlockBytes == 0 {
		c.RecentBlockBytes = DefaultRecentBlockBytes
	}
	if c.NodeBufferPoolBytes == 0 {
		c.NodeBufferPoolBytes = DefaultNodeBufferPoolBytes
	}
	// Negative stays negative, for the same reason: every comparison
	// against it (len <= MaxHaveBlockSize) is then false.
	if c.MaxHaveBlockSize == 0 {
		c.MaxHaveBlockSize = DefaultMaxHaveBlockSize
	}
}

// orDefault replaces a zero or negative setting with its default.
func orDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}
