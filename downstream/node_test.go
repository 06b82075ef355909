package downstream

import (
	"slices"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
)

func maddrs(t *testing.T, ss ...string) []ma.Multiaddr {
	t.Helper()
	out := make([]ma.Multiaddr, len(ss))
	for i, s := range ss {
		out[i] = ma.StringCast(s)
	}
	return out
}

func maStrings(as []ma.Multiaddr) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.String()
	}
	return out
}

func TestPreferSameHost(t *testing.T) {
	const circuit = "/ip4/203.0.113.9/tcp/4001/p2p/12D3KooWGRUVh4QpBhBJa3CKYfFdbNVoUm8NydRrPgBdV3P2L8jR/p2p-circuit"
	kubo := maddrs(t,
		"/ip4/127.0.0.1/tcp/4001",
		"/ip4/10.0.1.42/tcp/4001",
		"/ip4/10.0.1.42/udp/4001/quic-v1",
		"/ip4/172.17.0.2/tcp/4001",
		"/ip6/::1/tcp/4001",
		"/dns4/kubo-0.kubo/tcp/4001",
		circuit,
	)
	for _, tc := range []struct {
		api  string
		in   []ma.Multiaddr
		want []string
	}{
		// The API's own IP: only the addresses on it.
		{"http://10.0.1.42:5001", kubo, []string{"/ip4/10.0.1.42/tcp/4001", "/ip4/10.0.1.42/udp/4001/quic-v1"}},
		// The API's DNS name.
		{"http://kubo-0.kubo:5001", kubo, []string{"/dns4/kubo-0.kubo/tcp/4001"}},
		// Loopback API: the loopback addresses.
		{"http://127.0.0.1:5001", kubo, []string{"/ip4/127.0.0.1/tcp/4001"}},
		{"http://[::1]:5001", kubo, []string{"/ip6/::1/tcp/4001"}},
		// Loopback API, node listing no loopback address: everything direct.
		{"http://127.0.0.1:5001", maddrs(t, "/ip4/10.0.1.42/tcp/4001", circuit), []string{"/ip4/10.0.1.42/tcp/4001"}},
		// A remote API on another address: no loopback, no relay.
		{"http://10.9.9.9:5001", kubo, []string{
			"/ip4/10.0.1.42/tcp/4001", "/ip4/10.0.1.42/udp/4001/quic-v1", "/ip4/172.17.0.2/tcp/4001", "/dns4/kubo-0.kubo/tcp/4001",
		}},
		// Only relay addresses: nothing usable.
		{"http://10.0.1.42:5001", maddrs(t, circuit), nil},
	} {
		got := maStrings(preferSameHost(tc.api, tc.in))
		if !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
			t.Errorf("preferSameHost(%s) = %q; want %q", tc.api, got, tc.want)
		}
	}
}

// TestPreferSameHostLocalhost: "localhost" is as much the loopback as
// 127.0.0.1. A Kubo node reached at http://localhost:5001 that listens on
// loopback only must keep its loopback addresses; today they are dropped as
// "some other machine's loopback" and the node can never be connected
// ("/api/v0/id lists no usable swarm address").
func TestPreferSameHostLocalhost(t *testing.T) {
	in := maddrs(t, "/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1", "/ip6/::1/tcp/4001")
	got := preferSameHost("http://localhost:5001", in)
	if len(got) == 0 {
		t.Fatalf("preferSameHost(http://localhost:5001, %v) = none; want the loopback addresses", in)
	}
}

func TestBackoff(t *testing.T) {
	b := backoff{min: 50 * time.Millisecond, max: 300 * time.Millisecond}
	var got []time.Duration
	for range 6 {
		got = append(got, b.next())
	}
	want := []time.Duration{50, 100, 200, 300, 300, 300}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(got, want) {
		t.Errorf("backoff = %v; want %v", got, want)
	}
	b.reset()
	if d := b.next(); d != 50*time.Millisecond {
		t.Errorf("after reset: %v; want min", d)
	}
}

func TestOptionsFill(t *testing.T) {
	var o Options
	o.fill()
	if _, ok := o.Policy.(*Affinity); !ok || o.Policy.(*Affinity).Epsilon != 0.25 {
		t.Errorf("default policy %#v; want affinity with ε 0.25", o.Policy)
	}
	if o.HealthInterval != 5*time.Second || o.HealthTimeout != 2*time.Second || o.EjectAfter != 3 ||
		o.EjectBase != 10*time.Second || o.EjectMax != 5*time.Minute || o.MinTimeout != 2*time.Second ||
		o.MaxTimeout != 10*time.Second || o.MinBackoff != 250*time.Millisecond || o.MaxBackoff != 30*time.Second ||
		o.DialTimeout != 10*time.Second {
		t.Errorf("defaults: %+v", o)
	}
	// A maximum below its minimum is raised to it.
	o = Options{MinTimeout: 5 * time.Second, MaxTimeout: time.Second, MinBackoff: time.Second, MaxBackoff: time.Millisecond}
	o.fill()
	if o.MaxTimeout != 5*time.Second || o.MaxBackoff != time.Second {
		t.Errorf("max below min: MaxTimeout %v, MaxBackoff %v", o.MaxTimeout, o.MaxBackoff)
	}
}

func TestPreferTCP(t *testing.T) {
	in := []ma.Multiaddr{
		ma.StringCast("/ip4/127.0.0.1/udp/4001/quic-v1"),
		ma.StringCast("/ip4/127.0.0.1/tcp/4001"),
		ma.StringCast("/ip4/127.0.0.1/tcp/4002/ws"),
	}
	got := preferTCP(in)
	if len(got) != 1 || got[0].String() != "/ip4/127.0.0.1/tcp/4001" {
		t.Fatalf("preferTCP(%v) = %v, want the plain TCP address only", in, got)
	}
	quicOnly := in[:1]
	if got := preferTCP(quicOnly); len(got) != 1 || !got[0].Equal(quicOnly[0]) {
		t.Fatalf("a node offering only QUIC must keep it, got %v", got)
	}
}
