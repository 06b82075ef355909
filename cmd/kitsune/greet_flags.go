package main

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/bitswap"
	"github.com/kitsune-lb/kitsune/downstream"
)

// greetFlags control how Kitsune makes itself known to Bitswap clients.
type greetFlags struct {
	NoGreet bool `name:"no-greet" env:"KITSUNE_NO_GREET" help:"Do not send each new upstream peer speaking Bitswap 1.2.0 one HAVE for a block the fleet holds (the empty directory). Without that HAVE, Kubo clients (0.36 and later) outside the LAN never send their wants to Kitsune unless it is in their Peering.Peers."`
}

// newGreeter builds the greeter on the front host, or nil with
// --no-greet. It sees every peer that connects from now on; start runs it.
func newGreeter(off bool, front host.Host, pool *downstream.Pool, log *zap.Logger) (*bitswap.Greeter, error) {
	if off {
		return nil, nil
	}
	return bitswap.NewGreeter(bitswap.GreetConfig{CheckHolds: pool.Holds}, front, log)
}

// greetMetrics exports the greeter's counters on reg (the admin port's
// registry; nil without it), so a client that never asks Kitsune can be
// told apart from a greeting that failed.
func greetMetrics(reg prometheus.Registerer, g *bitswap.Greeter) error {
	if reg == nil || g == nil {
		return nil
	}
	c := g.Counters()
	outcome := func(o, help string, v func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "kitsune_greetings_total",
			Help:        "Greetings (one HAVE for a block the fleet holds, sent to each new upstream peer speaking Bitswap 1.2.0) by outcome: " + help,
			ConstLabels: prometheus.Labels{"outcome": o},
		}, func() float64 { return float64(v()) })
	}
	const help = "greeted = read by the peer; failed = an attempt that could not be sent or was reset; retried = sent again after a failure; gave_up = peers left ungreeted after every retry; skipped = peers without Bitswap 1.2.0; overflow = peers not queued while too many waited for a fleet check."
	err := errors.Join(
		reg.Register(outcome("greeted", help, c.Greeted.Load)),
		reg.Register(outcome("failed", help, c.Failed.Load)),
		reg.Register(outcome("retried", help, c.Retried.Load)),
		reg.Register(outcome("gave_up", help, c.GaveUp.Load)),
		reg.Register(outcome("skipped", help, c.Skipped.Load)),
		reg.Register(outcome("overflow", help, c.Overflow.Load)),
		reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kitsune_greeting_checks_total",
			Help: "Checks, through a fleet node's RPC API, that the fleet holds the greeting block.",
		}, func() float64 { return float64(c.Checks.Load()) })),
		reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "kitsune_greeting_checks_failed_total",
			Help: "Greeting-block checks that failed or found the block missing: nobody is greeted until one passes.",
		}, func() float64 { return float64(c.NotHeld.Load()) })),
	)
	if err != nil {
		return fmt.Errorf("greeting metrics: %w", err)
	}
	return nil
}

// fleetListener passes the pool's events to the relay and tells the
// greeter (if any) when a node joins, so the greeting block is checked as
// soon as there is a node to ask.
type fleetListener struct {
	*bitswap.Relay
	greeter *bitswap.Greeter
}

func (l fleetListener) NodeUp(id peer.ID) {
	l.Relay.NodeUp(id)
	if l.greeter != nil {
		l.greeter.NodeUp()
	}
}
