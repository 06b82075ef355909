package main

import (
	"fmt"
	"github.com/kitsune-lb/kitsune/internal/testkit"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kitsune-lb/kitsune/geoip"
	"github.com/kitsune-lb/kitsune/internal/geoiptest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// Peers connecting from namespaces with documentation-range addresses
// appear under the countries a generated database gives those ranges: in
// /api/status, in /metrics and on the dashboard's map and table (in
// headless Chromium; screenshot in testdata/artifacts/dashboard-geo.png).
// A peer that leaves is no longer counted.
func TestGeoIPByCountry(t *testing.T) {
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("the dashboard test needs Chromium at %s (apt-get install chromium): %v", chromium, err)
	}
	db := filepath.Join(t.TempDir(), "country.mmdb")
	geoiptest.Write(t, db, map[string]string{
		"198.51.100.0/25":   "DE",
		"198.51.100.128/25": "JP",
		"203.0.113.0/24":    "BR",
	})

	// Random host numbers, so two runs of this test at once (in two
	// worktrees) do not claim the same addresses in the root namespace.
	hosts := rand.Perm(120)
	kDE := fmt.Sprintf("198.51.100.%d", 2+hosts[0])
	kBR := fmt.Sprintf("203.0.113.%d", 2+hosts[0])
	members := []struct{ addr, kitsune, country string }{
		{fmt.Sprintf("198.51.100.%d", 2+hosts[1]), kDE, "DE"},
		{fmt.Sprintf("198.51.100.%d", 2+hosts[2]), kDE, "DE"},
		{fmt.Sprintf("203.0.113.%d", 2+hosts[3]), kBR, "BR"},
	}
	var cidrs []string
	for _, m := range members {
		cidrs = append(cidrs, m.addr+"/24")
	}
	l := newLAN(t, cidrs...)
	l.joinRoot(kDE, kBR)

	fleet := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	data := randomBytes(t, 1<<20)
	c, err := fleet.AddBytes(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	k := startKitsune(t, []*kubotest.Node{fleet}, func(r *runCmd) {
		r.Listen = []string{"/ip4/" + kDE + "/tcp/0", "/ip4/" + kBR + "/tcp/0"}
		r.GeoIPDB = db
	})
	kitsuneAddr := func(ip string) string {
		for _, a := range k.front.Addrs() {
			if v, err := a.ValueForProtocol(ma.P_IP4); err == nil && v == ip {
				return a.String()
			}
		}
		t.Fatalf("kitsune does not listen on %s: %v", ip, k.front.Addrs())
		return ""
	}

	// Each member peers with Kitsune (so its wants go to Kitsune although
	// the documentation range is not "private" to Kubo) and fetches the
	// file through it. mDNS is off: members on one segment would find each
	// other and the second would fetch from the first.
	var nodes []*nsKubo
	for i, m := range members {
		n := startNSKubo(t, l.members[i], nil, map[string]any{
			"Peering.Peers":          []map[string]any{{"ID": k.front.ID().String(), "Addrs": []string{kitsuneAddr(m.kitsune)}}},
			"Bootstrap":              []string{},
			"Routing.Type":           "none",
			"Discovery.MDNS.Enabled": false,
		})
		nodes = append(nodes, n)
	}
	for i, n := range nodes {
		got, err := n.ipfs(testCtx(t, 90*time.Second), "cat", "--timeout=80s", c.String())
		if err != nil || len(got) != len(data) {
			t.Fatalf("member %d (%s) fetching through Kitsune: %d bytes, %v", i, members[i].addr, len(got), err)
		}
	}

	want := map[string]int{"DE": 2, "BR": 1}
	var seen []geoip.Country
	testkit.EventuallyEvery(t, 30*time.Second, 100*time.Millisecond, func() string {
		return fmt.Sprintf("/api/status after 30s: %+v; want peers %v, each peer's file counted as sent", seen, want)
	}, func() bool {
		g := k.status(t).Geo
		if g == nil {
			t.Fatal("/api/status has no geo part with --geoip-db")
		}
		seen = g.Countries
		return geoMatches(seen, want, len(data))
	})
	st := k.status(t).Geo
	t.Logf("/api/status geo: %+v", st.Countries)
	if cs := findCountry(st.Countries, "JP"); cs.Peers != 0 || cs.Connections != 0 {
		t.Errorf("JP has no member but shows %+v", cs)
	}
	if !strings.Contains(st.Note, "PROXY protocol") {
		t.Errorf("the status does not say how a balancer in front changes the addresses: %q", st.Note)
	}
	if st.Database.DatabaseType != "Kitsune-Test-Country" || st.Database.LastError != "" {
		t.Errorf("database info %+v", st.Database)
	}

	m := k.scrape(t)
	for code, peers := range want {
		if got := m[series("kitsune_upstream_country_peers", "country", code)]; got != float64(peers) {
			t.Errorf("kitsune_upstream_country_peers{country=%q} = %v, want %d", code, got, peers)
		}
		if got := m[series("kitsune_upstream_country_sent_bytes_total", "country", code)]; got < float64(peers*len(data)) {
			t.Errorf("kitsune_upstream_country_sent_bytes_total{country=%q} = %v, want at least %d", code, got, peers*len(data))
		}
	}
	for s := range m {
		if strings.HasPrefix(s, "kitsune_upstream_country_peers{") && !strings.Contains(s, `"DE"`) && !strings.Contains(s, `"BR"`) && !strings.Contains(s, `"unknown"`) {
			t.Errorf("a country series for a country nobody connected from: %s", s)
		}
	}

	dashboardGeo(t, k, want)

	// The Brazilian member leaves: no Brazilian peer, and the tracker
	// holds only the two that remain.
	nodes[2].proc.stop()
	eventually(t, 30*time.Second, "BR at 0 peers", func() bool {
		return findCountry(k.status(t).Geo.Countries, "BR").Peers == 0
	})
	if n := k.geo.tracker.Peers(); n != 2 {
		t.Errorf("the tracker holds %d peers, want the 2 still connected", n)
	}
}

func geoMatches(cs []geoip.Country, want map[string]int, size int) bool {
	if cs == nil {
		return false
	}
	for code, peers := range want {
		c := findCountry(cs, code)
		if c.Peers != peers || c.ConnectionsLastHour < uint64(peers) || c.BytesSent < uint64(peers*size) {
			return false
		}
	}
	return true
}

func findCountry(cs []geoip.Country, code string) geoip.Country {
	for _, c := range cs {
		if c.Code == code {
			return c
		}
	}
	return geoip.Country{Code: code}
}

// dashboardGeo checks the map and table in headless Chromium and saves a
// screenshot.
func dashboardGeo(t *testing.T, k *kitsune, want map[string]int) {
	t.Helper()
	bctx, noPageErrors := dashboardBrowser(t, testCtx(t, 2*time.Minute))
	if err := chromedp.Do(bctx, chromedp.Navigate(k.admin.url()+"/"),
		chromedp.WaitVisible(`#countries tbody tr[data-country="DE"]`),
		chromedp.WaitReady(`#world path[data-code="DE"][data-peers="2"]`)); err != nil {
		t.Fatalf("loading the dashboard's map: %v", err)
	}
	table, err := chromedp.Run(bctx, chromedp.Text(`#countries`))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"Germany", "Brazil"} {
		if !strings.Contains(table, s) {
			t.Errorf("the countries table does not name %s:\n%s", s, table)
		}
	}
	for code, peers := range want {
		got, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](fmt.Sprintf(`(() => {
			const p = document.querySelector('#world path[data-code="%s"]');
			const row = document.querySelector('#countries tr[data-country="%s"] td.peers');
			return [p.dataset.peers, p.getAttribute("fill"), row ? row.textContent : ""];
		})()`, code, code)))
		if err != nil {
			t.Fatal(err)
		}
		if got[0] != fmt.Sprint(peers) || got[2] != fmt.Sprint(peers) || got[1] == "" || got[1] == "#d5dae2" {
			t.Errorf("%s on the page: map peers %q, fill %q, table peers %q; want %d peers, shaded", code, got[0], got[1], got[2], peers)
		}
	}
	// A country nobody connects from stays unshaded.
	fr, err := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector('#world path[data-code="FR"]').getAttribute("fill")`))
	if err != nil || fr != "#d5dae2" {
		t.Errorf("France's fill is %q (%v), want the unshaded grey", fr, err)
	}
	note, _ := chromedp.Run(bctx, chromedp.Text(`#geo-note`))
	if !strings.Contains(note, "PROXY protocol") {
		t.Errorf("the page does not say what a balancer in front does: %q", note)
	}
	if err := chromedp.Do(bctx, chromedp.ScrollIntoView(`#geo`)); err != nil {
		t.Fatal(err)
	}
	png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("..", "..", "testdata", "artifacts")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dashboard-geo.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	noPageErrors()
}
