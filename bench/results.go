package bench

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Results is everything one benchmark run measured, as written to
// bench/results/results.json.
type Results struct {
	Started   time.Time         `json:"started"`
	Seconds   float64           `json:"seconds"`
	Command   string            `json:"command,omitempty"`
	Machine   Machine           `json:"machine"`
	Config    Config            `json:"config"`
	Scenarios []*ScenarioResult `json:"scenarios"`
}

// Machine is where the numbers come from; they mean nothing without it.
type Machine struct {
	CPUs      int     `json:"cpus"`
	CPUModel  string  `json:"cpu_model"`
	MemoryGiB float64 `json:"memory_gib"`
	Kernel    string  `json:"kernel"`
	Go        string  `json:"go"`
	Kubo      string  `json:"kubo"`
	Kitsune   string  `json:"kitsune,omitempty"`
	Network   string  `json:"network"`
	// Load averages (1, 5, 15 min) when the run started and ended: the
	// machine is shared, and this says how much.
	LoadStart string `json:"loadavg_start"`
	LoadEnd   string `json:"loadavg_end"`
}

type ScenarioResult struct {
	ID      int           `json:"id"`
	Name    string        `json:"name"`
	Title   string        `json:"title"`
	Setup   string        `json:"setup"`
	Runs    int           `json:"runs"`
	Seconds float64       `json:"seconds"`
	Paths   []*PathResult `json:"paths"`
	Targets []Target      `json:"targets"`
	Notes   []string      `json:"notes,omitempty"`

	keyMetrics []string
	vs         []vsSpec
	targets    func(*ScenarioResult) []Target
}

type PathResult struct {
	Path string      `json:"path"`
	Runs []RunResult `json:"runs"`
	// Failed counts runs that ended in an error.
	Failed int `json:"failed_runs"`
	// Metrics summarises each metric over the runs that produced it.
	Metrics map[string]Stat `json:"metrics"`
	// VsDirect compares each run with the direct run of the same round,
	// then summarises: ratios and differences against the baseline
	// measured minutes apart, not against one measured at another time.
	VsDirect map[string]Stat `json:"vs_direct,omitempty"`
}

type RunResult struct {
	Run     int                `json:"run"`
	Metrics map[string]float64 `json:"metrics"`
	Error   string             `json:"error,omitempty"`
}

// Target is one of the targets beside what was measured. Never
// asserted: the tests check the harness, not the machine.
type Target struct {
	What     string  `json:"what"`
	Want     string  `json:"want"`
	Measured string  `json:"measured"`
	Value    float64 `json:"value"`
	Met      bool    `json:"met"`
}

type vsKind int

const (
	directOverPath  vsKind = iota // speed relative to direct: >1 is faster
	pathOverDirect                // cost relative to direct: >1 costs more
	pathMinusDirect               // added cost, in the metric's unit
)

type vsSpec struct {
	name, metric string
	kind         vsKind
}

func (sr *ScenarioResult) path(p string) *PathResult {
	for _, pr := range sr.Paths {
		if pr.Path == p {
			return pr
		}
	}
	pr := &PathResult{Path: p}
	sr.Paths = append(sr.Paths, pr)
	return pr
}

// get returns path p's result or nil.
func (sr *ScenarioResult) get(p string) *PathResult {
	for _, pr := range sr.Paths {
		if pr.Path == p {
			return pr
		}
	}
	return nil
}

// finish sorts the paths, summarises the runs and evaluates the targets.
func (sr *ScenarioResult) finish() {
	order := []string{pathDirect, pathKitsune, pathKitsuneTCP, pathKuboFront, pathFloor}
	slices.SortFunc(sr.Paths, func(a, b *PathResult) int { return slices.Index(order, a.Path) - slices.Index(order, b.Path) })
	direct := sr.get(pathDirect)
	for _, pr := range sr.Paths {
		values := map[string][]float64{}
		pr.Failed = 0
		for _, r := range pr.Runs {
			if r.Error != "" {
				pr.Failed++
				continue
			}
			for k, v := range r.Metrics {
				values[k] = append(values[k], v)
			}
		}
		pr.Metrics = map[string]Stat{}
		for k, vs := range values {
			pr.Metrics[k] = summarize(vs)
		}
		if direct == nil || pr == direct {
			continue
		}
		pr.VsDirect = map[string]Stat{}
		for _, spec := range sr.vs {
			var xs []float64
			for _, r := range pr.Runs {
				d := direct.run(r.Run)
				if r.Error != "" || d == nil || d.Error != "" {
					continue
				}
				pv, ok1 := r.Metrics[spec.metric]
				dv, ok2 := d.Metrics[spec.metric]
				if !ok1 || !ok2 {
					continue
				}
				var x float64
				switch spec.kind {
				case directOverPath:
					x = dv / pv
				case pathOverDirect:
					x = pv / dv
				case pathMinusDirect:
					x = pv - dv
				}
				if finite(x) {
					xs = append(xs, x)
				}
			}
			if s := summarize(xs); s.N > 0 {
				pr.VsDirect[spec.name] = s
			}
		}
	}
	if sr.targets != nil {
		sr.Targets = sr.targets(sr)
	}
}

func (pr *PathResult) run(i int) *RunResult {
	for j := range pr.Runs {
		if pr.Runs[j].Run == i {
			return &pr.Runs[j]
		}
	}
	return nil
}

// metric and vsDirect return NaN medians for what was not measured.
func (sr *ScenarioResult) metric(p, k string) Stat {
	if pr := sr.get(p); pr != nil {
		if s, ok := pr.Metrics[k]; ok {
			return s
		}
	}
	return Stat{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
}

func (sr *ScenarioResult) vsDirect(p, k string) Stat {
	if pr := sr.get(p); pr != nil {
		if s, ok := pr.VsDirect[k]; ok {
			return s
		}
	}
	return Stat{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
}

// overheadTarget compares Kitsune's overhead over direct with the floor's:
// both are medians over the runs, each run against its own direct run;
// met when Kitsune's is at most factor times the floor's.
func overheadTarget(what string, k, f Stat, unit string, format string, factor float64) Target {
	t := Target{What: what, Want: fmt.Sprintf("≤ %.1f × floor's", factor)}
	if !finite(k.Median) || !finite(f.Median) {
		t.Measured = "not measured"
		t.Value = math.NaN()
		return t
	}
	t.Measured = fmt.Sprintf("kitsune "+format+"%s, floor "+format+"%s", k.Median, unit, f.Median, unit)
	if f.Median > 0 {
		t.Value = k.Median / f.Median
		t.Measured += fmt.Sprintf(" (%.2f×)", t.Value)
	} else {
		t.Value = math.Inf(1)
	}
	// A floor with no measurable overhead leaves Kitsune none to spend.
	t.Met = k.Median <= factor*max(f.Median, 0)
	return t
}

func rangeText(s Stat, format string) string {
	if !finite(s.Median) {
		return "–"
	}
	if s.N <= 1 || s.Min == s.Max {
		return fmt.Sprintf(format, s.Median)
	}
	return fmt.Sprintf(format+" ("+format+"–"+format+")", s.Median, s.Min, s.Max)
}
