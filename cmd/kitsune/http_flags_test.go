package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHTTPTrustedProxies(t *testing.T) {
	c := defaultRunCmd(t)
	c.HTTPTrusted = []string{"10.0.0.0/8", " 192.0.2.1 ", "", "::ffff:198.51.100.9"}
	cfg, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("198.51.100.9/32")}
	if !slices.Equal(cfg.HTTP.Trusted, want) {
		t.Fatalf("trusted %v, want %v", cfg.HTTP.Trusted, want)
	}
}

func TestHTTPFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*runCmd)
		addr string
		err  string
	}{
		{"off by default", func(*runCmd) {}, "", ""},
		{"bare port", func(c *runCmd) { c.HTTP = "8080" }, ":8080", ""},
		{"multiaddr", func(c *runCmd) { c.HTTP = "/ip4/127.0.0.1/tcp/8080" }, "127.0.0.1:8080", ""},
		{"UDP multiaddr", func(c *runCmd) { c.HTTP = "/ip4/127.0.0.1/udp/8080" }, "", "--http"},
		{"bad port", func(c *runCmd) { c.HTTP = "host:port" }, "", "--http"},
		{"zero per-IP", func(c *runCmd) { c.HTTP = "8080"; c.HTTPMaxPerIP = 0 }, "", "--http-max-per-ip"},
		{"negative timeout", func(c *runCmd) { c.HTTPTimeout = -time.Second }, "", "--http-timeout"},
		{"zero cache", func(c *runCmd) { c.HTTPCacheSize = 0 }, "", "--http-cache-size"},
		{"zero TTL", func(c *runCmd) { c.HTTPCacheTTL = 0 }, "", "--http-cache-ttl"},
		{"bad trusted proxy", func(c *runCmd) { c.HTTPTrusted = []string{"10.0.0.0/33"} }, "", "--http-trusted-proxies"},
		{"zero check timeout", func(c *runCmd) { c.HTTPCheckTime = 0 }, "", "--http-check-timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := defaultRunCmd(t)
			tc.set(c)
			cfg, err := c.config()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.HTTP.Addr != tc.addr {
				t.Fatalf("addr %q, want %q", cfg.HTTP.Addr, tc.addr)
			}
			if len(cfg.HTTP.Trusted) != 0 {
				t.Fatalf("trusted proxies by default: %v", cfg.HTTP.Trusted)
			}
			if cfg.HTTP.MaxPerIP != 16 || cfg.HTTP.Timeout != 10*time.Second || cfg.HTTP.CacheTTL != time.Minute {
				t.Fatalf("defaults changed: %+v", cfg.HTTP)
			}
		})
	}
}
