// Package bench measures Kitsune against the alternatives on one machine,
// in one run: a client fetching straight from a Kubo node (direct), the
// same client going through Kitsune (kitsune), through a Kubo node peered
// with the fleet and warmed by a preload call (kubo-front), and through
// the thinnest terminating libp2p forwarder that can be written (floor).
//
// Every proxy under test runs as a process of its own (Kitsune from its
// built binary, the forwarder by re-running this binary), so its CPU time
// comes from its process CPU clock and its peak RSS from /proc; the Kubo
// nodes are real daemons (internal/kubotest); the clients are in-process go-libp2p hosts with
// boxo's Bitswap client. Only loopback traffic, apart from scenario 5's
// client in a network namespace across a shaped veth link; every loop is bounded in
// count and time.
//
// The scenarios and targets are those of the benchmark issue; Run returns
// the measurements, WriteFiles the JSON, Markdown and chart.
package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// Paths, in the order the tables show them.
const (
	pathDirect     = "direct"
	pathKitsune    = "kitsune"
	pathKitsuneTCP = "kitsune-tcp" // Kitsune made to reach the fleet over TCP
	pathKuboFront  = "kubo-front"
	pathFloor      = "floor"
)

// Config sizes a run. DefaultConfig is the benchmark; SmokeConfig
// a few seconds' version of it for the tests.
type Config struct {
	KitsuneBin string `json:"-"`
	// KitsuneFlags are added to Kitsune's command line.
	KitsuneFlags []string `json:"kitsune_flags,omitempty"`
	// Scenarios to run (1-6); empty means all.
	Scenarios []int `json:"scenarios"`
	// Runs of scenarios 1-2 (and 5) and of scenarios 3-4.
	Runs12 int `json:"runs_1_2"`
	Runs34 int `json:"runs_3_4"`

	FileSize  int `json:"s1_file_bytes"`
	Blocks    int `json:"s2_blocks"`
	BlockSize int `json:"s2_block_bytes"`
	// AppBlocks more blocks are fetched with boxo's Bitswap client, for
	// the latency an application sees (see wireClient).
	AppBlocks      int `json:"s2_app_blocks"`
	Clients        int `json:"s3_clients"`
	ClientFileSize int `json:"s3_file_bytes"`
	IdleConns      int `json:"s4_idle_conns"`
	// Settle is how long a process is left alone before its memory is
	// read in scenario 4.
	Settle time.Duration `json:"s4_settle_ns"`
	// WANFileSize is what scenario 5's client fetches across the WAN link.
	WANFileSize int `json:"s5_file_bytes"`
	// HotFileSize is the file every client of scenario 6 fetches.
	HotFileSize int `json:"s6_file_bytes"`
	// KuboOutstandingBytes is every Kubo node's
	// Internal.Bitswap.MaxOutstandingBytesPerPeer; 0 leaves Kubo's
	// default (1 MiB).
	KuboOutstandingBytes int `json:"kubo_outstanding_bytes"`

	Smoke bool `json:"smoke"`
	// Log receives a line per run; nil discards them.
	Log io.Writer `json:"-"`
	// Revision names the Kitsune build in the results.
	Revision string `json:"-"`
}

func DefaultConfig() Config {
	return Config{
		Runs12: 5, Runs34: 3,
		FileSize: 64 << 20, Blocks: 1000, BlockSize: 1 << 10, AppBlocks: 100,
		Clients: 100, ClientFileSize: 1 << 20, IdleConns: 2000,
		Settle: 2 * time.Second, WANFileSize: 64 << 20,
		KuboOutstandingBytes: DefaultKuboOutstandingBytes, HotFileSize: 16 << 20,
	}
}

func SmokeConfig() Config {
	return Config{
		Runs12: 1, Runs34: 1,
		FileSize: 2 << 20, Blocks: 30, BlockSize: 1 << 10, AppBlocks: 10,
		Clients: 6, ClientFileSize: 256 << 10, IdleConns: 40,
		Settle: 300 * time.Millisecond, WANFileSize: 1 << 20, Smoke: true,
		KuboOutstandingBytes: DefaultKuboOutstandingBytes, HotFileSize: 1 << 20,
	}
}

func (c Config) wants(s int) bool {
	if len(c.Scenarios) == 0 {
		return true
	}
	for _, x := range c.Scenarios {
		if x == s {
			return true
		}
	}
	return false
}

// env is the fleet the scenarios share: Kubo nodes started once, a fresh
// Kitsune or forwarder process per run.
type env struct {
	tb      testing.TB
	cfg     Config
	feat    kitsuneFeatures
	kuboBin string
	dir     string

	a, b  *kubotest.Node // the fleet; b only for scenario 3
	front *kubotest.Node // the kubo-front path's node, peered with the fleet
	idle  *kubotest.Node // scenario 4's node, restarted per run

	tcpAPIs map[*kubotest.Node]string // see tcpOnlyAPI
}

