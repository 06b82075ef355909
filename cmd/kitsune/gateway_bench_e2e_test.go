package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ipfs/go-cid"

	"github.com/kitsune-lb/kitsune/internal/cartest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// carThroughput fetches url (a ?format=car request), checks the CAR whole
// against root, and returns its size and the rate in MiB/s.
func carThroughput(t *testing.T, url string, root cid.Cid) (int, float64) {
	t.Helper()
	start := time.Now()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s: %d %v", url, resp.StatusCode, err)
	}
	_, got, err := cartest.Read(bytes.NewReader(body), root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cartest.Complete(got, root); err != nil {
		t.Fatal(err)
	}
	return len(body), float64(len(body)) / (1 << 20) / took.Seconds()
}

// The figure in docs/performance.md: a 64 MiB file as a CAR through
// Kitsune's gateway (over the relay, from one Kubo node), with and without
// prefetch, against the same request to that node's own gateway,
// alternated, on loopback. One round
// by default; KITSUNE_GATEWAY_BENCH_RUNS=3 for more. Only correctness is
// asserted: timings on a shared machine are for reading, not for failing.
func TestGatewayCARThroughput(t *testing.T) {
	runs := 1
	if s := os.Getenv("KITSUNE_GATEWAY_BENCH_RUNS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 10 {
			t.Fatalf("KITSUNE_GATEWAY_BENCH_RUNS=%q: want 1 to 10", s)
		}
		runs = n
	}
	port := freePort(t)
	a := kubotest.Start(t, kubotest.Options{Config: map[string]any{"Addresses.Gateway": fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)}})
	ctx := testCtx(t, 5*time.Minute)
	root, err := a.AddBytes(ctx, randomBytes(t, 64<<20))
	if err != nil {
		t.Fatal(err)
	}
	k := startKitsune(t, []*kubotest.Node{a}, gatewayOn)
	flat := startKitsune(t, []*kubotest.Node{a}, gatewayOn, func(c *runCmd) { c.GatewayPrefetch = 0 })
	eventually(t, 30*time.Second, "node healthy", func() bool { return k.pool.HealthyCount() == 1 && flat.pool.HealthyCount() == 1 })
	direct := fmt.Sprintf("http://127.0.0.1:%d/ipfs/%s?format=car", port, root)
	via := k.http.URL() + "/ipfs/" + root.String() + "?format=car"
	viaFlat := flat.http.URL() + "/ipfs/" + root.String() + "?format=car"
	for i := 0; i < runs; i++ {
		n, kr := carThroughput(t, via, root)
		_, fr := carThroughput(t, viaFlat, root)
		_, dr := carThroughput(t, direct, root)
		t.Logf("run %d: CAR of %d bytes: Kitsune gateway %.1f MiB/s (no prefetch %.1f), Kubo's own gateway %.1f MiB/s; ratio %.2f (no prefetch %.2f)", i+1, n, kr, fr, dr, kr/dr, fr/dr)
	}
}
