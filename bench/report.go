package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// column is one column of a scenario's table.
type column struct {
	head   string
	key    string
	vs     bool // from VsDirect rather than Metrics
	sum    bool // total over the runs instead of the median
	format string
}

var columns = map[int][]column{
	1: {
		{head: "time (s)", key: "seconds", format: "%.2f"},
		{head: "MiB/s", key: "mib_per_s", format: "%.0f"},
		{head: "speed vs direct", key: "throughput", vs: true, format: "%.2f"},
		{head: "of which warm-up (s)", key: "warm_s", format: "%.2f"},
		{head: "proxy CPU (s)", key: "proxy_cpu_s", format: "%.2f"},
		{head: "proxy CPU s per GiB", key: "proxy_cpu_s_per_gib", format: "%.2f"},
		{head: "node CPU (s)", key: "node_cpu_s", format: "%.2f"},
		{head: "client CPU (s)", key: "client_cpu_s", format: "%.2f"},
		{head: "proxy peak RSS (MiB)", key: "proxy_peak_rss_mib", format: "%.0f"},
	},
	2: {
		{head: "p50 (ms)", key: "p50_ms", format: "%.2f"},
		{head: "p99 (ms)", key: "p99_ms", format: "%.2f"},
		{head: "mean (ms)", key: "mean_ms", format: "%.2f"},
		{head: "added p50 (ms)", key: "added_p50_ms", vs: true, format: "%+.2f"},
		{head: "added p99 (ms)", key: "added_p99_ms", vs: true, format: "%+.2f"},
		{head: "boxo client p50 (ms)", key: "app_p50_ms", format: "%.1f"},
		{head: "proxy CPU (s)", key: "proxy_cpu_s", format: "%.2f"},
		{head: "proxy peak RSS (MiB)", key: "proxy_peak_rss_mib", format: "%.0f"},
	},
	3: {
		{head: "aggregate MiB/s", key: "aggregate_mib_per_s", format: "%.0f"},
		{head: "vs direct", key: "aggregate", vs: true, format: "%.2f"},
		{head: "wall (s)", key: "wall_s", format: "%.2f"},
		{head: "client p50 (s)", key: "client_p50_s", format: "%.2f"},
		{head: "failed fetches (all runs)", key: "failures", sum: true, format: "%.0f"},
		{head: "proxy peak RSS (MiB)", key: "proxy_peak_rss_mib", format: "%.0f"},
		{head: "proxy CPU s per GiB", key: "proxy_cpu_s_per_gib", format: "%.1f"},
	},
	4: {
		{head: "held", key: "held", format: "%.0f"},
		{head: "RSS before (MiB)", key: "rss_base_mib", format: "%.0f"},
		{head: "RSS held (MiB)", key: "rss_held_mib", format: "%.0f"},
		{head: "RSS per conn (KiB)", key: "rss_per_conn_kib", format: "%.1f"},
		{head: "vs direct", key: "rss_per_conn", vs: true, format: "%.2f"},
		{head: "new client, none held (ms)", key: "new_client_ms_idle", format: "%.0f"},
		{head: "new client, all held (ms)", key: "new_client_ms_held", format: "%.0f"},
		{head: "time to open all (s)", key: "open_s", format: "%.1f"},
	},
	5: {
		{head: "time (s)", key: "seconds", format: "%.2f"},
		{head: "MiB/s", key: "mib_per_s", format: "%.1f"},
		{head: "speed vs direct", key: "throughput", vs: true, format: "%.2f"},
		{head: "proxy CPU (s)", key: "proxy_cpu_s", format: "%.2f"},
		{head: "proxy peak RSS (MiB)", key: "proxy_peak_rss_mib", format: "%.0f"},
	},
	6: {
		{head: "aggregate MiB/s", key: "aggregate_mib_per_s", format: "%.0f"},
		{head: "vs direct", key: "aggregate", vs: true, format: "%.2f"},
		{head: "wall (s)", key: "wall_s", format: "%.2f"},
		{head: "first client done (s)", key: "client_first_s", format: "%.2f"},
		{head: "client p50 (s)", key: "client_p50_s", format: "%.2f"},
		{head: "blocks in the file", key: "file_blocks", format: "%.0f"},
		{head: "fleet blocks", key: "fleet_blocks", format: "%.0f"},
		{head: "failed fetches (all runs)", key: "failures", sum: true, format: "%.0f"},
		{head: "proxy CPU s per GiB", key: "proxy_cpu_s_per_gib", format: "%.1f"},
		{head: "clients' CPU s per GiB", key: "clients_cpu_s_per_gib", format: "%.1f"},
		{head: "node CPU s per GiB", key: "node_cpu_s_per_gib", format: "%.1f"},
		{head: "node CPU (s)", key: "node_cpu_s", format: "%.2f"},
		{head: "client CPU (s)", key: "client_cpu_s", format: "%.2f"},
		{head: "proxy peak RSS (MiB)", key: "proxy_peak_rss_mib", format: "%.0f"},
	},
}

