package main

import (
	"errors"
	"fmt"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/kitsune-lb/kitsune/proxy"
)

// proxyProtoFlags turn on the PROXY protocol for a balancer in front of
// replicas (docs/deploy.md), so per-IP limits and the rest see clients.
type proxyProtoFlags struct {
	ProxyProtocolFrom []string `name:"proxy-protocol-from" env:"KITSUNE_PROXY_PROTOCOL_FROM" sep:"," placeholder:"CIDR" help:"Comma-separated IPs or CIDRs of load balancers that send a PROXY protocol header (v2 or v1; HAProxy send-proxy-v2) on the TCP and WebSocket listeners. Their connections must start with one, and the client address it names is what per-IP limits, metrics and preload matching see; anyone else sending one is refused. Off by default."`
}

// config returns nil when the flag is unset. listen must already hold
// every front listen address.
func (f *proxyProtoFlags) config(listen []ma.Multiaddr) (*proxy.ProxyProtocol, error) {
	from, err := parseTrustedProxies(f.ProxyProtocolFrom)
	if err != nil {
		return nil, fmt.Errorf("--proxy-protocol-from %w", err)
	}
	if len(from) == 0 {
		return nil, nil
	}
	for _, a := range listen {
		switch t, _ := proxy.TransportOf(a); t {
		case proxy.TCP, proxy.WS, proxy.WSS:
			return &proxy.ProxyProtocol{From: from}, nil
		}
	}
	return nil, errors.New("--proxy-protocol-from is set but there is no TCP or WebSocket listener (-l /ip4/…/tcp/…, -w) to read it on")
}