// tcpAPI returns n's RPC API as Kitsune sees it on the kitsune-tcp path.
func (e *env) tcpAPI(n *kubotest.Node) (string, error) {
	if u, ok := e.tcpAPIs[n]; ok {
		return u, nil
	}
	u, stop, err := tcpOnlyAPI(n)
	if err != nil {
		return "", err
	}
	e.tb.Cleanup(stop)
	if e.tcpAPIs == nil {
		e.tcpAPIs = map[*kubotest.Node]string{}
	}
	e.tcpAPIs[n] = u
	return u, nil
}

func (e *env) logf(format string, args ...any) {
	if e.cfg.Log != nil {
		fmt.Fprintf(e.cfg.Log, format+"\n", args...)
	}
}

// Run runs the configured scenarios. tb hosts the Kubo daemons (their temp
// dirs and cleanups): a *testing.T in tests, NewTB's in the command. An
// error means the harness itself could not run; a path that failed is
// recorded in the results instead.
func Run(tb testing.TB, cfg Config) (*Results, error) {
	tb.Helper()
	if cfg.KitsuneBin == "" {
		return nil, fmt.Errorf("no Kitsune binary given")
	}
	// The processes run in temp dirs: a relative path would not resolve.
	bin, err := filepath.Abs(cfg.KitsuneBin)
	if err != nil {
		return nil, err
	}
	cfg.KitsuneBin = bin
	feat, err := probeKitsune(cfg.KitsuneBin)
	if err != nil {
		return nil, err
	}
	e := &env{tb: tb, cfg: cfg, feat: feat, kuboBin: kubotest.Binary(tb), dir: tb.TempDir()}
	res := &Results{Started: time.Now().UTC(), Config: cfg, Machine: machine()}
	res.Machine.Kitsune = cfg.Revision
	if cfg.wants(5) {
		res.Machine.Network = "loopback; scenario 5 across network namespaces (tbf rate, toxiproxy delay)"
	}

	e.logf("starting Kubo nodes")
	e.a = e.startKubo()
	e.front = e.startKubo()
	res.Machine.Kubo = kuboVersion(e.a)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := peerWith(ctx, e.front, e.a); err != nil {
		return nil, fmt.Errorf("peering the front node: %w", err)
	}

	type scen struct {
		id  int
		run func() (*ScenarioResult, error)
	}
	for _, s := range []scen{{1, e.scenario1}, {2, e.scenario2}, {3, e.scenario3}, {4, e.scenario4}, {5, e.scenario5}, {6, e.scenario6}} {
		if !cfg.wants(s.id) {
			continue
		}
		t0 := time.Now()
		sr, err := s.run()
		if err != nil {
			return nil, fmt.Errorf("scenario %d: %w", s.id, err)
		}
		sr.Seconds = time.Since(t0).Seconds()
		sr.finish()
		res.Scenarios = append(res.Scenarios, sr)
		e.logf("scenario %d done in %.0fs", s.id, sr.Seconds)
	}
	res.Seconds = time.Since(res.Started).Seconds()
	res.Machine.LoadEnd = loadAvg()
	return res, nil
}

// record runs one path of one run under a time limit and files the
// outcome.
func (e *env) record(sr *ScenarioResult, path string, run int, limit time.Duration, f func(ctx context.Context) (map[string]float64, error)) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	t0 := time.Now()
	m, err := f(ctx)
	rr := RunResult{Run: run, Metrics: map[string]float64{}}
	for k, v := range m {
		if finite(v) {
			rr.Metrics[k] = v
		}
	}
	if err != nil {
		rr.Error = err.Error()
	}
	sr.path(path).Runs = append(sr.path(path).Runs, rr)
	var parts []string
	for _, k := range sr.keyMetrics {
		if v, ok := rr.Metrics[k]; ok {
			parts = append(parts, fmt.Sprintf("%s=%.3g", k, v))
		}
	}
	status := strings.Join(parts, " ")
	if err != nil {
		status = "FAILED: " + firstLine(err.Error())
	}
	e.logf("  s%d run %d %-10s %s [%.1fs]", sr.ID, run+1, path, status, time.Since(t0).Seconds())
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// settle collects the garbage in this process, where the clients run,
// just before a run reads its first CPU figures and starts its clock: a run
// then pays for its own garbage only, not for what the run before it (of
// another path: rotate) left behind, which one path would otherwise
// inherit more often than another.
func settle() { runtime.GC() }

// rotate starts run r's paths at a different one each run, so no path
// always runs first (on a cold cache) or last.
func rotate(paths []string, r int) []string {
	out := make([]string, 0, len(paths))
	for i := range paths {
		out = append(out, paths[(i+r)%len(paths)])
	}
	return out
}

// proxyUsage reads the CPU and memory of whatever stands between client
// and fleet on this path: the Kitsune or forwarder process, the front Kubo
// node, or nothing.
func (e *env) proxyUsage(path string, srv *server) (procUsage, bool) {
	switch {
	case srv != nil:
		u, err := srv.usage()
		return u, err == nil
	case path == pathKuboFront:
		pid, err := kuboPID(e.kuboBin, e.front.Dir)
		if err != nil {
			return procUsage{}, false
		}
		u, err := readUsage(pid)
		return u, err == nil
	}
	return procUsage{}, false
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Network: "loopback only", LoadStart: loadAvg()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %f kB", &kb); err == nil {
			m.MemoryGiB = kb / (1 << 20)
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
