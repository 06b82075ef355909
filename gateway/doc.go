// Package gateway serves a trustless IPFS HTTP gateway (/ipfs/{cid} as
// application/vnd.ipld.raw and application/vnd.ipld.car) over the fleet.
//
// The HTTP side is boxo's gateway package with deserialized responses off,
// so it never renders HTML or directory listings. Its blocks come from
// Kitsune's own relay (bitswap.Relay.Fetch) through an exchange: the same
// pool policy, health, per-node caps and failover as Bitswap wants, and
// every block checked against its CID. Nothing is stored: the blockstore
// under the blockservice is a null one.
//
// Around boxo's handler: /ipfs/ only (no /ipns/, no DNSLink), GET and HEAD
// only, a per-client concurrency limit, and a bound on the bytes one
// response may carry (a CAR cut there is made invalid the way boxo marks a
// truncated stream).
package gateway
