package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	relayclient "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
)

func newKey(t testing.TB) crypto.PrivKey {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func addrs(t *testing.T, ss ...string) []ma.Multiaddr {
	t.Helper()
	var out []ma.Multiaddr
	for _, s := range ss {
		out = append(out, ma.StringCast(s))
	}
	return out
}

func newFront(t *testing.T, cfg FrontConfig) host.Host {
	t.Helper()
	if cfg.Key == nil {
		cfg.Key = newKey(t)
	}
	h, err := NewFront(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// client is a bare TCP host, optionally on a private network.
func client(t testing.TB, psk pnet.PSK, extra ...libp2p.Option) host.Host {
	t.Helper()
	opts := []libp2p.Option{
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}
	if psk != nil {
		opts = append(opts, libp2p.PrivateNetwork(psk))
	}
	h, err := libp2p.New(append(opts, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func connect(h host.Host, to host.Host) error {
	return connectWithin(h, to, 5*time.Second)
}

// connectWithin is for connections that should fail: a peer without the
// PSK talks plaintext multistream into an encrypted stream, and both sides
// wait for bytes that never make sense, so the failure is a timeout.
func connectWithin(h host.Host, to host.Host, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return h.Connect(ctx, peer.AddrInfo{ID: to.ID(), Addrs: to.Addrs()})
}

func randomPSK(t *testing.T) pnet.PSK {
	t.Helper()
	psk := make([]byte, 32)
	if _, err := rand.Read(psk); err != nil {
		t.Fatal(err)
	}
	return psk
}

func TestTransportOf(t *testing.T) {
	for addr, want := range map[string]string{
		"/ip4/0.0.0.0/tcp/4001":                      TCP,
		"/ip6/::/tcp/4001":                           TCP,
		"/ip4/0.0.0.0/udp/4001/quic-v1":              QUIC,
		"/ip4/0.0.0.0/tcp/8081/ws":                   WS,
		"/ip4/0.0.0.0/tcp/443/wss":                   WSS,
		"/ip4/0.0.0.0/tcp/443/tls/ws":                WSS,
		"/ip4/0.0.0.0/udp/4001/quic-v1/webtransport": WebTransport,
		"/ip4/0.0.0.0/udp/4002/webrtc-direct":        WebRTCDirect,
		"/ip4/0.0.0.0/udp/4001/quic":                 "error",
		"/ip4/0.0.0.0/udp/4001":                      "error",
		"/ip4/1.2.3.4/tcp/1/p2p/12D3KooWQYzRKxgERZrTQMnDoHh7ME7qkuYuJDfDjgLX8FZtuR8b": "error",
	} {
		got, err := TransportOf(ma.StringCast(addr))
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("TransportOf(%s) = %q (%v), want %q", addr, got, err, want)
		}
	}
}

// A transport that cannot carry a PSK is refused with an error naming it,
// never dropped: an operator who asked for QUIC must learn it is not there.
func TestPSKRefusesUDPTransports(t *testing.T) {
	psk := randomPSK(t)
	for _, a := range []string{"/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/udp/0/quic-v1/webtransport", "/ip4/127.0.0.1/udp/0/webrtc-direct"} {
		_, err := NewFront(FrontConfig{Key: newKey(t), PSK: psk, ListenAddrs: addrs(t, "/ip4/127.0.0.1/tcp/0", a)})
		if err == nil || !strings.Contains(err.Error(), a) || !strings.Contains(err.Error(), "private network") {
			t.Errorf("PSK with %s: got %v, want an error naming the address and the private network", a, err)
		}
	}
	if _, err := NewFront(FrontConfig{Key: newKey(t), ListenAddrs: addrs(t, "/ip4/127.0.0.1/tcp/0/tls/ws")}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("tls/ws without a certificate: got %v", err)
	}
}

// Only peers holding the front host's key complete a connection; the back
// host on a private network reaches only that network.
func TestPrivateNetworkBothSides(t *testing.T) {
	psk, other := randomPSK(t), randomPSK(t)
	front := newFront(t, FrontConfig{PSK: psk, ListenAddrs: addrs(t, "/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws")})
	if err := connect(client(t, psk), front); err != nil {
		t.Fatalf("peer with the key: %v", err)
	}
	if err := connectWithin(client(t, nil), front, time.Second); err == nil {
		t.Fatal("a peer without the key connected to the private front host")
	}
	if err := connectWithin(client(t, other), front, time.Second); err == nil {
		t.Fatal("a peer with another key connected to the private front host")
	}

	back, err := NewBack(BackConfig{Key: newKey(t), PSK: psk})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	private := client(t, psk, libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	public := client(t, nil, libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err := connect(back, private); err != nil {
		t.Fatalf("private back host to a node with the key: %v", err)
	}
	if err := connectWithin(back, public, time.Second); err == nil {
		t.Fatal("private back host connected to a public node")
	}
}

func TestLoadPSKAndFingerprint(t *testing.T) {
	dir := t.TempDir()
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	path := filepath.Join(dir, "swarm.key")
	if err := os.WriteFile(path, []byte("/key/swarm/psk/1.0.0/\n/base16/\n"+hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	psk, err := LoadPSK(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(psk) != string(key) {
		t.Fatalf("decoded %x, want %x", []byte(psk), key)
	}
	if fp := PSKFingerprint(psk); len(fp) != 16 || hex.EncodeToString(fp) == hex.EncodeToString(PSKFingerprint(randomPSK(t))) {
		t.Fatalf("fingerprint %x", fp)
	}
	bad := filepath.Join(dir, "bad.key")
	_ = os.WriteFile(bad, []byte("hello"), 0o600)
	if _, err := LoadPSK(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("bad key: %v", err)
	}
	if _, err := LoadPSK(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing key: %v", err)
	}
}

// The per-IP limit holds for addresses go-libp2p would otherwise cap at 8,
// a network limit overrides it for a load balancer's address, and
// loopback stays unlimited unless named.
func TestPerIPLimits(t *testing.T) {
	rm, err := Limits{ConnsPerIP: 3, Networks: []NetworkLimit{
		{Prefix: netip.MustParsePrefix("198.51.100.7/32"), Conns: 20},
		{Prefix: netip.MustParsePrefix("127.0.0.2/32"), Conns: 1},
	}}.withDefaults().resourceManager()
	if err != nil {
		t.Fatal(err)
	}
	defer rm.Close()
	open := func(ip string) (network.ConnManagementScope, error) {
		return rm.OpenConnection(network.DirInbound, true, ma.StringCast("/ip4/"+ip+"/tcp/1234"))
	}
	count := func(ip string, n int) int {
		ok := 0
		for range n {
			if _, err := open(ip); err == nil {
				ok++
			}
		}
		return ok
	}
	if got := count("203.0.113.5", 5); got != 3 {
		t.Errorf("203.0.113.5: %d of 5 connections admitted, want 3", got)
	}
	if got := count("203.0.113.6", 3); got != 3 {
		t.Errorf("another address: %d of 3 admitted, want 3", got)
	}
	if got := count("198.51.100.7", 20); got != 20 {
		t.Errorf("load balancer address: %d of 20 admitted, want 20", got)
	}
	if got := count("127.0.0.1", 50); got != 50 {
		t.Errorf("loopback: %d of 50 admitted, want all", got)
	}
	if got := count("127.0.0.2", 3); got != 1 {
		t.Errorf("127.0.0.2/32=1: %d of 3 admitted, want 1", got)
	}
	// A released connection frees its slot.
	s, err := open("203.0.113.9")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = open("203.0.113.9")
	_, _ = open("203.0.113.9")
	if _, err := open("203.0.113.9"); err == nil {
		t.Fatal("fourth connection admitted")
	}
	s.Done()
	if _, err := open("203.0.113.9"); err != nil {
		t.Fatalf("after one closed: %v", err)
	}
}

func TestLimitsValidate(t *testing.T) {
	for _, l := range []Limits{
		{Conns: -1},
		{ConnsPerIP: -3},
		{Streams: 10, StreamsPerPeer: 20},
		{Networks: []NetworkLimit{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Conns: -1}}},
		{Networks: []NetworkLimit{{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Conns: 1}, {Prefix: netip.MustParsePrefix("10.1.0.0/8"), Conns: 2}}},
	} {
		if err := l.withDefaults().Validate(); err == nil {
			t.Errorf("%+v: no error", l)
		}
	}
	if err := DefaultLimits().Validate(); err != nil {
		t.Fatal(err)
	}
}

// Announce addresses replace the listen addresses in Addrs (what identify
// sends); a /webtransport announce gets the certificate hashes.
func TestAnnounce(t *testing.T) {
	h := newFront(t, FrontConfig{
		ListenAddrs:    addrs(t, "/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1/webtransport"),
		Announce:       addrs(t, "/dns4/preload.example.org/tcp/443/wss", "/dns4/preload.example.org/udp/443/quic-v1/webtransport"),
		AppendAnnounce: addrs(t, "/ip4/192.0.2.1/tcp/4001"),
	})
	got := map[string]bool{}
	for _, a := range h.Addrs() {
		got[a.String()] = true
	}
	if !got["/dns4/preload.example.org/tcp/443/wss"] || !got["/ip4/192.0.2.1/tcp/4001"] || len(got) != 3 {
		t.Fatalf("Addrs() = %v", h.Addrs())
	}
	wt := false
	for a := range got {
		if strings.HasPrefix(a, "/dns4/preload.example.org/udp/443/quic-v1/webtransport/certhash/") {
			wt = true
		}
	}
	if !wt {
		t.Fatalf("announced webtransport address has no certhash: %v", h.Addrs())
	}
	for _, a := range ListenAddrs(h) {
		if strings.Contains(a.String(), "preload.example.org") {
			t.Fatalf("ListenAddrs includes the announced %s", a)
		}
	}
	if _, err := NewFront(FrontConfig{Key: newKey(t), ListenAddrs: addrs(t, "/ip4/127.0.0.1/tcp/0"),
		Announce: addrs(t, "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWQYzRKxgERZrTQMnDoHh7ME7qkuYuJDfDjgLX8FZtuR8b")}); err == nil {
		t.Fatal("announce with /p2p/ accepted")
	}
}

// The relay service is off unless asked for; on, a peer can reserve a slot
// and another reach it through Kitsune.
func TestRelayService(t *testing.T) {
	listen := addrs(t, "/ip4/127.0.0.1/tcp/0")
	off := newFront(t, FrontConfig{ListenAddrs: listen})
	a := client(t, nil, libp2p.EnableRelay())
	if err := connect(a, off); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := relayclient.Reserve(ctx, a, peer.AddrInfo{ID: off.ID(), Addrs: off.Addrs()}); err == nil {
		t.Fatal("reserved a slot on a front host without --relay")
	}

	on := newFront(t, FrontConfig{ListenAddrs: listen, Relay: &RelayConfig{MaxReservations: 4, Duration: time.Minute, Data: 1 << 20}})
	var res *relayclient.Reservation
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if res, err = relayclient.Reserve(ctx, a, peer.AddrInfo{ID: on.ID(), Addrs: on.Addrs()}); err == nil {
			break
		}
		// The service starts once the host's reachability event is out.
		if time.Now().After(deadline) {
			t.Fatalf("reserve: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if res.LimitDuration != time.Minute || res.LimitData != 1<<20 {
		t.Errorf("reservation limits %v / %d bytes, want 1m / 1 MiB", res.LimitDuration, res.LimitData)
	}
	b := client(t, nil, libp2p.EnableRelay())
	circuit := ma.StringCast("/p2p/" + on.ID().String() + "/p2p-circuit")
	var relayAddrs []ma.Multiaddr
	for _, x := range on.Addrs() {
		relayAddrs = append(relayAddrs, x.Encapsulate(circuit))
	}
	if err := b.Connect(ctx, peer.AddrInfo{ID: a.ID(), Addrs: relayAddrs}); err != nil {
		t.Fatalf("connect through the relay: %v", err)
	}
	if conns := b.Network().ConnsToPeer(a.ID()); len(conns) == 0 || !conns[0].Stat().Limited {
		t.Fatalf("connection to a is not a relayed one: %v", conns)
	}
}

func selfSigned(t *testing.T, dir, name string, serial int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// A certificate renewed in place is served without a restart; a broken
// renewal keeps the old one in service.
func TestTLSReload(t *testing.T) {
	dir := t.TempDir()
	cf, kf := selfSigned(t, dir, "first", 1)
	conf, err := loadTLS(cf, kf, 0)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() int64 {
		c, err := conf.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		x, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return x.SerialNumber.Int64()
	}
	if s := serial(); s != 1 {
		t.Fatalf("serial %d, want 1", s)
	}
	selfSigned(t, dir, "second", 2)
	future := time.Now().Add(time.Minute)
	_ = os.Chtimes(cf, future, future)
	_ = os.Chtimes(kf, future, future)
	if s := serial(); s != 2 {
		t.Fatalf("after renewal: serial %d, want 2", s)
	}
	_ = os.WriteFile(kf, []byte("broken"), 0o600)
	later := future.Add(time.Minute)
	_ = os.Chtimes(kf, later, later)
	if s := serial(); s != 2 {
		t.Fatalf("after a broken renewal: serial %d, want the previous 2", s)
	}
	if _, err := LoadTLS(cf, filepath.Join(dir, "nope.pem")); err == nil || !strings.Contains(err.Error(), "nope.pem") {
		t.Fatalf("missing key file: %v", err)
	}
}

// The back host dials with TLS 1.3 whenever the node offers it, as Kubo
// does: AES-GCM costs a fraction of Noise's ChaCha20-Poly1305 per byte,
// and the dialer's preference decides. A node offering only Noise is
// still reached, over Noise.
func TestBackHostPrefersTLS(t *testing.T) {
	for _, tc := range []struct {
		name string
		node []libp2p.Option
		psk  pnet.PSK
		want string
	}{
		// Kubo's own order puts TLS first too; Noise first here shows the
		// dialer's order is what counts.
		{"noise and tls", []libp2p.Option{libp2p.Security(noise.ID, noise.New), libp2p.Security(libp2ptls.ID, libp2ptls.New)}, nil, libp2ptls.ID},
		{"noise and tls, private network", []libp2p.Option{libp2p.Security(noise.ID, noise.New), libp2p.Security(libp2ptls.ID, libp2ptls.New)}, randomPSK(t), libp2ptls.ID},
		{"noise only", []libp2p.Option{libp2p.Security(noise.ID, noise.New)}, nil, noise.ID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			back, err := NewBack(BackConfig{Key: newKey(t), PSK: tc.psk})
			if err != nil {
				t.Fatal(err)
			}
			defer back.Close()
			node := client(t, tc.psk, append(tc.node, libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))...)
			if err := connect(back, node); err != nil {
				t.Fatal(err)
			}
			conns := back.Network().ConnsToPeer(node.ID())
			if len(conns) == 0 {
				t.Fatal("no connection to the node")
			}
			if got := string(conns[0].ConnState().Security); got != tc.want {
				t.Errorf("security %q, want %q", got, tc.want)
			}
		})
	}
}
