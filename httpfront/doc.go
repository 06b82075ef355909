// Package httpfront serves Kitsune's HTTP front: the delegated routing API
// (/routing/v1, IPIP-337) that lets Helia and other HTTP-routing clients
// find Kitsune as the provider of what its fleet holds.
//
// The API itself is boxo's routing/http/server; this package supplies the
// answers. A providers query is answered with Kitsune's own peer record
// when a fleet node holds the CID locally, decided by an offline block
// check on the node the pool's policy picks (then, on a miss, a few other
// healthy nodes), remembered in a small bounded cache. No query ever
// starts a network-wide search.
//
// What Kitsune cannot answer from its own knowledge (other peers'
// records, IPNS, closest peers) Fleet asks of a fleet node's own
// /routing/v1, with failover, through boxo's client.
package httpfront
