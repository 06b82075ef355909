package main

import (
	"context"
	"fmt"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	libp2pmetrics "github.com/libp2p/go-libp2p/core/metrics"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/geoip"
	"github.com/kitsune-lb/kitsune/metrics"
)

// geoipFlags say where upstream peers connect from.
type geoipFlags struct {
	GeoIPDB string `name:"geoip-db" env:"KITSUNE_GEOIP_DB" type:"path" placeholder:"FILE" help:"MaxMind-format country database (GeoLite2 Country or DB-IP Lite Country, .mmdb) for counting upstream peers, connections and bytes sent by country in /metrics, /api/status and the dashboard's map. Re-read when the file changes; a bad replacement keeps the previous one. Behind a load balancer the addresses are the balancer's (no PROXY protocol yet)."`
}

// geoRecheck is how often the database file is looked at for changes.
const geoRecheck = 5 * time.Second

// bandwidthTrim is how often libp2p's per-peer bandwidth meters idle for
// an hour are dropped: the counter keeps one per peer ever seen otherwise.
const bandwidthTrim = time.Minute

// config opens the database, so a missing or corrupt file stops Kitsune
// at start with an error naming it.
func (f *geoipFlags) config() (*geoip.DB, error) {
	if f.GeoIPDB == "" {
		return nil, nil
	}
	db, err := geoip.Open(f.GeoIPDB)
	if err != nil {
		return nil, fmt.Errorf("--geoip-db: %w", err)
	}
	return db, nil
}

// geo is the running per-country accounting.
type geo struct {
	db      *geoip.DB
	bw      *libp2pmetrics.BandwidthCounter
	tracker *geoip.Tracker
}

// newGeo prepares the accounting; nil without a database. Its bandwidth
// counter goes into the front host's configuration before the host is
// made.
func newGeo(db *geoip.DB) *geo {
	if db == nil {
		return nil
	}
	g := &geo{db: db, bw: libp2pmetrics.NewBandwidthCounter()}
	g.tracker = geoip.NewTracker(func(p peer.ID) uint64 { return uint64(g.bw.GetBandwidthForPeer(p).TotalOut) })
	return g
}

func (g *geo) reporter() libp2pmetrics.Reporter {
	if g == nil {
		return nil
	}
	return g.bw
}

// run watches front's connections and the database file until ctx ends.
func (g *geo) run(ctx context.Context, front host.Host, log *zap.Logger) {
	if g == nil {
		return
	}
	stop := geoip.Watch(front, g.db, g.tracker)
	defer stop()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		g.db.Watch(ctx.Done(), geoRecheck, log)
	}()
	defer func() { <-watched }()
	t := time.NewTicker(bandwidthTrim)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			// Count what connected peers were sent before trimming, so a
			// trimmed meter loses nothing already sent.
			g.tracker.Snapshot(now)
			g.bw.TrimIdle(now.Add(-time.Hour))
		}
	}
}

func (g *geo) source() *metrics.GeoSource {
	if g == nil {
		return nil
	}
	return &metrics.GeoSource{DB: g.db, Tracker: g.tracker}
}
