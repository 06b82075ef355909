package main

// mdnsFlags turn on zero-configuration discovery on the local network.
type mdnsFlags struct {
	MDNS bool `name:"mdns" env:"KITSUNE_MDNS" help:"Announce the front host on the local network with multicast DNS (libp2p's _p2p._udp service), so Kubo nodes on the same LAN (mDNS is on by default in Kubo) find and connect to Kitsune without configuration. Announces the TCP and QUIC listen addresses. Off by default."`
}
