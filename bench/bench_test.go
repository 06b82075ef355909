package bench_test

import (
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kitsune-lb/kitsune/bench"
)

func TestMain(m *testing.M) {
	// The floor forwarder is this test binary run again.
	bench.MaybeRunForwarder()
	os.Exit(m.Run())
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestSmoke runs every scenario on every path once, at tiny sizes, against
// the real Kitsune binary and real Kubo nodes, so the benchmark cannot rot
// between `make bench` runs. It checks that the harness works and its
// numbers are sane, never the targets: those depend on the machine.
func TestSmoke(t *testing.T) {
	start := time.Now()
	bin := filepath.Join(t.TempDir(), "kitsune")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/kitsune-lb/kitsune/cmd/kitsune").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built Kitsune in %v", time.Since(start).Round(time.Millisecond))

	cfg := bench.SmokeConfig()
	cfg.KitsuneBin = bin
	cfg.Log = logWriter{t}
	res, err := bench.Run(t, cfg)
	if err != nil {
		t.Fatal(err)
	}

	wantPaths := map[int][]string{
		1: {"direct", "kitsune", "kitsune-tcp", "kubo-front", "floor"},
		2: {"direct", "kitsune", "kitsune-tcp", "kubo-front", "floor"},
		3: {"direct", "kitsune", "kitsune-tcp", "kubo-front", "floor"},
		4: {"direct", "kitsune", "floor"},
		5: {"direct", "kitsune"},
		6: {"direct", "kitsune"},
	}
	// Metrics every path must have produced, and must be > 0.
	positive := map[int][]string{
		1: {"seconds", "mib_per_s", "cold_seconds"},
		2: {"p50_ms", "p99_ms", "app_p50_ms"},
		3: {"aggregate_mib_per_s", "wall_s"},
		4: {"held", "rss_held_mib", "new_client_ms_idle", "new_client_ms_held"},
		5: {"seconds", "mib_per_s"},
		6: {"aggregate_mib_per_s", "wall_s", "file_blocks"},
	}
	// Ratios against direct every other path must have, finite and > 0.
	ratios := map[int][]string{1: {"throughput", "cold_throughput"}, 2: {"p50_speed", "p99_speed"}, 3: {"aggregate"}, 4: {"rss_per_conn"}, 5: {"throughput"}, 6: {"aggregate"}}
	for _, s := range res.Scenarios[:min(3, len(res.Scenarios))] {
		// The kitsune-tcp path exists to reach the fleet over TCP.
		want := "kitsune-tcp reached the Kubo node over tcp."
		if !slices.Contains(s.Notes, want) {
			t.Errorf("scenario %d: no note %q in %q", s.ID, want, s.Notes)
		}
	}
	if len(res.Scenarios) != 6 {
		t.Fatalf("%d scenarios ran, want 6", len(res.Scenarios))
	}
	for _, s := range res.Scenarios {
		if len(s.Paths) != len(wantPaths[s.ID]) {
			t.Errorf("scenario %d: %d paths, want %v", s.ID, len(s.Paths), wantPaths[s.ID])
		}
		for i, p := range s.Paths {
			if i < len(wantPaths[s.ID]) && p.Path != wantPaths[s.ID][i] {
				t.Errorf("scenario %d: path %d is %s, want %s", s.ID, i, p.Path, wantPaths[s.ID][i])
			}
			if len(p.Runs) != s.Runs || p.Failed != 0 {
				t.Errorf("scenario %d %s: %d runs, %d failed: %+v", s.ID, p.Path, len(p.Runs), p.Failed, p.Runs)
				continue
			}
			for _, k := range positive[s.ID] {
				if m, ok := p.Metrics[k]; !ok || !(m.Median > 0) || m.N != s.Runs {
					t.Errorf("scenario %d %s: metric %s = %+v, want > 0 in every run", s.ID, p.Path, k, m)
				}
			}
			if p.Path != "direct" {
				for _, k := range ratios[s.ID] {
					if r, ok := p.VsDirect[k]; !ok || !(r.Median > 0) || r.Median > 1e6 {
						t.Errorf("scenario %d %s: ratio %s = %+v, want finite and > 0", s.ID, p.Path, k, r)
					}
				}
			}
			switch s.ID {
			case 3:
				if f := p.Metrics["failures"]; f.Max != 0 {
					t.Errorf("scenario 3 %s: %v failed fetches (notes: %v)", p.Path, f.Max, s.Notes)
				}
			case 4:
				if h := p.Metrics["held"]; h.Min != float64(cfg.IdleConns) {
					t.Errorf("scenario 4 %s: %v of %d idle connections held (notes: %v)", p.Path, h.Min, cfg.IdleConns, s.Notes)
				}
			case 6:
				if f := p.Metrics["failures"]; f.Max != 0 {
					t.Errorf("scenario 6 %s: %v failed fetches (notes: %v)", p.Path, f.Max, s.Notes)
				}
				// What the clients and the node spent per GiB was read.
				for _, k := range []string{"clients_cpu_s_per_gib", "node_cpu_s_per_gib"} {
					if m, ok := p.Metrics[k]; !ok || m.N != s.Runs || m.Min <= 0 {
						t.Errorf("scenario 6 %s: metric %s = %+v, want > 0 in every run", p.Path, k, m)
					}
				}
				// Kitsune's counter was read: the fleet sent at least the
				// file once.
				if fb, file := p.Metrics["fleet_blocks"], p.Metrics["file_blocks"]; p.Path == "kitsune" && !(fb.Min >= file.Median && file.Median > 0) {
					t.Errorf("scenario 6 kitsune: fleet blocks %+v for a file of %+v blocks", fb, file)
				}
			}
			// The proxies ran as processes of their own: their usage
			// must have been read.
			if p.Path == "kitsune" || p.Path == "kitsune-tcp" || p.Path == "floor" {
				key := "proxy_peak_rss_mib"
				if s.ID == 4 {
					key = "peak_rss_mib"
				}
				if m := p.Metrics[key]; !(m.Median > 1) {
					t.Errorf("scenario %d %s: %s = %+v", s.ID, p.Path, key, m)
				}
				// Scenario 1's first file, fetched before the timed one.
				if m := p.Metrics["cold_proxy_cpu_s_per_gib"]; s.ID == 1 && !(m.Min > 0 && m.N == s.Runs) {
					t.Errorf("scenario 1 %s: cold_proxy_cpu_s_per_gib = %+v, want > 0 in every run", p.Path, m)
				}
			}
		}
		if len(s.Targets) == 0 {
			t.Errorf("scenario %d has no targets", s.ID)
		}
		for _, tg := range s.Targets {
			if tg.Measured == "" || tg.Measured == "–" || strings.Contains(tg.Measured, "NaN") || strings.Contains(tg.Measured, "not measured") {
				t.Errorf("scenario %d target %q: measured %q", s.ID, tg.What, tg.Measured)
			}
		}
	}

	dir := t.TempDir()
	if err := res.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back bench.Results
	if err := json.Unmarshal(raw, &back); err != nil || len(back.Scenarios) != 6 {
		t.Errorf("results.json does not read back: %v (%d scenarios)", err, len(back.Scenarios))
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil || !strings.Contains(string(md), "## Targets") || !strings.Contains(string(md), "| kitsune |") {
		t.Errorf("results.md: %v\n%s", err, md)
	}
	f, err := os.Open(filepath.Join(dir, "ratios.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil || img.Bounds().Dx() < 500 {
		t.Errorf("ratios.png: %v", err)
	}
	t.Logf("smoke benchmark took %v", time.Since(start).Round(time.Millisecond))
}
