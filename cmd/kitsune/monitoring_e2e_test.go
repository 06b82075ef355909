package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// The monitoring assets shipped for operators, relative to this package.
const (
	monitoringDir = "../../deploy/monitoring"
	alertRules    = monitoringDir + "/kitsune-alerts.yml"
	alertTests    = "kitsune-alerts_test.yml" // run from monitoringDir
	dashboardJSON = monitoringDir + "/kitsune-dashboard.json"
)

var metricName = regexp.MustCompile(`\bkitsune_[a-z0-9_]+`)

// promtool finds Prometheus's rule checker; the test fails, never skips,
// without it (.ci/run installs Debian's prometheus package).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (apt-get install --no-install-recommends prometheus), as .ci/run does")
	}
	return p
}

// TestMonitoringRules checks the alert rules with promtool, runs their
// unit tests (each alert fires on the series that should raise it, and
// none on a healthy fleet), and checks every dashboard query parses as
// PromQL.
func TestMonitoringRules(t *testing.T) {
	pt := promtool(t)
	run := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command(pt, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
	run(".", "check", "rules", alertRules)
	run(monitoringDir, "test", "rules", alertTests)

	// Dashboard queries, as recording rules, so promtool parses them.
	exprs := dashboardExprs(t)
	var b strings.Builder
	b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		e = strings.NewReplacer("$__rate_interval", "5m", "$instance", ".*").Replace(e)
		q, _ := json.Marshal(e) // a JSON string is a YAML string
		fmt.Fprintf(&b, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	f := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(f, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(".", "check", "rules", f)
}

// dashboardExprs returns every query of the Grafana dashboard.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(dashboardJSON)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardJSON, err)
	}
	var exprs []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("only %d dashboard queries in %s", len(exprs), dashboardJSON)
	}
	return exprs
}

// TestMonitoringMetricsExist runs Kitsune with a node, a client fetch and
// a preload call, scrapes /metrics, and checks that every kitsune_ metric
// the alert rules and the dashboard name is one Kitsune exports, so a
// renamed metric cannot leave an alert silently matching nothing.
func TestMonitoringMetricsExist(t *testing.T) {
	node := kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	file := randomBytes(t, 300<<10)
	id, err := node.AddBytes(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	k := startKitsune(t, []*kubotest.Node{node}, func(c *runCmd) { c.Preload = "127.0.0.1:0" })
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	if got, err := client.Cat(ctx, id.String()); err != nil || len(got) != len(file) {
		t.Fatalf("cat through kitsune: %d bytes, %v", len(got), err)
	}
	resp, err := http.Post(k.preload.URL()+"/api/v0/refs?arg="+id.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("preload call: %d", resp.StatusCode)
	}

	// Families exported, from the exposition's TYPE lines; a histogram's
	// series add _bucket, _sum and _count.
	var exported map[string]bool
	eventually(t, 10*time.Second, "the preload call is counted", func() bool {
		exported = exportedFamilies(t, k)
		return exported["kitsune_preload_calls_total"]
	})

	referenced := map[string][]string{}
	for _, f := range []string{alertRules, dashboardJSON} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range metricName.FindAllString(string(data), -1) {
			referenced[m] = append(referenced[m], filepath.Base(f))
		}
	}
	if len(referenced) < 15 {
		t.Fatalf("only %d metric names found in the rules and dashboard: %v", len(referenced), referenced)
	}
	var names []string
	for n := range referenced {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		base := n
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(n, suf); ok && exported[b] {
				base = b
			}
		}
		if !exported[base] {
			t.Errorf("%s (in %s) is not a metric Kitsune exports", n, strings.Join(uniq(referenced[n]), ", "))
		}
	}
	t.Logf("%d metric names referenced: %s", len(names), strings.Join(names, " "))
}

func exportedFamilies(t *testing.T, k *kitsune) map[string]bool {
	t.Helper()
	code, body := k.adminGet(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	out := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = true
		}
	}
	return out
}

func uniq(s []string) []string {
	sort.Strings(s)
	var out []string
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
