package bench

import (
	"bytes"
	"context"
	"fmt"
	"net"
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
	// Kitsune's admin listener would sit on the namespace's loopback, out
	// of the harness's reach: run it without.
	feat := e.feat
	feat.admin = false

	paths := []string{pathDirect, pathKitsune}
	for r := range cfg.Runs12 {
		for _, p := range rotate(paths, r) {
			e.record(sr, p, r, 5*time.Minute, func(ctx context.Context) (map[string]float64, error) {
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
				m := map[string]float64{}
				before, ok := e.proxyUsage(p, srv)
				t0 := time.Now()
				got, err := c.Cat(ctx, root.String())
				el := time.Since(t0)
				if err != nil {
					return nil, fmt.Errorf("ipfs cat after %v: %w", el.Round(time.Millisecond), err)
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
