package httpfront

import (
	"slices"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

// With the gateway on, Kitsune's record offers it beside Bitswap, with
// its HTTP address; with it off (or no address yet), Bitswap only.
func TestRecordGatewayTransport(t *testing.T) {
	tcp := ma.StringCast("/ip4/192.0.2.1/tcp/4001")
	web := ma.StringCast("/ip4/192.0.2.1/tcp/8080/http")
	var gw []ma.Multiaddr
	self := Self{ID: newPeerID(t), Addrs: func() []ma.Multiaddr { return []ma.Multiaddr{tcp} },
		GatewayAddrs: func() []ma.Multiaddr { return gw }}

	rec := self.record()
	if !slices.Equal(rec.Protocols, []string{TransportBitswap}) || len(rec.Addrs) != 1 {
		t.Fatalf("no gateway address yet: %v %v", rec.Protocols, rec.Addrs)
	}
	gw = []ma.Multiaddr{web}
	rec = self.record()
	if !slices.Equal(rec.Protocols, []string{TransportBitswap, TransportGatewayHTTP}) {
		t.Fatalf("protocols %v", rec.Protocols)
	}
	if len(rec.Addrs) != 2 || !rec.Addrs[0].Equal(tcp) || !rec.Addrs[1].Equal(web) {
		t.Fatalf("addrs %v", rec.Addrs)
	}
}
