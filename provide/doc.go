// Package provide announces, on the DHT and under Kitsune's own peer ID and
// addresses, the content the fleet behind it holds: every node's recursive
// pins (read over its RPC API, refreshed periodically) and every root a
// preload call pulled into the fleet. Clients that find content through
// the DHT then find Kitsune and fetch through it.
//
// The announcing itself is go-libp2p-kad-dht's sweep provider (the one
// Kubo uses) over a dual (WAN and LAN) DHT in client mode on the front
// host, with its reprovide cycle. This package decides which keys it
// holds (Keys, a bounded set, pure) and keeps the provider in step with
// it (Announcer).
package provide
