package geoip

import (
	"net/netip"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Locate is the country a connection comes from: its remote address
// looked up in db. A relayed connection has no address of its own (the
// address is the relay's), so it is Unknown.
//
// The address is the one the connection arrives from. Behind a TCP load
// balancer that is the balancer's, not the client's: Kitsune does not
// read the PROXY protocol.
func Locate(db *DB, remote ma.Multiaddr) string {
	if _, err := remote.ValueForProtocol(ma.P_CIRCUIT); err == nil {
		return Unknown
	}
	ip, err := manet.ToIP(remote)
	if err != nil {
		return Unknown
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return Unknown
	}
	return db.Country(addr)
}

// Watch feeds t from h's connection notifications until the returned
// function is called.
func Watch(h host.Host, db *DB, t *Tracker) (stop func()) {
	n := &network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			t.Connected(c.RemotePeer(), Locate(db, c.RemoteMultiaddr()), time.Now())
		},
		DisconnectedF: func(_ network.Network, c network.Conn) {
			t.Disconnected(c.RemotePeer())
		},
	}
	h.Network().Notify(n)
	return func() { h.Network().StopNotify(n) }
}
