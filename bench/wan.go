package bench

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/internal/netns"
)

// The WAN world of scenario 5 (as in cmd/kitsune's TestWAN tests): the
// client's namespace reaches the server namespace over a veth pair shaped
// to wanRate by tbf, through a toxiproxy delay proxy adding wanRTT. The
// fleet node runs on the server namespace's loopback, next to Kitsune.
const (
	wanRate  = 50_000_000 // bit/s, each direction
	wanRTT   = 40 * time.Millisecond
	wanSrvIP = "198.51.100.1"
	wanCliIP = "198.51.100.2"
)

type wanWorld struct {
	srv, cli *netns.NS
	node     *kubotest.Node
}

func (e *env) newWANWorld() *wanWorld {
	e.tb.Helper()
	w := netns.New(e.tb)
	o := &wanWorld{srv: w.Namespace("kitsune"), cli: w.Namespace("client")}
	l := w.Link(o.srv, wanSrvIP+"/24", o.cli, wanCliIP+"/24")
	l.Shape(e.tb, netns.Shape{Rate: wanRate})
	opts := kuboOptions(e.cfg.KuboOutstandingBytes)
	opts.In = o.srv
	o.node = kubotest.Start(e.tb, opts)
	return o
}

// delayed puts a delay proxy in front of upstream (inside the server
// namespace) and returns the address the client dials. The caller closes
// the proxy.
func (o *wanWorld) delayed(e *env, upstream string) *netns.Proxy {
	return netns.NewProxy(e.tb, o.srv, wanSrvIP+":0", o.srv, upstream, netns.Delay{OneWay: wanRTT / 2})
}

