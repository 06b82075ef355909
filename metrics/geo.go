package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kitsune-lb/kitsune/geoip"
)

// GeoSource is where upstream peers connect from (--geoip-db).
type GeoSource struct {
	DB      *geoip.DB
	Tracker *geoip.Tracker
}

// ProxyNote is what the dashboard and /api/status say about addresses
// behind a load balancer.
const ProxyNote = "Countries come from the address each connection arrives from. Behind a load balancer or TLS terminator that is the balancer's address, not the client's: Kitsune does not read the PROXY protocol yet, so run it where clients connect to it directly for these figures to mean anything."

// GeoStatus is the "geo" part of /api/status, present with --geoip-db.
type GeoStatus struct {
	Database geoip.Info `json:"database"`
	// Countries are every country seen since start, most peers first.
	Countries []geoip.Country `json:"countries"`
	Note      string          `json:"note"`
}

func (g *GeoSource) status(now time.Time) *GeoStatus {
	return &GeoStatus{Database: g.DB.Info(), Countries: g.Tracker.Snapshot(now), Note: ProxyNote}
}

// Labels stay bounded: a country is a two-letter code from the database
// or "unknown" (see geoip.DB.Country).
var (
	descCountryPeers = desc("kitsune_upstream_country_peers", "Upstream peers connected now, by the country of their first connection's address (--geoip-db); \"unknown\" when the database has none.", "country")
	descCountryConns = desc("kitsune_upstream_country_connections_total", "Connections from upstream peers, by the country of their address.", "country")
	descCountryBytes = desc("kitsune_upstream_country_sent_bytes_total", "Bytes the front host sent to upstream peers (all protocols), by country; counted when scraped and when a peer leaves.", "country")
	descGeoBuilt     = desc("kitsune_geoip_database_build_timestamp_seconds", "Build time of the GeoIP database in use.")
	descGeoFailing   = desc("kitsune_geoip_reload_failing", "1 when the newest version of the GeoIP database file was refused and the previous one is still in use.")
)

type geoCollector struct{ m *Metrics }

func (c geoCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCountryPeers, descCountryConns, descCountryBytes, descGeoBuilt, descGeoFailing} {
		ch <- d
	}
}

func (c geoCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.m.sources()
	if src == nil || src.Geo == nil {
		return
	}
	for _, cs := range src.Geo.Tracker.Snapshot(time.Now()) {
		ch <- prometheus.MustNewConstMetric(descCountryPeers, prometheus.GaugeValue, float64(cs.Peers), cs.Code)
		ch <- prometheus.MustNewConstMetric(descCountryConns, prometheus.CounterValue, float64(cs.Connections), cs.Code)
		ch <- prometheus.MustNewConstMetric(descCountryBytes, prometheus.CounterValue, float64(cs.BytesSent), cs.Code)
	}
	info := src.Geo.DB.Info()
	ch <- prometheus.MustNewConstMetric(descGeoBuilt, prometheus.GaugeValue, float64(info.BuildTime.Unix()))
	ch <- prometheus.MustNewConstMetric(descGeoFailing, prometheus.GaugeValue, b2f(info.LastError != ""))
}
