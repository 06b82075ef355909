package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// Profile records Kitsune's profiles under the benchmark's loads, through
// its admin port's /debug/pprof: a CPU profile while one client after
// another fetches scenario 1's file, one while rounds of scenario 3's
// clients fetch theirs, and a heap profile with scenario 4's idle
// connections held. Files: cpu-throughput.pprof, cpu-many-clients.pprof,
// heap-idle.pprof, cpu-hot.pprof (scenario 6's crowd fetching the same
// file at once) in dir, and cpu-throughput-floor.pprof: the floor
// forwarder under scenario 1's load for the same time, to set Kitsune's
// profile against, each only when cfg asks for that scenario (all
// when it names none). Read them with `go tool pprof -top FILE`.
func Profile(tb testing.TB, cfg Config, dir string, seconds int) error {
	tb.Helper()
	bin, err := filepath.Abs(cfg.KitsuneBin)
	if err != nil {
		return err
	}
	cfg.KitsuneBin = bin
	feat, err := probeKitsune(bin)
	if err != nil {
		return err
	}
	if !feat.admin {
		return fmt.Errorf("%s has no --admin (and so no /debug/pprof)", bin)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// Scenario 6 is about the recent blocks: its profile keeps them as
	// the scenario does (flags as given).
	hot := cfg
	if feat.recent {
		// The other loads fetch the same files again and again: Kitsune
		// would answer the repeats from its recent blocks instead of
		// relaying them, and the profile would show a cache, not the relay.
		cfg.KitsuneFlags = append(slices.Clone(cfg.KitsuneFlags), "--recent-block-bytes=0")
	}
	e := &env{tb: tb, cfg: cfg, feat: feat, kuboBin: kubotest.Binary(tb), dir: tb.TempDir()}
	e.a, e.b = e.startKubo(), e.startKubo()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	if cfg.wants(6) {
		he := *e
		he.cfg = hot
		if err := he.profileHot(ctx, dir, seconds); err != nil {
			return err
		}
	}

	if cfg.wants(1) {
		if err := e.profileThroughput(ctx, dir, seconds); err != nil {
			return err
		}
	}
	if cfg.wants(2) {
		if err := e.profileLatency(ctx, dir, seconds); err != nil {
			return err
		}
	}
	if cfg.wants(3) {
		if err := e.profileManyClients(ctx, dir, seconds); err != nil {
			return err
		}
	}
	if cfg.wants(4) {
		return e.profileIdle(ctx, dir)
	}
	return nil
}

// profileThroughput: one client after another fetches scenario 1's file.
func (e *env) profileThroughput(ctx context.Context, dir string, seconds int) error {
	root, err := e.a.AddBytes(ctx, randomBytes(e.cfg.FileSize))
	if err != nil {
		return err
	}
	err = e.profileCPU(ctx, []*kubotest.Node{e.a}, filepath.Join(dir, "cpu-throughput.pprof"), seconds, func(ctx context.Context, k peer.AddrInfo) error {
		_, err := fetchOnce(ctx, k, root)
		return err
	})
	if err != nil {
		return fmt.Errorf("throughput profile: %w", err)
	}
	if err := e.profileFloor(ctx, e.a, root, filepath.Join(dir, "cpu-throughput-floor.pprof"), seconds); err != nil {
		return fmt.Errorf("floor throughput profile: %w", err)
	}
	return nil
}

// profileFloor runs scenario 1's load through the floor forwarder for
// seconds, the forwarder writing its own CPU profile (it has no admin
// port), and logs its CPU seconds per GiB relayed as profileCPU does
// Kitsune's: with both in one run, what Kitsune spends beyond the floor
// shows function by function (`go tool pprof -top -diff_base`).
func (e *env) profileFloor(ctx context.Context, node *kubotest.Node, root cid.Cid, file string, seconds int) error {
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	srv, err := startForwarderWith(forwarderConfig{Listen: "/ip4/127.0.0.1/tcp/0", Targets: []peer.AddrInfo{tcpAddrInfo(node)}, CPUProfile: abs}, e.tb.TempDir())
	if err != nil {
		return err
	}
	defer srv.stop()
	u0, err := srv.usage()
	if err != nil {
		return err
	}
	var relayed int64
	rounds := 0
	for deadline := time.Now().Add(time.Duration(seconds) * time.Second); time.Now().Before(deadline); rounds++ {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		n, err := fetchOnce(lctx, srv.info, root)
		cancel()
		if err != nil {
			return err
		}
		relayed += n
	}
	u1, err := srv.usage()
	if err != nil {
		return err
	}
	srv.stop() // the forwarder writes its profile as it exits
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("the forwarder wrote no profile: %w", err)
	}
	gib := float64(relayed) / (1 << 30)
	e.logf("  %s: %d rounds of load; %.2f GiB relayed, %.2f CPU-s, %.2f CPU-s per GiB",
		filepath.Base(file), rounds, gib, u1.CPUSeconds-u0.CPUSeconds, (u1.CPUSeconds-u0.CPUSeconds)/gib)
	return nil
}

