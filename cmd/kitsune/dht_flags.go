package main

import (
	"errors"

	"github.com/kitsune-lb/kitsune/proxy"
)

// dhtFlags turn on a DHT for the private upstream side.
type dhtFlags struct {
	PrivateDHT           bool `name:"private-dht" env:"KITSUNE_PRIVATE_DHT" help:"Run a Kademlia DHT server on the front host, so members of the private network (--psk-file) that bootstrap to Kitsune find each other's addresses (Kubo: Routing.Type dht, Bootstrap set to Kitsune). Serves Kubo's WAN and LAN DHT protocols; never runs on the downstream side. Needs --psk-file. Off by default."`
	PrivateDHTAllRecords bool `name:"private-dht-all-records" env:"KITSUNE_PRIVATE_DHT_ALL_RECORDS" help:"Keep provider and value (IPNS) records in the private DHT too, in memory. Without it only peer records are served; other records are accepted and dropped."`
}

// config checks the DHT flags against the front door's: a DHT is only for
// a private upstream side, where it cannot leak into the public network.
func (f *dhtFlags) config(front frontSettings) (*proxy.PrivateDHTConfig, error) {
	switch {
	case f.PrivateDHTAllRecords && !f.PrivateDHT:
		return nil, errors.New("--private-dht-all-records needs --private-dht")
	case !f.PrivateDHT:
		return nil, nil
	case front.Front.PSK == nil:
		return nil, errors.New("--private-dht needs --psk-file: the DHT is for a private upstream network; on the public side it would join Kitsune to the public DHT")
	}
	return &proxy.PrivateDHTConfig{AllRecords: f.PrivateDHTAllRecords}, nil
}
