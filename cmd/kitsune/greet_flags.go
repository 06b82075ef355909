package main

import (
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
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
