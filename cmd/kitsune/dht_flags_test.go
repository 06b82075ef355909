package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --private-dht is only for a private upstream side: without --psk-file it
// is refused, as is --private-dht-all-records alone.
func TestPrivateDHTFlagConfig(t *testing.T) {
	psk := filepath.Join(t.TempDir(), "swarm.key")
	if err := os.WriteFile(psk, []byte("/key/swarm/psk/1.0.0/\n/base16/\n"+strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		set      func(*runCmd)
		wantErr  string
		wantDHT  bool
		wantRecs bool
	}{
		{"off", func(*runCmd) {}, "", false, false},
		{"public side", func(c *runCmd) { c.PrivateDHT = true }, "--private-dht needs --psk-file", false, false},
		{"records alone", func(c *runCmd) { c.PrivateDHTAllRecords = true; c.PSKFile = psk }, "--private-dht-all-records needs --private-dht", false, false},
		{"private", func(c *runCmd) { c.PrivateDHT = true; c.PSKFile = psk }, "", true, false},
		{"private, all records", func(c *runCmd) { c.PrivateDHT, c.PrivateDHTAllRecords, c.PSKFile = true, true, psk }, "", true, true},
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
			if (cfg.DHT != nil) != tc.wantDHT || (cfg.DHT != nil && cfg.DHT.AllRecords != tc.wantRecs) {
				t.Fatalf("DHT config %+v", cfg.DHT)
			}
		})
	}
}
