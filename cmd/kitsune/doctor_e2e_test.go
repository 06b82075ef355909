package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/doctor"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/proxy"
)

// serverFilters is what Kubo 0.41's server profile puts in Swarm.AddrFilters
// and Addresses.NoAnnounce (kubo/config/profile.go, defaultServerFilters).
var serverFilters = []string{
	"/ip4/10.0.0.0/ipcidr/8", "/ip4/100.64.0.0/ipcidr/10", "/ip4/127.0.0.0/ipcidr/8",
	"/ip4/169.254.0.0/ipcidr/16", "/ip4/172.16.0.0/ipcidr/12", "/ip4/192.0.0.0/ipcidr/24",
	"/ip4/192.0.2.0/ipcidr/24", "/ip4/192.168.0.0/ipcidr/16", "/ip4/198.18.0.0/ipcidr/15",
	"/ip4/198.51.100.0/ipcidr/24", "/ip4/203.0.113.0/ipcidr/24", "/ip4/240.0.0.0/ipcidr/4",
	"/ip6/::/ipcidr/3", "/ip6/::1/ipcidr/128", "/ip6/100::/ipcidr/64", "/ip6/2001:2::/ipcidr/48",
	"/ip6/2001:db8::/ipcidr/32", "/ip6/fc00::/ipcidr/7", "/ip6/fe80::/ipcidr/10",
}

