// Package metrics watches a running Kitsune for operators: Prometheus
// collectors, the /api/status document the dashboard reads, readiness,
// and the admin HTTP server that serves them with the dashboard itself.
//
// Almost everything is pulled at scrape time from what the parts already
// keep (the relay's counters and tables, the pool's node snapshots, the
// front host's connections), so the relay's hot path does no extra work.
// Only what nobody keeps is pushed: each want's latency per node (the
// pool's Observer hook) and each preload call's outcome and duration (the
// preload Observer hook).
//
// Labels stay bounded: a downstream node (its RPC URL), a transport, a
// state, an outcome; never an upstream peer or a CID.
package metrics

import (
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/kitsune-lb/kitsune/bitswap"
	"github.com/kitsune-lb/kitsune/downstream"
	"github.com/kitsune-lb/kitsune/preload"
)

// Relay is what is read from the Bitswap relay (bitswap.Relay).
type Relay interface {
	Counters() *bitswap.Counters
	Stats() bitswap.Stats
}

// Pool is what is read from the fleet (downstream.Pool).
type Pool interface {
	Nodes() []downstream.NodeStatus
}

// Sources are the running parts watched. Relay and Pool are required;
// Front (the upstream-facing host) may be nil in tests.
type Sources struct {
	Relay Relay
	Pool  Pool
	Front host.Host
	// MaxConns is the front host's connection limit, exported so alerts
	// can compare connections with it; 0 leaves it out.
	MaxConns int
	// Preload is whether the preload port is on.
	Preload bool
	// Geo, when not nil, counts upstream peers by country.
	Geo *GeoSource
}

// Options tune the status document. Zero values get the defaults noted.
type Options struct {
	// SampleInterval is how often throughput is sampled (1s) and
	// SampleWindow how far back samples are kept (5m).
	SampleInterval, SampleWindow time.Duration
	// RecentCalls is how many finished preload calls are kept (50).
	RecentCalls int
	// Version overrides the version read from the build info.
	Version string
}

func (o *Options) fill() {
	if o.SampleInterval <= 0 {
		o.SampleInterval = time.Second
	}
	if o.SampleWindow < o.SampleInterval {
		o.SampleWindow = 5 * time.Minute
	}
	if o.RecentCalls <= 0 {
		o.RecentCalls = 50
	}
}

// Metrics holds the collectors and the status rings. Make one with New,
// hand it to the pool and preload as their Observer, then Attach the
// running parts.
type Metrics struct {
	opts    Options
	started time.Time
	version string
	commit  string

	src     atomic.Pointer[Sources]
	closing atomic.Bool

	wantLatency   *prometheus.HistogramVec
	preloadCalls  *prometheus.CounterVec
	preloadTime   prometheus.Histogram
	preloadActive prometheus.Gauge
	// latencyNodes holds the node URLs wantLatency has series for, so
	// those of nodes gone from the fleet are dropped (see prune), each
	// with its series' Observer: WithLabelValues hashes and validates the
	// label on every call, and WantDone runs for every block relayed,
	// under the relay's lock (docs/performance.md, scenario 2).
	latencyNodes sync.Map // string -> prometheus.Observer

	mu         sync.Mutex
	samples    ring[counterSample]
	calls      ring[PreloadCall]
	activeCall int
}

// Latency buckets for a want on a Kubo node: loopback answers take a
// millisecond, a block fetched across a region tens of them, a node
// under load seconds.
var wantBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Preload calls walk whole DAGs: from a few milliseconds to minutes.
var callBuckets = []float64{.005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 120, 300}

