package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

func TestGatewayFlags(t *testing.T) {
	ok := gatewayFlags{Gateway: true, GatewayMaxPerIP: 8, GatewayQueuePerIP: 256, GatewayTimeout: 1, GatewayMaxDuration: 1, GatewayMaxBytes: 1}
	if c, err := (&gatewayFlags{}).config(); err != nil || c.On {
		t.Fatalf("off by default: %+v %v", c, err)
	}
	if c, err := ok.config(); err != nil || !c.On {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*gatewayFlags)
		want string
	}{
		{"zero per ip", func(f *gatewayFlags) { f.GatewayMaxPerIP = 0 }, "must be positive"},
		{"zero queue", func(f *gatewayFlags) { f.GatewayQueuePerIP = 0 }, "must be positive"},
		{"zero bytes", func(f *gatewayFlags) { f.GatewayMaxBytes = 0 }, "must be positive"},
		{"bad announce", func(f *gatewayFlags) { f.GatewayAnnounce = []string{"not a multiaddr"} }, "--http-gateway-announce"},
		{"not http", func(f *gatewayFlags) { f.GatewayAnnounce = []string{"/ip4/192.0.2.1/tcp/4001"} }, "not an /http"},
	} {
		f := ok
		tc.mod(&f)
		if _, err := f.config(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	f := ok
	f.GatewayAnnounce = []string{"/dns4/gw.example.com/tcp/443/tls/http"}
	if c, err := f.config(); err != nil || len(c.Announce) != 1 {
		t.Errorf("a /tls/http announce: %+v %v", c, err)
	}
}

// The gateway's addresses in records: nothing before the port is known,
// the bound IP when --http names one, else the port at each of the front
// host's announced IPs; a configured list wins.
func TestGatewayAddrs(t *testing.T) {
	h := testkit.Host(t, "/ip4/127.0.0.1/tcp/0")
	g := &gatewayAddrs{front: h}
	if a := g.addrs(); len(a) != 0 {
		t.Fatalf("before listening: %v", a)
	}
	g.listening(&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 8080})
	if a := g.addrs(); len(a) != 1 || !a[0].Equal(ma.StringCast("/ip4/127.0.0.1/tcp/8080/http")) {
		t.Errorf("bound to 127.0.0.1: %v", a)
	}
	g.listening(&net.TCPAddr{IP: net.IPv4zero, Port: 8080})
	if a := g.addrs(); len(a) != 1 || !a[0].Equal(ma.StringCast("/ip4/127.0.0.1/tcp/8080/http")) {
		t.Errorf("all interfaces, front on 127.0.0.1: %v", a)
	}
	g.announce = []ma.Multiaddr{ma.StringCast("/dns4/gw.example.com/tcp/443/tls/http")}
	if a := g.addrs(); len(a) != 1 || a[0].String() != "/dns4/gw.example.com/tcp/443/tls/http" {
		t.Errorf("configured: %v", a)
	}
}

// --http on /tls/http needs --tls-cert; with it, the port serves HTTPS.
func TestHTTPTLSFlags(t *testing.T) {
	c := defaultRunCmd(t)
	c.Downstream = []string{"/ip4/127.0.0.1/tcp/5001"}
	c.HTTP = "/ip4/127.0.0.1/tcp/0/tls/http"
	if _, err := c.config(); err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Errorf("no certificate: %v", err)
	}
	dir := t.TempDir()
	c.TLSCert, c.TLSKey = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, c.TLSCert, c.TLSKey, 1)
	cfg, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.HTTP.HTTPS || cfg.HTTP.TLS == nil || cfg.HTTP.Addr != "127.0.0.1:0" {
		t.Errorf("https %v, tls %v, addr %q", cfg.HTTP.HTTPS, cfg.HTTP.TLS != nil, cfg.HTTP.Addr)
	}
	c.HTTP = "127.0.0.1:0" // plain: the certificate is then unused
	if _, err := c.config(); err == nil {
		t.Error("a certificate nothing uses was accepted")
	}
}