// TestDoctorFleet runs doctor against real Kubo nodes: one set up as the
// README says, one with the server profile, one without the allowlist and
// one that does not run. Each problem must be reported with its fix; then
// the printed fixes are run on the nodes, the nodes restarted, and doctor
// must pass. Doctor itself must change nothing.
func TestDoctorFleet(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "kitsune.key")
	back, _, err := proxy.LoadOrCreateKey(proxy.BackKeyPath(keyFile))
	if err != nil {
		t.Fatal(err)
	}
	backID, err := peer.IDFromPrivateKey(back)
	if err != nil {
		t.Fatal(err)
	}
	wellSet := map[string]any{
		"Swarm.ResourceMgr.Allowlist":                   []string{"/ip4/127.0.0.1/p2p/" + backID.String()},
		"Peering.Peers":                                 []map[string]any{{"ID": backID.String()}},
		"Internal.Bitswap.MaxOutstandingBytesPerPeer":   16 << 20,
		"Addresses.Gateway":                             "/ip4/127.0.0.1/tcp/" + strconv.Itoa(freeTCPPort(t)),
		"Internal.Bitswap.BroadcastControl.PeeredPeers": false,
	}
	with := func(extra map[string]any, drop ...string) map[string]any {
		m := map[string]any{}
		for k, v := range wellSet {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		for _, k := range drop {
			delete(m, k)
		}
		return m
	}
	good := kubotest.Start(t, kubotest.Options{Config: wellSet})
	server := kubotest.Start(t, kubotest.Options{Config: with(map[string]any{
		"Swarm.AddrFilters": serverFilters, "Addresses.NoAnnounce": serverFilters,
		"Addresses.Gateway": "/ip4/127.0.0.1/tcp/" + strconv.Itoa(freeTCPPort(t)),
	})})
	noAllow := kubotest.Start(t, kubotest.Options{Config: with(map[string]any{
		"Addresses.Gateway": "/ip4/127.0.0.1/tcp/" + strconv.Itoa(freeTCPPort(t)),
	}, "Swarm.ResourceMgr.Allowlist")})
	down := "http://127.0.0.1:" + strconv.Itoa(freeTCPPort(t)) // nothing listens

	configs := map[*kubotest.Node][]byte{}
	for _, n := range []*kubotest.Node{good, server, noAllow} {
		configs[n] = readConfig(t, n)
	}

	rs, table, err := runDoctorCmd(t, keyFile, good.APIURL, server.APIURL, noAllow.APIURL, down)
	t.Logf("kitsune doctor on the bad fleet:\n%s", table)
	if !errors.Is(err, errChecksFailed) {
		t.Fatalf("doctor on a bad fleet returned %v, want errChecksFailed", err)
	}
	for n, before := range configs {
		if !bytes.Equal(readConfig(t, n), before) {
			t.Errorf("doctor changed the config of %s", n.APIURL)
		}
	}

	want := []struct {
		node, check string
		status      doctor.Status
		fix         string // a substring of the fix
	}{
		{good.APIURL, "swarm", doctor.OK, ""},
		{good.APIURL, "addr-filters", doctor.OK, ""},
		{good.APIURL, "peering", doctor.OK, ""},
		{good.APIURL, "allowlist", doctor.OK, ""},
		{good.APIURL, "max-outstanding", doctor.OK, ""},
		{good.APIURL, "broadcast", doctor.OK, ""},
		{good.APIURL, "gateway", doctor.OK, ""},
		{good.APIURL, "routing-v1", doctor.OK, ""},
		{good.APIURL, "version", doctor.OK, ""},
		{server.APIURL, "swarm", doctor.Fail, "ipfs config --json Addresses.NoAnnounce"},
		{server.APIURL, "addr-filters", doctor.Fail, "ipfs config --json Swarm.AddrFilters"},
		{server.APIURL, "allowlist", doctor.OK, ""},
		{noAllow.APIURL, "allowlist", doctor.Fail, "ipfs config --json Swarm.ResourceMgr.Allowlist '[\"/ip4/127.0.0.1/p2p/" + backID.String() + "\"]'"},
		{noAllow.APIURL, "addr-filters", doctor.OK, ""},
		{down, "rpc", doctor.Fail, "Addresses.API"},
	}
	for _, w := range want {
		r, ok := findResult(rs, w.node, w.check)
		if !ok {
			t.Errorf("%s: no %s row", w.node, w.check)
			continue
		}
		if r.Status != w.status || !strings.Contains(r.Fix, w.fix) {
			t.Errorf("%s %s: %s %q fix %q; want %s with a fix containing %q", w.node, w.check, r.Status, r.Reason, r.Fix, w.status, w.fix)
		}
	}
	for _, r := range rs {
		if r.Node == good.APIURL && r.Status == doctor.Fail {
			t.Errorf("the well-set node fails %s: %s", r.Check, r.Reason)
		}
		if r.Status != doctor.OK && r.Fix == "" {
			t.Errorf("%s %s is %s without a fix", r.Node, r.Check, r.Status)
		}
	}
	if n := countNode(rs, down); n != 1 {
		t.Errorf("the unreachable node has %d rows, want only its rpc row", n)
	}

	// Run every printed `ipfs config` fix for a failing row on its node,
	// restart the nodes, and check again without the node that is down:
	// no config key can start it.
	restarted := map[string]bool{server.APIURL: true, noAllow.APIURL: true, down: true}
	for _, n := range []*kubotest.Node{server, noAllow} {
		applied := 0
		for _, r := range rs {
			if r.Node != n.APIURL || r.Status != doctor.Fail {
				continue
			}
			if !strings.HasPrefix(r.Fix, "ipfs config ") {
				t.Fatalf("%s %s: fix is not an ipfs config command: %q", r.Node, r.Check, r.Fix)
			}
			runFix(t, n, r.Fix)
			applied++
		}
		if applied == 0 {
			t.Fatalf("no fix applied on %s", n.APIURL)
		}
		n.Restart(t)
	}
	rs, table, err = runDoctorCmd(t, keyFile, good.APIURL, server.APIURL, noAllow.APIURL)
	t.Logf("kitsune doctor after the fixes:\n%s", table)
	if err != nil {
		t.Fatalf("doctor after the fixes: %v", err)
	}
	for _, w := range want {
		if restarted[w.node] {
			continue // new ports after the restart (or down); checked below
		}
		if r, ok := findResult(rs, w.node, w.check); !ok || r.Status != doctor.OK {
			t.Errorf("after the fixes %s %s: %+v", w.node, w.check, r)
		}
	}
	for _, n := range []*kubotest.Node{server, noAllow} {
		for _, check := range []string{"swarm", "addr-filters", "allowlist"} {
			if r, ok := findResult(rs, n.APIURL, check); !ok || r.Status != doctor.OK {
				t.Errorf("after the fixes %s %s: %+v", n.APIURL, check, r)
			}
		}
	}

	// And Kitsune really serves from the repaired server-profile node.
	k := startKitsune(t, []*kubotest.Node{server}, func(c *runCmd) { c.Key = keyFile })
	if k.back.ID() != backID {
		t.Fatalf("Kitsune's back host is %s, doctor checked %s", k.back.ID(), backID)
	}
}

