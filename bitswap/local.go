package bitswap

import (
	"encoding/binary"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// Wants no Kubo node will answer are dealt with by Kitsune itself: a Kubo
// server ignores them without any reply (boxo
// bitswap/server/internal/decision/engine.go, "Ignore identity CIDs" and
// maxCidSize), so forwarding one would hold a node slot until cancelled
// and make the silence check count the node's "silence" as failures. One
// peer sending thousands of them ejected a whole fleet.

// maxCidSize is boxo's defaults.MaximumAllowedCid (v0.43): four maximal
// varints and a 128-byte digest. A Kubo node ignores longer CIDs.
const maxCidSize = binary.MaxVarintLen64*4 + 128

// localAnswer is how Kitsune answers a want without the fleet.
type localAnswer int

const (
	// forward: an ordinary CID, for the fleet.
	forward localAnswer = iota
	// refuse: a CID no node would answer; DONT_HAVE when asked for one.
	refuse
	// inline: an identity CID, whose block is its own digest.
	inline
)

// classify tells how a wanted CID is answered.
func classify(c cid.Cid) localAnswer {
	if c.ByteLen() > maxCidSize {
		return refuse
	}
	if c.Prefix().MhType == mh.IDENTITY {
		return inline
	}
	return forward
}

// identityBlock is the block an identity CID names: the digest is the data.
func identityBlock(c cid.Cid) (blocks.Block, bool) {
	dm, err := mh.Decode(c.Hash())
	if err != nil {
		return nil, false
	}
	b, err := blocks.NewBlockWithCid(dm.Digest, c)
	if err != nil {
		return nil, false
	}
	return b, true
}