func tcpPort(ai peer.AddrInfo) (string, error) {
	for _, a := range ai.Addrs {
		if p, err := a.ValueForProtocol(ma.P_TCP); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no TCP address in %v", ai.Addrs)
}

// wanFetchLimit bounds one fetch across the link: a minute plus four
// times what the file takes at the link's rate, so a fetch that stalls
// fails with the greeter's counters rather than hanging.
func wanFetchLimit(size int) time.Duration {
	atRate := time.Duration(float64(size) * 8 / wanRate * float64(time.Second))
	return time.Minute + 4*atRate
}

// waitGreeted waits until the client's Bitswap has taken a message (the
// only one Kitsune sends unasked is its greeting). An off-LAN Kubo client
// sends its broadcast wants only to peers that sent it a HAVE or a block
// before, each want once: one that handles `cat` before the greeting
// already on its way never asks Kitsune for the file. The `ipfs` command
// line is far slower than that race; the harness's RPC calls, on a loaded
// machine, are not (the same wait as the off-LAN end-to-end tests').
func waitGreeted(ctx context.Context, c *kubotest.Node, srv *server) error {
	const within = 15 * time.Second
	deadline := time.Now().Add(within)
	for {
		n, err := c.BitswapMessagesReceived(ctx)
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the client got no greeting from Kitsune within %v; %s", within, greetSummary(ctx, srv))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// greetSummary is Kitsune's greeting counters, from its /metrics, on one
// line: what to read when a client never asked Kitsune for anything.
func greetSummary(ctx context.Context, srv *server) string {
	return metricsSummary(ctx, srv, "greeting", "kitsune_greet")
}

// relayCounters are the /metrics series that tell where a want went: in
// and out, answered, moved, sent again, set aside, replies cut off or
// given up, and what is still out.
var relayCounters = []string{
	"kitsune_relay_wants", "kitsune_relay_blocks_total", "kitsune_relay_dont_haves_total",
	"kitsune_relay_failovers_total", "kitsune_relay_timeouts_total", "kitsune_relay_rewants_total", "kitsune_relay_node_",
	"kitsune_relay_deferred_blocks_total", "kitsune_relay_held_wants_total", "kitsune_relay_replies_", "kitsune_relay_unsolicited_blocks_total",
	"kitsune_relay_recent_hits_total", "kitsune_downstream_wants_in_flight",
}

// relaySummary is Kitsune's relay counters on one line: what to read
// when a fetch through Kitsune failed (a want lost, or never answered).
func relaySummary(ctx context.Context, srv *server) string {
	return metricsSummary(ctx, srv, "relay", relayCounters...)
}

// withRelaySummary adds Kitsune's relay counters to a failed fetch's
// error; err as it is when the path has no Kitsune.
func withRelaySummary(ctx context.Context, err error, srv *server) error {
	if srv == nil {
		return err
	}
	return fmt.Errorf("%w; %s", err, relaySummary(ctx, srv))
}

// metricsSummary is the series of Kitsune's /metrics whose names start
// with one of prefixes, on one line; what says which counters they are.
func metricsSummary(ctx context.Context, srv *server, what string, prefixes ...string) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	body, err := srv.scrape(ctx)
	if err != nil {
		return fmt.Sprintf("Kitsune's %s counters unavailable: %v", what, err)
	}
	var out []string
	for line := range strings.SplitSeq(body, "\n") {
		for _, p := range prefixes {
			if strings.HasPrefix(line, p) {
				out = append(out, line)
				break
			}
		}
	}
	if len(out) == 0 {
		return fmt.Sprintf("Kitsune's /metrics has no %s counters", what)
	}
	return fmt.Sprintf("Kitsune's %s counters: %s", what, strings.Join(out, ", "))
}

// ---- Scenario 5: a client across a WAN link ----

func (e *env) scenario5() (*ScenarioResult, error) {
	cfg := e.cfg
	sr := &ScenarioResult{
		ID: 5, Name: "wan", Runs: cfg.Runs12,
		Title: fmt.Sprintf("WAN: a Kubo client %v RTT and %d Mbit/s away fetches a %s file", wanRTT, wanRate/1_000_000, sizeText(cfg.WANFileSize)),
		Setup: "Network namespaces: a Kubo client (fresh each run, `ipfs cat`) reaches the server namespace over a veth pair shaped by tbf to 50 Mbit/s each way, " +
			"through a toxiproxy delay proxy adding 20 ms each way. direct: the client fetches from the Kubo node over that link; " +
			"kitsune: through Kitsune (listening on its namespace address only), the same node on Kitsune's loopback. " +
			"Time from `ipfs cat` to its last byte, content checked.",
		keyMetrics: []string{"seconds", "mib_per_s"},
		vs: []vsSpec{
			{"throughput", "seconds", directOverPath},
			{"overhead", "seconds", pathOverDirect},
		},
	}
	sr.targets = func(sr *ScenarioResult) []Target {
		thr := sr.vsDirect(pathKitsune, "throughput")
		return []Target{{What: "kitsune/direct throughput across the WAN link", Want: "≥ 0.95", Measured: rangeText(thr, "%.2f"), Value: thr.Median, Met: thr.Median >= 0.95}}
	}

	o := e.newWANWorld()
	data := randomBytes(cfg.WANFileSize)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	root, err := o.node.AddBytes(ctx, data)
	cancel()
	if err != nil {
		return nil, err
	}
	nodePort, err := tcpPort(tcpAddrInfo(o.node))
	if err != nil {
		return nil, err
	}
	// Kitsune's admin listener sits on the server namespace's loopback,
	// reached with a client dialing from inside it.
	feat := e.feat
	limit := wanFetchLimit(cfg.WANFileSize)

	paths := []string{pathDirect, pathKitsune}
	for r := range cfg.Runs12 {
		for _, p := range rotate(paths, r) {
			e.record(sr, p, r, limit+2*time.Minute, func(ctx context.Context) (map[string]float64, error) {
				var target peer.ID
				var upstream string
				var srv *server
				switch p {
				case pathDirect:
					target, upstream = o.node.ID, net.JoinHostPort("127.0.0.1", nodePort)
				case pathKitsune:
					// Only the namespace address: identify would hand a
					// 0.0.0.0 listener's 127.0.0.1 on, and the client would
					// take Kitsune for a LAN peer.
					s, err := startKitsuneOn(o.srv.Wrap, "/ip4/"+wanSrvIP+"/tcp/0", cfg.KitsuneBin, feat, apiAddrs(o.node), e.tb.TempDir(), cfg.KitsuneFlags)
					if err != nil {
						return nil, err
					}
					srv = s
					s.hc = o.srv.HTTPClient()
					port, err := tcpPort(s.info)
					if err != nil {
						s.stop()
						return nil, err
					}
					target, upstream = s.info.ID, net.JoinHostPort(wanSrvIP, port)
				}
				defer stopServer(srv)
				px := o.delayed(e, upstream)
				defer px.Close()
				addr, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/%s/tcp/%d", wanSrvIP, px.Addr().Port))
				if err != nil {
					return nil, err
				}
				copts := kuboOptions(e.cfg.KuboOutstandingBytes)
				copts.In = o.cli
				c := kubotest.Start(e.tb, copts)
				defer c.Stop()
				if err := c.Connect(ctx, peer.AddrInfo{ID: target, Addrs: []ma.Multiaddr{addr}}); err != nil {
					return nil, fmt.Errorf("client connecting through the WAN link: %w", err)
				}
				if srv != nil {
					if err := waitGreeted(ctx, c, srv); err != nil {
						return nil, err
					}
				}
				m := map[string]float64{}
				before, ok := e.proxyUsage(p, srv)
				catCtx, cancel := context.WithTimeout(ctx, limit)
				defer cancel()
				t0 := time.Now()
				got, err := c.Cat(catCtx, root.String())
				el := time.Since(t0)
				if err != nil {
					err = fmt.Errorf("ipfs cat after %v (limit %v): %w", el.Round(time.Millisecond), limit, err)
					if srv != nil {
						err = fmt.Errorf("%w; %s; %s", err, greetSummary(ctx, srv), relaySummary(ctx, srv))
						e.logf("  s5 kitsune stderr (tail):\n%s", srv.stderrTail())
					}
					return nil, err
				}
				after, ok2 := e.proxyUsage(p, srv)
				usageMetrics(m, p, before, after, ok && ok2, srv != nil)
				if !bytes.Equal(got, data) {
					return nil, fmt.Errorf("fetched %d bytes that differ from the %d added", len(got), len(data))
				}
				m["seconds"] = el.Seconds()
				m["mib_per_s"] = float64(len(data)) / mib / el.Seconds()
				return m, nil
			})
		}
	}
	sr.Notes = append(sr.Notes, fmt.Sprintf("Fleet and client Kubo %s; the client has no Peering config.", kuboVersion(o.node)))
	return sr, nil
}
