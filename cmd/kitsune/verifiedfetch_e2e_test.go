package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kitsune-lb/kitsune/internal/heliatest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// verifiedFetch runs testdata/verified-fetch/fetch.mjs (@helia/verified-fetch
// on the Node that testdata/helia installs) and decodes its answer.
func verifiedFetch(t *testing.T, args ...string) (status int, size int, sum string) {
	t.Helper()
	node := heliatest.Node(t)
	dir := filepath.Join(heliatest.Root(t), "testdata", "verified-fetch")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@helia", "verified-fetch", "package.json")); err != nil {
		t.Fatalf("%v: run `make verified-fetch` (npm ci --prefix testdata/verified-fetch) first", err)
	}
	ctx := testCtx(t, 2*time.Minute)
	cmd := exec.CommandContext(ctx, node, append([]string{filepath.Join(dir, "fetch.mjs")}, args...)...)
	cmd.Dir = dir
	if d := os.Getenv("KITSUNE_VERIFIED_FETCH_DEBUG"); d != "" {
		cmd.Env = append(os.Environ(), "DEBUG="+d) // e.g. helia*
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if f := os.Getenv("KITSUNE_VERIFIED_FETCH_LOG"); f != "" {
		_ = os.WriteFile(f, stderr.Bytes(), 0o644)
	}
	if err != nil {
		t.Fatalf("verified-fetch %v: %v\nstderr: %s", args, err, lastBytes(stderr.String(), 6000))
	}
	var out struct {
		Status int    `json:"status"`
		Bytes  int    `json:"bytes"`
		SHA256 string `json:"sha256"`
	}
	lines := bytes.Split(bytes.TrimSpace(stdout.Bytes()), []byte("\n"))
	if err := json.Unmarshal(lines[len(lines)-1], &out); err != nil {
		t.Fatalf("verified-fetch output %q: %v\nstderr: %s", stdout.String(), err, stderr.String())
	}
	return out.Status, out.Bytes, out.SHA256
}

// @helia/verified-fetch in Node, on an HTTP-only Helia (no libp2p, no
// Bitswap), fetches a file held only by the fleet through Kitsune's
// trustless gateway: once named as its gateway, and once knowing only
// Kitsune's /routing/v1, whose record offers the gateway
// (transport-ipfs-gateway-http). Every block comes through the relay's
// local fetches. Helia asks for all of a node's leaves at once: with more
// than --http-gateway-max-per-ip of them, those over wait for a slot
// (before, the first 429 made Helia 7.1.15 drop the gateway and never
// settle the fetch).
func TestVerifiedFetchThroughGateway(t *testing.T) {
	a := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	data := randomBytes(t, 2<<20+99)
	root, err := a.AddBytes(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	k := startKitsune(t, []*kubotest.Node{a}, gatewayOn)
	eventually(t, 30*time.Second, "node healthy", func() bool { return k.pool.HealthyCount() == 1 })

	for _, mode := range []struct {
		name string
		args []string
	}{
		{"gateway", []string{"--gateway", k.http.URL()}},
		{"router", []string{"--router", k.http.URL()}},
	} {
		before := k.relay.Counters().LocalBlocks.Load()
		bitswapBefore := k.relay.Counters().BlocksOut.Load()
		start := time.Now()
		status, size, sum := verifiedFetch(t, append(mode.args, root.String())...)
		if status != 200 || size != len(data) || sum != hex.EncodeToString(want[:]) {
			t.Fatalf("%s: status %d, %d bytes, sha256 %s; want 200, %d bytes, %x", mode.name, status, size, sum, len(data), want)
		}
		got := k.relay.Counters().LocalBlocks.Load() - before
		t.Logf("%s: %d blocks through the gateway, %d over Bitswap, in %v", mode.name, got, k.relay.Counters().BlocksOut.Load()-bitswapBefore, time.Since(start))
		if got == 0 {
			t.Errorf("%s: no block came through the gateway", mode.name)
		}
	}
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
