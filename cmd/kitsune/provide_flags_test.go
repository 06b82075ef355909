package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	dht "github.com/libp2p/go-libp2p-kad-dht"
)

// --provide and --bootstrap: bad multiaddrs and contradictions are refused
// with the flag named; the default bootstrap list is the Amino one.
func TestProvideFlagConfig(t *testing.T) {
	psk := filepath.Join(t.TempDir(), "swarm.key")
	if err := os.WriteFile(psk, []byte("/key/swarm/psk/1.0.0/\n/base16/\n"+strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const id = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
	for _, tc := range []struct {
		name    string
		set     func(*runCmd)
		wantErr string
		boot    int // bootstrap peers; -1: the Amino list
	}{
		{"off", func(*runCmd) {}, "", 0},
		{"bootstrap alone", func(c *runCmd) { c.Bootstrap = []string{"/ip4/127.0.0.1/tcp/4001/p2p/" + id} }, "--bootstrap needs --provide", 0},
		{"default list", func(c *runCmd) { c.Provide = true }, "", -1},
		{"named peers merge", func(c *runCmd) {
			c.Provide = true
			c.Bootstrap = []string{"/ip4/127.0.0.1/tcp/4001/p2p/" + id, " /ip4/127.0.0.1/udp/4001/quic-v1/p2p/" + id, ""}
		}, "", 1},
		{"not a multiaddr", func(c *runCmd) { c.Provide, c.Bootstrap = true, []string{"127.0.0.1:4001"} }, `--bootstrap "127.0.0.1:4001"`, 0},
		{"no peer ID", func(c *runCmd) { c.Provide, c.Bootstrap = true, []string{"/ip4/127.0.0.1/tcp/4001"} }, "ending in /p2p/<peer ID>", 0},
		{"no address", func(c *runCmd) { c.Provide, c.Bootstrap = true, []string{"/p2p/" + id} }, "no address to dial", 0},
		{"private DHT too", func(c *runCmd) { c.Provide, c.PrivateDHT, c.PSKFile = true, true, psk }, "choose one", 0},
		{"PSK without bootstrap", func(c *runCmd) { c.Provide, c.PSKFile = true, psk }, "needs --bootstrap", 0},
		{"PSK with bootstrap", func(c *runCmd) {
			c.Provide, c.PSKFile, c.Bootstrap = true, psk, []string{"/ip4/10.0.0.1/tcp/4001/p2p/" + id}
		}, "", 1},
		{"max keys", func(c *runCmd) { c.Provide, c.ProvideMaxKeys = true, 0 }, "--provide-max-keys must be positive", 0},
		{"refresh", func(c *runCmd) { c.Provide, c.ProvideRefresh = true, 0 }, "--provide-refresh must be positive", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := defaultRunCmd(t)
			c.Listen = []string{"/ip4/127.0.0.1/tcp/0"} // a PSK rules out QUIC
			c.WS = nil
			tc.set(c)
			cfg, err := c.config()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.boot == 0 && cfg.Provide != nil:
				t.Fatalf("provide on: %+v", cfg.Provide)
			case tc.boot == -1 && (cfg.Provide == nil || len(cfg.Provide.DHT.Bootstrap) != len(dht.GetDefaultBootstrapPeerAddrInfos())):
				t.Fatalf("provide config %+v, want the Amino bootstrap list", cfg.Provide)
			case tc.boot > 0 && (cfg.Provide == nil || len(cfg.Provide.DHT.Bootstrap) != tc.boot):
				t.Fatalf("provide config %+v, want %d bootstrap peers", cfg.Provide, tc.boot)
			}
		})
	}
}
