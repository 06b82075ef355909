package bench

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// ---- Scenario 6: hot content ----

// scenario6 is a flash crowd: every client fetches the same file at the
// same moment. Direct, they all ask one Kubo node; through Kitsune, in
// front of that node, the fleet should send each block once, the rest
// being served from wants already in flight. Kitsune's own counter of
// blocks received from the fleet says whether it did.
func (e *env) scenario6() (*ScenarioResult, error) {
	cfg := e.cfg
	sr := &ScenarioResult{
		ID: 6, Name: "hot-content", Runs: cfg.Runs34,
		Title: fmt.Sprintf("Hot content: %d clients fetch the same %s file at once", cfg.Clients, sizeText(cfg.HotFileSize)),
		Setup: "The file on one Kubo node. direct: every client connected to that node; kitsune: every client to Kitsune in front of it. " +
			"Clients connect first; the clock runs from the moment all start fetching until the last finishes. " +
			"*fleet blocks* is what Kitsune received from the node (`kitsune_relay_blocks_total{direction=\"in\"}`), against the blocks in the file.",
		keyMetrics: []string{"aggregate_mib_per_s", "failures", "fleet_blocks", "file_blocks", "wall_s", "client_p50_s", "client_first_s", "proxy_cpu_s_per_gib", "clients_cpu_s_per_gib", "node_cpu_s_per_gib", "proxy_peak_rss_mib"},
		vs: []vsSpec{
			{"aggregate", "aggregate_mib_per_s", pathOverDirect},
		},
	}
	sr.targets = func(sr *ScenarioResult) []Target {
		agg := sr.vsDirect(pathKitsune, "aggregate")
		fetched := sr.metric(pathKitsune, "fleet_blocks_per_file_block")
		fails := 0.0
		for _, p := range []string{pathDirect, pathKitsune} {
			if pr := sr.get(p); pr != nil {
				for _, r := range pr.Runs {
					fails += r.Metrics["failures"]
				}
			}
		}
		return []Target{
			{What: "fleet block fetches / blocks in the file", Want: "1.00 ± 0.01", Measured: rangeText(fetched, "%.2f"), Value: fetched.Max,
				Met: finite(fetched.Max) && fetched.Min >= 0.99 && fetched.Max <= 1.01},
			{What: "kitsune/direct aggregate throughput", Want: "≥ 1.5", Measured: rangeText(agg, "%.2f"), Value: agg.Median, Met: agg.Median >= 1.5},
			{What: "failed fetches", Want: "0", Measured: fmt.Sprintf("%.0f in %d runs", fails, sr.Runs), Value: fails, Met: fails == 0 && sr.get(pathKitsune) != nil},
		}
	}

	data := randomBytes(cfg.HotFileSize)
	want := sha256.Sum256(data)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	root, err := e.a.AddBytes(ctx, data)
	cancel()
	if err != nil {
		return nil, err
	}
	data = nil
	nodes := []*kubotest.Node{e.a}
	nodePIDs, err := e.nodePIDs(nodes)
	if err != nil {
		return nil, err
	}
	paths := []string{pathDirect, pathKitsune}
	for r := range cfg.Runs34 {
		for _, p := range rotate(paths, r) {
			e.record(sr, p, r, 3*time.Minute, func(ctx context.Context) (map[string]float64, error) {
				srv, clients, stop, err := e.crowdAt(ctx, p, nodes, cfg.Clients)
				defer stop()
				if err != nil {
					return nil, err
				}
				var fleet0 float64
				if srv != nil {
					if fleet0, err = srv.metric(ctx, blocksInSeries); err != nil {
						return nil, err
					}
				}
				settle()
				before, ok := e.proxyUsage(p, srv)
				others0, errOthers := sideUsage(nodePIDs)
				cf := fetchCrowd(ctx, clients, 2*time.Minute, true, func(ctx context.Context, _ int, c *client) (int, int64, error) {
					return c.fetchDAG(ctx, root)
				})
				errs := cf.errs
				after, ok2 := e.proxyUsage(p, srv)
				m := map[string]float64{"failures": float64(len(errs))}
				// The clients and the node share the machine's cores with
				// Kitsune: what each spent per GiB fetched.
				if others1, err := sideUsage(nodePIDs); err == nil && errOthers == nil && cf.bytesDAG > 0 {
					served := float64(cf.bytesDAG) / gib
					m["node_cpu_s"] = others1.node - others0.node
					m["client_cpu_s"] = others1.client - others0.client
					m["clients_cpu_s_per_gib"] = m["client_cpu_s"] / served
					m["node_cpu_s_per_gib"] = m["node_cpu_s"] / served
				}
				if srv != nil {
					fleet1, err := srv.metric(ctx, blocksInSeries)
					if err != nil {
						return nil, err
					}
					m["fleet_blocks"] = fleet1 - fleet0
				}
				for i, c := range clients {
					if sum, _, err := c.fileHash(ctx, root); err == nil && sum != want {
						errs = append(errs, fmt.Errorf("client %d: fetched file differs", i))
					}
				}
				m["failures"] = float64(len(errs))
				if srv != nil {
					// What the relay did in every run, not only a failed
					// one: a run that stalls without failing (one did, for
					// about 30 s with 90 fleet blocks for 65) shows its
					// rewants and timeouts here.
					e.logf("  %s run %d: %s", p, r+1, relaySummary(ctx, srv))
				}
				if len(errs) == len(clients) {
					return m, fmt.Errorf("every client failed; first: %w", errs[0])
				}
				wall := cf.last.Sub(cf.start).Seconds()
				m["wall_s"] = wall
				// When the clients finished, against the last: a long tail
				// is time the machine was not fully used.
				ends := summarize(cf.ends)
				m["client_first_s"], m["client_p50_s"] = ends.Min, ends.Median
				m["aggregate_mib_per_s"] = float64(cf.ok) * float64(cfg.HotFileSize) / mib / wall
				m["file_blocks"] = float64(cf.blocks)
				if v, ok := m["fleet_blocks"]; ok && cf.blocks > 0 {
					m["fleet_blocks_per_file_block"] = v / float64(cf.blocks)
				}
				if ok && ok2 {
					cpu := after.CPUSeconds - before.CPUSeconds
					m["proxy_cpu_s"] = cpu
					m["proxy_cpu_s_per_gib"] = cpu / (float64(cf.bytesDAG) / gib)
					m["proxy_peak_rss_mib"] = float64(after.PeakRSS) / mib
				}
				if len(errs) > 0 {
					sr.Notes = appendOnce(sr.Notes, fmt.Sprintf("%s run %d: %d of %d clients failed, first: %s", p, r+1, len(errs), len(clients), firstLine(errs[0].Error())))
				}
				return m, nil
			})
		}
	}
	return sr, nil
}

// blocksInSeries counts the blocks Kitsune received from the fleet.
const blocksInSeries = `kitsune_relay_blocks_total{direction="in"}`

// scrape reads Kitsune's /metrics.
func (s *server) scrape(ctx context.Context) (string, error) {
	if s.admin == "" {
		return "", fmt.Errorf("%s has no admin port", s.name)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.admin+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := s.httpClient().Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// metric reads one series (name and labels, as /metrics prints them) from
// Kitsune's admin port.
func (s *server) metric(ctx context.Context, series string) (float64, error) {
	body, err := s.scrape(ctx)
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s/metrics has no %s", s.admin, series)
}