// profileLatency: scenario 2's small blocks, fetched one after another
// on one connection (the same blocks again each round), with a CPU
// profile and also an execution trace of the first seconds, where the
// hand-offs and waits per block show (`go tool trace`).
func (e *env) profileLatency(ctx context.Context, dir string, seconds int) error {
	blocks, err := e.putBlocks(e.cfg.Blocks, e.cfg.BlockSize)
	if err != nil {
		return err
	}
	err = e.profileCPU(ctx, []*kubotest.Node{e.a}, filepath.Join(dir, "cpu-latency.pprof"), seconds, func(ctx context.Context, k peer.AddrInfo) error {
		w, err := newWireClient(ctx, k)
		if err != nil {
			return err
		}
		defer w.close()
		_, err = fetchEach(ctx, blocks, func(ctx context.Context, b rawBlock) ([]byte, error) {
			got, err := w.get(ctx, b.c)
			if err != nil {
				return nil, err
			}
			return got.RawData(), nil
		}, func(ctx context.Context, b rawBlock) { _ = w.cancel(ctx, b.c) })
		return err
	})
	if err != nil {
		return fmt.Errorf("latency profile: %w", err)
	}
	return nil
}

// profileManyClients: rounds of scenario 3's clients fetch their files.
func (e *env) profileManyClients(ctx context.Context, dir string, seconds int) error {
	var err error
	roots := make([]cid.Cid, e.cfg.Clients)
	for i := range roots {
		data := randomBytes(e.cfg.ClientFileSize)
		for _, n := range []*kubotest.Node{e.a, e.b} {
			if roots[i], err = n.AddBytes(ctx, data); err != nil {
				return err
			}
		}
	}
	err = e.profileCPU(ctx, []*kubotest.Node{e.a, e.b}, filepath.Join(dir, "cpu-many-clients.pprof"), seconds, func(ctx context.Context, k peer.AddrInfo) error {
		var wg sync.WaitGroup
		errs := make(chan error, len(roots))
		for _, r := range roots {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := fetchOnce(ctx, k, r); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		return <-errs
	})
	if err != nil {
		return fmt.Errorf("many-clients profile: %w", err)
	}
	return nil
}

// profileHot: rounds of scenario 6's crowd, every client connected
// afresh and all fetching the same file at once.
func (e *env) profileHot(ctx context.Context, dir string, seconds int) error {
	root, err := e.a.AddBytes(ctx, randomBytes(e.cfg.HotFileSize))
	if err != nil {
		return err
	}
	err = e.profileCPU(ctx, []*kubotest.Node{e.a}, filepath.Join(dir, "cpu-hot.pprof"), seconds, func(ctx context.Context, k peer.AddrInfo) error {
		clients, err := connectedClients(ctx, e.cfg.Clients, func(int) peer.AddrInfo { return k })
		defer closeClients(clients)
		if err != nil {
			return err
		}
		cf := fetchCrowd(ctx, clients, 2*time.Minute, true, func(ctx context.Context, _ int, c *client) (int, int64, error) {
			return c.fetchDAG(ctx, root)
		})
		if len(cf.errs) > 0 {
			return fmt.Errorf("%d of %d clients failed, first: %w", len(cf.errs), len(clients), cf.errs[0])
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hot-content profile: %w", err)
	}
	return nil
}

// profileIdle: the heap with scenario 4's idle connections held.
func (e *env) profileIdle(ctx context.Context, dir string) error {
	srv, err := startKitsune(e.cfg.KitsuneBin, e.feat, apiAddrs(e.a), e.tb.TempDir(), e.cfg.KitsuneFlags)
	if err != nil {
		return err
	}
	defer srv.stop()
	hosts := make([]host.Host, e.cfg.IdleConns)
	defer closeHosts(hosts)
	if err := parallel(ctx, len(hosts), 16, func(ctx context.Context, i int) error {
		h, err := plainHost()
		if err != nil {
			return err
		}
		hosts[i] = h
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		return h.Connect(cctx, srv.info)
	}); err != nil {
		return err
	}
	time.Sleep(e.cfg.Settle)
	return fetchTo(ctx, srv.admin+"/debug/pprof/heap?gc=1", filepath.Join(dir, "heap-idle.pprof"))
}

// profileCPU runs load against a fresh Kitsune in front of nodes, again
// and again, while its CPU profile is recorded for seconds.
func (e *env) profileCPU(ctx context.Context, nodes []*kubotest.Node, file string, seconds int, load func(context.Context, peer.AddrInfo) error) error {
	srv, err := startKitsune(e.cfg.KitsuneBin, e.feat, apiAddrs(nodes...), e.tb.TempDir(), e.cfg.KitsuneFlags)
	if err != nil {
		return err
	}
	defer srv.stop()
	cpu0, bytes0, err := srv.cpuAndBytesOut(ctx)
	if err != nil {
		return err
	}
	nodePIDs, err := e.nodePIDs(nodes)
	if err != nil {
		return err
	}
	others0, err := sideUsage(nodePIDs)
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		done <- fetchTo(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", srv.admin, seconds), file)
	}()
	if strings.HasSuffix(file, "-latency.pprof") {
		// Where each small block waits shows in an execution trace (its
		// first seconds: a trace grows fast), taken beside the profile.
		go func() {
			tf := filepath.Join(filepath.Dir(file), "trace-latency.out")
			if err := fetchTo(ctx, fmt.Sprintf("%s/debug/pprof/trace?seconds=%d", srv.admin, min(seconds, 3)), tf); err != nil {
				e.logf("  %s: %v", filepath.Base(tf), err)
			}
		}()
	}
	// Heap profiles under the load, at each quarter of the window: what
	// the relay holds while it works (inuse_space is as of the last GC).
	heaps := make(chan error, 1)
	go func() {
		var err error
		for i := 1; i <= 3 && err == nil; i++ {
			select {
			case <-ctx.Done():
				err = ctx.Err()
			case <-time.After(time.Duration(seconds) * time.Second / 4):
				err = fetchTo(ctx, srv.admin+"/debug/pprof/heap", strings.TrimSuffix(file, ".pprof")+fmt.Sprintf("-heap%d.pprof", i))
			}
		}
		heaps <- err
	}()
	rounds := 0
	for {
		select {
		case err := <-done:
			if err != nil {
				return err
			}
			if err := <-heaps; err != nil {
				return err
			}
			// CPU per byte relayed over the profile's window (and the
			// round that ended it): the figure to compare builds by, exact
			// where a count of rounds is not.
			cpu1, bytes1, err := srv.cpuAndBytesOut(ctx)
			if err != nil {
				return err
			}
			others1, err := sideUsage(nodePIDs)
			if err != nil {
				return err
			}
			gib := (bytes1 - bytes0) / (1 << 30)
			e.logf("  %s: %d rounds of load; %.2f GiB relayed, %.2f CPU-s, %.2f CPU-s per GiB",
				filepath.Base(file), rounds, gib, cpu1-cpu0, (cpu1-cpu0)/gib)
			// Who else spent the machine's CPU meanwhile: the clients
			// share it with Kitsune and the nodes.
			e.logf("  %s: meanwhile the clients (this process) %.2f CPU-s, %.2f per GiB; the nodes %.2f CPU-s",
				filepath.Base(file), others1.client-others0.client, (others1.client-others0.client)/gib, others1.node-others0.node)
			// Whether any want needed sending again, or any reply was cut
			// off, under this load.
			e.logf("  %s: %s", filepath.Base(file), relaySummary(ctx, srv))
			// And once the load is over (after a collection): what is
			// still held then is kept past its use.
			return fetchTo(ctx, srv.admin+"/debug/pprof/heap?gc=1", strings.TrimSuffix(file, ".pprof")+"-heap-after.pprof")
		default:
		}
		lctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := load(lctx, srv.info)
		cancel()
		if err != nil {
			return fmt.Errorf("%w; %s", err, relaySummary(ctx, srv))
		}
		rounds++
	}
}

func fetchOnce(ctx context.Context, target peer.AddrInfo, root cid.Cid) (int64, error) {
	c, err := connectedClient(ctx, target)
	if err != nil {
		return 0, err
	}
	defer c.close()
	_, size, err := c.fetchDAG(ctx, root)
	return size, err
}

func fetchTo(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpuAndBytesOut reads Kitsune's CPU seconds (its CPU clock) and the block
// bytes it has sent upstream (from /metrics).
func (s *server) cpuAndBytesOut(ctx context.Context) (cpu, out float64, err error) {
	u, err := s.usage()
	if err != nil {
		return 0, 0, err
	}
	out, err = s.metric(ctx, `kitsune_relay_bytes_total{direction="out"}`)
	return u.CPUSeconds, out, err
}
