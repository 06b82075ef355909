package downstream

import (
	"crypto/rand"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func TestTwins(t *testing.T) {
	id := func() peer.ID {
		k, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		p, err := peer.IDFromPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	me, other := id(), id()
	conn := func(p peer.ID, addr string) swarmConn { return swarmConn{Addr: addr, Peer: p.String()} }
	for _, c := range []struct {
		name   string
		listed []swarmConn
		mine   int
		want   int
	}{
		{"alone", []swarmConn{conn(me, "/ip4/10.0.0.5/tcp/4001"), conn(other, "/ip4/10.0.0.9/tcp/4001")}, 1, 0},
		{"a replica with my back key", []swarmConn{conn(me, "/ip4/10.0.0.5/tcp/4001"), conn(me, "/ip4/10.0.0.6/tcp/4001")}, 1, 1},
		{"two of my own", []swarmConn{conn(me, "/ip4/10.0.0.5/tcp/4001"), conn(me, "/ip4/10.0.0.5/udp/4001/quic-v1")}, 2, 0},
		{"not yet listed", []swarmConn{conn(other, "/ip4/10.0.0.9/tcp/4001")}, 1, 0},
		{"none", nil, 0, 0},
	} {
		if got := twins(c.listed, me, c.mine); got != c.want {
			t.Errorf("%s: %d twins, want %d", c.name, got, c.want)
		}
	}
}