// TestDoctorCommandLine checks doctor's flags and its refusals.
func TestDoctorCommandLine(t *testing.T) {
	var c cli
	parser, err := newParser(&c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parser.Parse([]string{"doctor", "-d", "/ip4/10.0.1.42/tcp/5001", "--json", "-k", "x.key"}); err != nil {
		t.Fatal(err)
	}
	if !c.Doctor.JSON || filepath.Base(c.Doctor.Key) != "x.key" || len(c.Doctor.Downstream) != 1 {
		t.Fatalf("parsed %+v", c.Doctor)
	}
	for _, bad := range []doctorCmd{
		{},                                 // no fleet
		{Downstream: []string{"nonsense"}}, // not an address
		{DownstreamDNS: "no-port"},
		{DownstreamFile: filepath.Join(t.TempDir(), "missing")},
	} {
		bad.Timeout, bad.Key = time.Second, filepath.Join(t.TempDir(), "k")
		var out bytes.Buffer
		bad.out = &out
		var ue usageError
		if err := bad.Run(); !errors.As(err, &ue) {
			t.Errorf("%+v: got %v, want a usage error", bad, err)
		}
		if _, err := os.Stat(bad.Key + ".back"); err == nil {
			t.Errorf("doctor created a key file")
		}
	}
}

// TestDoctorFleetFromFile reads the fleet from --downstream-file as run
// does (comments, several entries, duplicates of -d) and reports a node
// that does not answer in one row, exiting with a failure.
func TestDoctorFleetFromFile(t *testing.T) {
	down := "http://127.0.0.1:" + strconv.Itoa(freeTCPPort(t))
	file := filepath.Join(t.TempDir(), "fleet")
	if err := os.WriteFile(file, []byte("# the fleet\n"+down+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := doctorCmd{Downstream: []string{down}, DownstreamFile: file, Key: filepath.Join(t.TempDir(), "k"), Timeout: 2 * time.Second, JSON: true, out: &out}
	if err := cmd.Run(); !errors.Is(err, errChecksFailed) {
		t.Fatalf("got %v, want errChecksFailed\n%s", err, out.String())
	}
	var doc struct {
		OK      bool
		Results []doctor.Result
	}
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.OK || len(doc.Results) != 1 || doc.Results[0].Node != down || doc.Results[0].Check != "rpc" {
		t.Fatalf("want one failed rpc row for %s, got %s", down, out.String())
	}
}

// runDoctorCmd runs `kitsune doctor` twice, as a table and as JSON, and
// returns the JSON's results, the table and the error.
func runDoctorCmd(t *testing.T, keyFile string, urls ...string) ([]doctor.Result, string, error) {
	t.Helper()
	var table, js bytes.Buffer
	cmd := doctorCmd{Downstream: urls, Key: keyFile, Timeout: 5 * time.Second, out: &table}
	if err := cmd.Run(); err != nil && !errors.Is(err, errChecksFailed) {
		t.Fatalf("doctor: %v\n%s", err, table.String())
	}
	cmd.JSON, cmd.out = true, &js
	err := cmd.Run()
	var doc struct {
		OK      bool
		Results []struct {
			Node, Check, Status, Reason, Fix string
		}
	}
	if jerr := json.Unmarshal(js.Bytes(), &doc); jerr != nil {
		t.Fatalf("doctor --json: %v\n%s", jerr, js.String())
	}
	if doc.OK != (err == nil) {
		t.Errorf("--json says ok=%v, exit error %v", doc.OK, err)
	}
	var rs []doctor.Result
	for _, r := range doc.Results {
		s := map[string]doctor.Status{"ok": doctor.OK, "warn": doctor.Warn, "fail": doctor.Fail}[r.Status]
		if r.Status != s.String() {
			t.Fatalf("status %q in --json", r.Status)
		}
		rs = append(rs, doctor.Result{Node: r.Node, Check: r.Check, Status: s, Reason: r.Reason, Fix: r.Fix})
	}
	return rs, table.String(), err
}

func findResult(rs []doctor.Result, node, check string) (doctor.Result, bool) {
	for _, r := range rs {
		if r.Node == node && r.Check == check {
			return r, true
		}
	}
	return doctor.Result{}, false
}

func countNode(rs []doctor.Result, node string) int {
	n := 0
	for _, r := range rs {
		if r.Node == node {
			n++
		}
	}
	return n
}

// runFix runs a printed fix on node n through a shell, as an operator
// would paste it, with the node's repository and the tested Kubo binary.
func runFix(t *testing.T, n *kubotest.Node, fix string) {
	t.Helper()
	bin := t.TempDir()
	if err := os.Symlink(kubotest.Binary(t), filepath.Join(bin, "ipfs")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", fix)
	cmd.Env = append(os.Environ(), "IPFS_PATH="+n.Dir, "PATH="+bin+":"+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("fix %q on %s: %v\n%s", fix, n.APIURL, err, out)
	}
}

func readConfig(t *testing.T, n *kubotest.Node) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.Dir, "config"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