func (r *Results) machineLine() string {
	m := r.Machine
	s := fmt.Sprintf("%d × %s, %.0f GiB RAM, Linux %s, %s, Kubo %s", m.CPUs, m.CPUModel, m.MemoryGiB, m.Kernel, m.Go, m.Kubo)
	if m.Kitsune != "" {
		s += ", Kitsune " + m.Kitsune
	}
	return s + "; " + m.Network + "; load average " + m.LoadStart + " at start, " + m.LoadEnd + " at end (other work shares this machine)"
}

// Markdown renders the whole report; level is the heading level of its
// title (so the README can embed it one level down).
func (r *Results) Markdown(level int) string {
	h := func(n int) string { return strings.Repeat("#", level+n) + " " }
	var b strings.Builder
	fmt.Fprintf(&b, "%sKitsune benchmark, %s\n\n", h(0), r.Started.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Machine: %s.\n\n", r.machineLine())
	if r.Command != "" {
		fmt.Fprintf(&b, "Reproduce: `%s` (%.0f s).\n\n", r.Command, r.Seconds)
	}
	b.WriteString("Medians over the runs, min–max in brackets. *vs direct* compares each run with the direct run of the same round, then takes the median. " +
		"*proxy* is whatever stands between client and node: the Kitsune or forwarder process (started fresh for each run), or the front Kubo node. " +
		"Clients, Kubo nodes and proxy all share the machine's cores, so a proxy's CPU time comes straight out of the throughput the others get. " +
		"Paths: *direct* (client straight to the node), *kitsune* (client to Kitsune only; Kitsune dials the nodes over TCP when they offer it, as they do here), " +
		"*kitsune-tcp* (the same, but Kitsune is shown only the nodes' TCP addresses, so its leg to the fleet is TCP like every other leg; an experiment, not a setting), " +
		"*kubo-front* (client to a Kubo node peered with the fleet, warmed with `refs -r` through its RPC API, warm-up included), " +
		"*floor* (a minimal terminating forwarder: accepts each stream, opens one of the same protocol to the node, copies bytes both ways; TCP, Noise, yamux on both legs).\n\n")

	fmt.Fprintf(&b, "%sTargets\n\n", h(1))
	b.WriteString("| scenario | target | want | measured | met |\n|---|---|---|---|---|\n")
	for _, s := range r.Scenarios {
		for _, t := range s.Targets {
			met := "✗"
			if t.Met {
				met = "✓"
			}
			fmt.Fprintf(&b, "| %d %s | %s | %s | %s | %s |\n", s.ID, s.Name, t.What, t.Want, t.Measured, met)
		}
	}
	b.WriteString("\n")

	for _, s := range r.Scenarios {
		fmt.Fprintf(&b, "%s%d. %s (%d runs, %.0f s)\n\n%s\n\n", h(1), s.ID, s.Title, s.Runs, s.Seconds, s.Setup)
		cols := columns[s.ID]
		b.WriteString("| path |")
		for _, c := range cols {
			b.WriteString(" " + c.head + " |")
		}
		b.WriteString("\n|---|")
		for range cols {
			b.WriteString("---|")
		}
		b.WriteString("\n")
		for _, p := range s.Paths {
			name := p.Path
			if p.Failed > 0 {
				name += fmt.Sprintf(" (%d of %d runs failed)", p.Failed, len(p.Runs))
			}
			fmt.Fprintf(&b, "| %s |", name)
			for _, c := range cols {
				b.WriteString(" " + cell(p, c) + " |")
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
		var notes []string
		for _, p := range s.Paths {
			for _, run := range p.Runs {
				if run.Error != "" {
					notes = append(notes, fmt.Sprintf("%s run %d failed: %s", p.Path, run.Run+1, firstLine(run.Error)))
				}
			}
		}
		for _, n := range append(notes, s.Notes...) {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		if len(notes)+len(s.Notes) > 0 {
			b.WriteString("\n")
		}
	}
	return b.String()
}

func cell(p *PathResult, c column) string {
	if c.sum {
		total, n := 0.0, 0
		for _, r := range p.Runs {
			if v, ok := r.Metrics[c.key]; ok {
				total += v
				n++
			}
		}
		if n == 0 {
			return "–"
		}
		return fmt.Sprintf(c.format, total)
	}
	src := p.Metrics
	if c.vs {
		src = p.VsDirect
	}
	s, ok := src[c.key]
	if !ok {
		return "–"
	}
	return rangeText(s, c.format)
}

// WriteFiles writes results.json, results.md and ratios.png into dir.
func (r *Results) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	r.sanitize()
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	md := r.Markdown(1) + "![Speed relative to direct](ratios.png)\n"
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	return r.Chart(filepath.Join(dir, "ratios.png"))
}

// sanitize replaces what JSON cannot hold (NaN, ±Inf) in the targets;
// the summaries never hold them.
func (r *Results) sanitize() {
	for _, s := range r.Scenarios {
		for i := range s.Targets {
			if v := s.Targets[i].Value; math.IsNaN(v) || math.IsInf(v, 0) {
				s.Targets[i].Value = 0
			}
		}
	}
}
