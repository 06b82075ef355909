package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/ipfs/go-cid"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/metrics"
)

// adminGet fetches path from Kitsune's admin server.
func (k *kitsune) adminGet(t *testing.T, path string) (int, string) {
	t.Helper()
	if k.admin.url() == "" {
		t.Fatal("the admin server is off")
	}
	return getWith(t, http.DefaultClient, k.admin.url()+path)
}

// getWith fetches url with hc and returns the status and body.
func getWith(t *testing.T, hc *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// scrape reads /metrics into series -> value, keyed as the exposition
// format writes them: name{label="value",...}.
func (k *kitsune) scrape(t *testing.T) map[string]float64 {
	t.Helper()
	code, body := k.adminGet(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	out := make(map[string]float64)
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func (k *kitsune) status(t *testing.T) metrics.Status {
	t.Helper()
	code, body := k.adminGet(t, "/api/status")
	var s metrics.Status
	if err := json.Unmarshal([]byte(body), &s); code != http.StatusOK || err != nil {
		t.Fatalf("/api/status: %d %v\n%s", code, err, body)
	}
	return s
}

// dagStat is `ipfs dag stat` on the node that holds the DAG: how many
// blocks it has and their total size.
func dagStat(t *testing.T, ctx context.Context, n *kubotest.Node, c cid.Cid) (blocks int, size uint64) {
	t.Helper()
	var out struct {
		UniqueBlocks int
		TotalSize    uint64
	}
	if err := n.API.Request("dag/stat", c.String()).Option("progress", false).Exec(ctx, &out); err != nil {
		t.Fatal(err)
	}
	if out.UniqueBlocks == 0 {
		t.Fatalf("dag stat %s: no blocks", c)
	}
	return out.UniqueBlocks, out.TotalSize
}

func series(name string, labels ...string) string {
	var parts []string
	for i := 0; i+1 < len(labels); i += 2 {
		parts = append(parts, fmt.Sprintf("%s=%q", labels[i], labels[i+1]))
	}
	if len(parts) == 0 {
		return name
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

// After a fetch through Kitsune, /metrics counts exactly the blocks and
// bytes the client received; stopping a node changes its state metric;
// /readyz stays ready while one node is healthy and fails when none is.
func TestAdminMetricsAndReadiness(t *testing.T) {
	a := kubotest.Start(t, kubotest.Options{})
	b := kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)

	file := randomBytes(t, 3<<20+12345)
	fileCID, err := a.AddBytes(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	dagBlocks, dagBytes := dagStat(t, ctx, a, fileCID)

	k := startKitsune(t, []*kubotest.Node{a, b})
	if code, body := k.adminGet(t, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := k.adminGet(t, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz with two healthy nodes: %d %q", code, body)
	}
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	got, err := client.Cat(ctx, fileCID.String())
	if err != nil || len(got) != len(file) {
		t.Fatalf("cat through kitsune: %d bytes, %v", len(got), err)
	}
	waitRelayEmpty(t, k)
	// Blocks out are counted when the client confirms a reply message (it
	// closes the stream after reading it), which can come just after its
	// cat returns: wait for the count to reach the DAG, then check it exact.
	var m map[string]float64
	eventually(t, 10*time.Second, "every reply confirmed", func() bool {
		m = k.scrape(t)
		return m[series("kitsune_relay_blocks_total", "direction", "out")] >= float64(dagBlocks)
	})
	blocksOut := m[series("kitsune_relay_blocks_total", "direction", "out")]
	bytesOut := m[series("kitsune_relay_bytes_total", "direction", "out")]
	t.Logf("DAG: %d blocks, %d bytes; /metrics: %v blocks, %v bytes out", dagBlocks, dagBytes, blocksOut, bytesOut)
	if blocksOut != float64(dagBlocks) {
		t.Errorf("kitsune_relay_blocks_total{direction=out} = %v, the DAG has %d blocks", blocksOut, dagBlocks)
	}
	if bytesOut != float64(dagBytes) || bytesOut < float64(len(file)) {
		t.Errorf("kitsune_relay_bytes_total{direction=out} = %v, the DAG's blocks total %d bytes (file %d)", bytesOut, dagBytes, len(file))
	}
	if in := m[series("kitsune_relay_bytes_total", "direction", "in")]; in != bytesOut {
		t.Errorf("bytes in from the fleet %v, out to the one client %v", in, bytesOut)
	}
	if served := m[series("kitsune_downstream_answers_total", "node", a.APIURL, "type", "block")]; served != float64(dagBlocks) {
		t.Errorf("node a served %v blocks, want %d", served, dagBlocks)
	}
	if n := m[series("kitsune_downstream_want_latency_seconds_count", "node", a.APIURL)]; n < float64(dagBlocks) {
		t.Errorf("want latency histogram of node a has %v samples, want at least %d", n, dagBlocks)
	}
	if n := m[series("kitsune_upstream_peers", "transport", "tcp")]; n != 1 {
		t.Errorf("kitsune_upstream_peers{transport=tcp} = %v, want 1", n)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := m[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if !slices.ContainsFunc(mapsKeys(m), func(s string) bool { return strings.HasPrefix(s, "kitsune_build_info{") }) {
		t.Error("/metrics lacks kitsune_build_info")
	}
	for _, u := range []string{a.APIURL, b.APIURL} {
		if v := m[series("kitsune_downstream_node_state", "node", u, "state", "healthy")]; v != 1 {
			t.Fatalf("node %s healthy = %v before any was stopped", u, v)
		}
	}

	st := k.status(t)
	if len(st.Nodes) != 2 || st.Relay.BlocksOut != uint64(dagBlocks) || st.Upstream.ByTransport["tcp"] != 1 || st.PeerID != k.front.ID().String() {
		t.Fatalf("/api/status: %+v", st)
	}

	// One node stops: its state metric goes from healthy to unknown, and
	// Kitsune stays ready on the other.
	b.Stop()
	eventually(t, 20*time.Second, "node b's state metric leaving healthy", func() bool {
		m := k.scrape(t)
		return m[series("kitsune_downstream_node_state", "node", b.APIURL, "state", "healthy")] == 0 &&
			m[series("kitsune_downstream_node_state", "node", b.APIURL, "state", "unknown")] == 1 &&
			m[series("kitsune_downstream_node_connected", "node", b.APIURL)] == 0
	})
	m = k.scrape(t)
	if m[series("kitsune_downstream_nodes", "state", "healthy")] != 1 || m[series("kitsune_downstream_node_state", "node", a.APIURL, "state", "healthy")] != 1 {
		t.Fatalf("after stopping b: healthy nodes %v, a healthy %v", m[series("kitsune_downstream_nodes", "state", "healthy")],
			m[series("kitsune_downstream_node_state", "node", a.APIURL, "state", "healthy")])
	}
	if code, body := k.adminGet(t, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz with one healthy node: %d %q", code, body)
	}

	// The last node stops: not ready, and the answer says why.
	a.Stop()
	eventually(t, 20*time.Second, "/readyz failing", func() bool {
		code, _ := k.adminGet(t, "/readyz")
		return code == http.StatusServiceUnavailable
	})
	if _, body := k.adminGet(t, "/readyz"); !strings.Contains(body, "no healthy downstream node") {
		t.Fatalf("/readyz body %q does not say why", body)
	}
	if st := k.status(t); st.Ready || st.NotReadyReason == "" {
		t.Fatalf("/api/status ready %v reason %q", st.Ready, st.NotReadyReason)
	}
}

func mapsKeys(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

// chromium is where Debian's chromium package puts the browser; .ci/run
// installs it. The dashboard test fails without it: a skipped browser
// test would hide a broken dashboard.
const chromium = "/usr/bin/chromium"

// The dashboard in a real headless Chromium: both nodes' peer IDs, a
// non-zero throughput and a preload call appear after a fetch, the page
// loads nothing from elsewhere and throws nothing. A screenshot is kept in
// testdata/artifacts/dashboard.png.
func TestDashboardInBrowser(t *testing.T) {
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("the dashboard test needs Chromium at %s (apt-get install chromium): %v", chromium, err)
	}
	a := kubotest.Start(t, kubotest.Options{})
	b := kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	fileA, err := a.AddBytes(ctx, randomBytes(t, 6<<20))
	if err != nil {
		t.Fatal(err)
	}
	fileB, err := b.AddBytes(ctx, randomBytes(t, 3<<20))
	if err != nil {
		t.Fatal(err)
	}
	// A small file on both nodes, for a preload call that either can answer.
	shared := randomBytes(t, 300<<10)
	var sharedCID cid.Cid
	for _, n := range []*kubotest.Node{a, b} {
		if sharedCID, err = n.AddBytes(ctx, shared); err != nil {
			t.Fatal(err)
		}
	}
	k := startKitsune(t, []*kubotest.Node{a, b}, func(r *runCmd) {
		r.Preload = "127.0.0.1:0"
		r.HealthInterval = 500 * time.Millisecond // pings, for the nodes table
	})
	resp, err := http.Post(k.preload.URL()+"/api/v0/refs?r=true&arg="+sharedCID.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("preload call: %s", resp.Status)
	}
	eventually(t, 5*time.Second, "the preload call in /metrics", func() bool {
		m := k.scrape(t)
		return m[series("kitsune_preload_calls_total", "outcome", "ok")] == 1 && m["kitsune_preload_calls_active"] == 0 &&
			m["kitsune_preload_call_duration_seconds_count"] == 1
	})
	if err := client.Connect(ctx, k.info(t, "ws")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []cid.Cid{fileA, fileB} {
		if _, err := client.Cat(ctx, c.String()); err != nil {
			t.Fatal(err)
		}
	}
	// The sampler takes a reading every second.
	eventually(t, 10*time.Second, "a throughput sample above zero", func() bool {
		for _, s := range k.status(t).Throughput.Samples {
			if s.BytesOut > 0 {
				return true
			}
		}
		return false
	})

	bctx, noPageErrors := dashboardBrowser(t, ctx)

	if err := chromedp.Do(bctx, chromedp.Navigate(k.admin.url()+"/"),
		chromedp.WaitVisible(`#nodes tbody tr[data-peer]`)); err != nil {
		t.Fatalf("loading the dashboard: %v", err)
	}
	// Both nodes' peer IDs, their state and a throughput above zero
	// appear in the page.
	want := []string{a.ID.String(), b.ID.String()}
	var nodesText string
	deadline := time.Now().Add(15 * time.Second)
	for {
		nodesText, err = chromedp.Run(bctx, chromedp.Text(`#nodes`))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(nodesText, want[0]) && strings.Contains(nodesText, want[1]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the nodes table does not show both peer IDs %v:\n%s", want, nodesText)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if strings.Count(nodesText, "healthy") != 2 {
		t.Errorf("the nodes table does not show two healthy nodes:\n%s", nodesText)
	}
	peak, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.getElementById("peak-throughput").dataset.bytes`))
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := strconv.ParseFloat(peak, 64); v <= 0 {
		t.Fatalf("peak throughput in the page is %q", peak)
	}
	peakText, _ := chromedp.Run(bctx, chromedp.Text(`#peak-throughput`))
	relayed, _ := chromedp.Run(bctx, chromedp.Text(`#bytes-out`))
	transports, _ := chromedp.Run(bctx, chromedp.Text(`#transports`))
	calls, _ := chromedp.Run(bctx, chromedp.Text(`#preload`))
	if !strings.Contains(calls, "ok (200)") {
		t.Errorf("the preload table does not show the call:\n%s", calls)
	}
	if !strings.Contains(transports, "ws") {
		t.Errorf("the transports table does not show the client's ws connection:\n%s", transports)
	}
	// The chart was drawn: some pixel of the canvas is not blank.
	drawn, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`(() => {
		const c = document.getElementById("chart");
		const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
		for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true;
		return false;
	})()`))
	if err != nil || !drawn {
		t.Errorf("the throughput chart is blank (%v)", err)
	}
	t.Logf("dashboard: peak %s, relayed %s", peakText, relayed)

	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("..", "..", "testdata", "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dashboard.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	noPageErrors()
}

func TestAdminFlagsConfig(t *testing.T) {
	for in, want := range map[string]string{
		"":                        "",
		"off":                     "",
		"5080":                    "127.0.0.1:5080",
		"0.0.0.0:9090":            "0.0.0.0:9090",
		"[::1]:0":                 "[::1]:0",
		"/ip4/127.0.0.1/tcp/5081": "127.0.0.1:5081",
	} {
		f := adminFlags{Admin: in}
		got, err := f.config()
		if err != nil || got.Addr != want {
			t.Errorf("--admin %q: %q, %v; want %q", in, got.Addr, err, want)
		}
	}
	for _, bad := range []string{"nope", "127.0.0.1:99999", "/ip4/127.0.0.1/udp/5080"} {
		f := adminFlags{Admin: bad}
		if _, err := f.config(); err == nil || !strings.Contains(err.Error(), "--admin") {
			t.Errorf("--admin %q: error %v", bad, err)
		}
	}
	if d := defaultRunCmd(t); d.Admin != "127.0.0.1:5080" || d.LogFormat != "console" {
		t.Errorf("defaults: --admin %q --log-format %q", d.Admin, d.LogFormat)
	}
}

// The real binary: --log-format json writes one JSON object per line,
// with the pool's events at info level; --admin serves the dashboard and
// probes, and the address is printed at start.
func TestBinaryAdminAndJSONLogs(t *testing.T) {
	bin := buildBinary(t)
	node := kubotest.Start(t, kubotest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-d", node.APIURL, "-k", filepath.Join(t.TempDir(), "k.key"),
		"-l", "/ip4/127.0.0.1/tcp/0", "-w", "/ip4/127.0.0.1/tcp/0", "--admin", "127.0.0.1:0", "--log-format", "json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var admin string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, rest, ok := strings.Cut(sc.Text(), "Admin (dashboard, /metrics, /readyz) on "); ok {
			admin = rest
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	if admin == "" {
		t.Fatalf("no admin address printed; stderr:\n%s", stderr.String())
	}
	eventually(t, 20*time.Second, "/readyz answering 200", func() bool {
		resp, err := http.Get(admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	resp, err := http.Get(admin + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "<title>Kitsune</title>") {
		t.Fatalf("dashboard page: %s", page)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v; stderr:\n%s", err, stderr.String())
	}
	joined := false
	for _, line := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
		var entry map[string]any
		if err := json.Unmarshal([]byte(line), &entry); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if entry["msg"] == "downstream joined" && entry["level"] == "info" && entry["peer"] == node.ID.String() {
			joined = true
		}
	}
	if !joined {
		t.Fatalf("no JSON 'downstream joined' line; stderr:\n%s", stderr.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a process writing while the test
// reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