// New registers Kitsune's collectors, the Go runtime and process
// collectors and kitsune_build_info on reg.
func New(reg prometheus.Registerer, opts Options) (*Metrics, error) {
	opts.fill()
	m := &Metrics{
		opts:    opts,
		started: time.Now(),
		samples: newRing[counterSample](int(opts.SampleWindow/opts.SampleInterval) + 1),
		calls:   newRing[PreloadCall](opts.RecentCalls),
		wantLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kitsune_downstream_want_latency_seconds",
			Help:    "Time from a want sent to a downstream node to its answer (block, HAVE or DONT_HAVE).",
			Buckets: wantBuckets,
		}, []string{"node"}),
		preloadCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kitsune_preload_calls_total",
			Help: "Preload (POST /api/v0/refs) calls by outcome: ok, stream_error, node_error, node_lost, unreachable, timeout, shutdown, client_gone, bad_request, rate_limited, no_node.",
		}, []string{"outcome"}),
		preloadTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "kitsune_preload_call_duration_seconds",
			Help:    "Duration of admitted preload calls, from arrival to the end of the answer.",
			Buckets: callBuckets,
		}),
		preloadActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kitsune_preload_calls_active",
			Help: "Preload calls running now.",
		}),
	}
	m.version, m.commit = buildVersion()
	if opts.Version != "" {
		m.version = opts.Version
	}
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kitsune_build_info",
		Help: "Always 1; the labels say which Kitsune build runs.",
	}, []string{"version", "revision", "goversion"})
	buildInfo.WithLabelValues(m.version, m.commit, goVersion()).Set(1)
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo,
		m.wantLatency, m.preloadCalls, m.preloadTime, m.preloadActive,
		pullCollector{m}, geoCollector{m},
	} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Every outcome shows from the start, at 0, so rate() works at once.
	for _, o := range []string{preload.OutcomeOK, preload.OutcomeStreamError, preload.OutcomeNodeError,
		preload.OutcomeNodeLost, preload.OutcomeUnreachable, preload.OutcomeTimeout, preload.OutcomeShutdown,
		preload.OutcomeClientGone, preload.OutcomeBadRequest, preload.OutcomeRateLimited, preload.OutcomeNoNode} {
		m.preloadCalls.WithLabelValues(o)
	}
	return m, nil
}

// Attach starts watching the running parts. Before it, scrapes show only
// the push metrics and the status says "starting".
func (m *Metrics) Attach(src Sources) {
	m.src.Store(&src)
	m.sample(time.Now())
}

// SetClosing marks Kitsune as shutting down: not ready any more.
func (m *Metrics) SetClosing() { m.closing.Store(true) }

func (m *Metrics) sources() *Sources { return m.src.Load() }

// WantDone implements downstream.Observer.
func (m *Metrics) WantDone(nodeURL string, o downstream.Outcome, latency time.Duration) {
	switch o {
	case downstream.OutcomeBlock, downstream.OutcomeHave, downstream.OutcomeDontHave:
		if o, ok := m.latencyNodes.Load(nodeURL); ok {
			o.(prometheus.Observer).Observe(latency.Seconds())
			return
		}
		o := m.wantLatency.WithLabelValues(nodeURL)
		m.latencyNodes.Store(nodeURL, o)
		o.Observe(latency.Seconds())
	}
}

// CallStarted implements preload.Observer.
func (m *Metrics) CallStarted(preload.Call) {
	m.preloadActive.Inc()
	m.mu.Lock()
	m.activeCall++
	m.mu.Unlock()
}

// CallFinished implements preload.Observer.
func (m *Metrics) CallFinished(r preload.CallResult) {
	m.preloadCalls.WithLabelValues(r.Outcome).Inc()
	if r.Admitted {
		m.preloadActive.Dec()
		m.preloadTime.Observe(r.Duration.Seconds())
	}
	c := PreloadCall{
		Time:       time.Now().Add(-r.Duration).UTC(),
		Path:       r.Call.Path,
		Node:       r.Call.Node.URL,
		Outcome:    r.Outcome,
		Status:     r.Status,
		DurationMS: float64(r.Duration.Microseconds()) / 1000,
	}
	if r.Call.Root.Defined() {
		c.Root = r.Call.Root.String()
	}
	if r.Call.Client.IsValid() {
		c.Client = r.Call.Client.String()
	}
	m.mu.Lock()
	if r.Admitted {
		m.activeCall--
	}
	m.calls.push(c)
	m.mu.Unlock()
}

var (
	_ downstream.Observer = (*Metrics)(nil)
	_ preload.Observer    = (*Metrics)(nil)
)

// buildVersion reads the module version and VCS revision the binary was
// built with, as far as the build recorded them.
func buildVersion() (version, revision string) {
	version, revision = "(devel)", "unknown"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && s.Value != "" {
			revision = s.Value
		}
	}
	return
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}

// ring keeps the last n values pushed.
type ring[T any] struct {
	buf  []T
	next int
	full bool
}

func newRing[T any](n int) ring[T] { return ring[T]{buf: make([]T, n)} }

func (r *ring[T]) push(v T) {
	r.buf[r.next] = v
	r.next++
	if r.next == len(r.buf) {
		r.next, r.full = 0, true
	}
}

// items returns the values oldest first.
func (r *ring[T]) items() []T {
	if !r.full {
		return append([]T(nil), r.buf[:r.next]...)
	}
	out := make([]T, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	return append(out, r.buf[:r.next]...)
}
