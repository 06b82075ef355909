package main

import (
	"bytes"
	"context"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func TestPreloadFlags(t *testing.T) {
	for in, want := range map[string]string{
		"":                         "",
		"0":                        "",
		" 5002 ":                   ":5002",
		"127.0.0.1:5002":           "127.0.0.1:5002",
		"127.0.0.1:0":              "127.0.0.1:0",
		"[::1]:5002":               "[::1]:5002",
		":5002":                    ":5002",
		"/ip4/0.0.0.0/tcp/5002":    "0.0.0.0:5002",
		"/ip6/::1/tcp/5002":        "[::1]:5002",
		"localhost:5002":           "localhost:5002",
		"/ip4/127.0.0.1/udp/5002":  "!",
		"/dns4/example.com/tcp/80": "!",
		"70000":                    "!",
		"host":                     "!",
		"host:port":                "!",
		"-1":                       "!",
	} {
		got, err := preloadAddr(in)
		if want == "!" {
			if err == nil {
				t.Errorf("%q accepted as %q", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: got %q, %v; want %q", in, got, err, want)
		}
	}

	t.Setenv("KITSUNE_PRELOAD", "5002")
	t.Setenv("KITSUNE_PRELOAD_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.7,2001:db8::/32,::ffff:198.51.100.1")
	c := defaultRunCmd(t)
	if c.PreloadMaxPerIP != 4 || c.PreloadTimeout != 5*time.Minute {
		t.Fatalf("defaults: %d per IP, %v", c.PreloadMaxPerIP, c.PreloadTimeout)
	}
	cfg, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("198.51.100.1/32"),
	}
	if cfg.Preload.Addr != ":5002" || !slices.Equal(cfg.Preload.TrustedProxies, want) {
		t.Fatalf("from the environment: %+v", cfg.Preload)
	}

	for name, mod := range map[string]func(*runCmd){
		"-p":                        func(c *runCmd) { c.Preload = "nope" },
		"--preload-max-per-ip":      func(c *runCmd) { c.PreloadMaxPerIP = 0 },
		"--preload-timeout":         func(c *runCmd) { c.PreloadTimeout = 0 },
		"--preload-trusted-proxies": func(c *runCmd) { c.PreloadTrustedProxies = []string{"10.0.0.0/33"} },
	} {
		c := defaultRunCmd(t)
		mod(c)
		if _, err := c.config(); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: error %v does not name the flag", name, err)
		}
	}
}

// Wiring without a fleet: the port starts, prints its URL, answers 503
// while no node is connected, and closes with Kitsune.
func TestPreloadPortWiring(t *testing.T) {
	c := defaultRunCmd(t)
	c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	c.WS = nil
	c.Key = filepath.Join(t.TempDir(), "kitsune.key")
	c.Preload = "127.0.0.1:0"
	cfg, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	k, err := start(context.Background(), cfg, &out, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			k.stop()
			<-k.done
		}
	})
	m := regexp.MustCompile(`Preload API \(POST /api/v0/refs\) on (http://127\.0\.0\.1:\d+)`).FindStringSubmatch(out.String())
	if m == nil || m[1] != k.preload.URL() {
		t.Fatalf("startup output does not give the preload URL:\n%s", out.String())
	}
	resp, err := http.Post(m[1]+"/api/v0/refs?r=true&arg=QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("with no node connected: %d, want 503", resp.StatusCode)
	}
	k.stop()
	<-k.done
	stopped = true
	if _, err := http.Post(m[1]+"/api/v0/refs", "", nil); err == nil {
		t.Fatal("the preload port still answers after stop")
	}

	// Off by default.
	c.Preload = ""
	cfg, _ = c.config()
	if cfg.Preload.Addr != "" {
		t.Fatal("preload on without -p")
	}
}
