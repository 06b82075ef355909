package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// peeringCmd prints Kitsune as a Kubo Peering.Peers entry. Peering is only
// needed by clients that must keep a connection to Kitsune (Kubo
// reconnects to its peered peers) or that run without Kitsune's greeting
// (--no-greet); see the README.
type peeringCmd struct {
	Key      string   `short:"k" env:"KITSUNE_KEY" default:"kitsune.key" type:"path" help:"Kitsune key file (not created: run Kitsune once, or 'kitsune key import')."`
	Announce []string `name:"announce" env:"KITSUNE_ANNOUNCE" sep:"," placeholder:"MULTIADDR" help:"Comma-separated addresses clients dial, as given to 'kitsune run --announce'. Default: the -l and -w addresses that name an IP and a port."`
	Listen   []string `short:"l" env:"KITSUNE_LISTEN" sep:"," placeholder:"MULTIADDR" help:"Comma-separated TCP and QUIC-v1 listen multiaddrs, as given to 'kitsune run -l'."`
	WS       []string `short:"w" env:"KITSUNE_WS" sep:"," placeholder:"MULTIADDR" help:"Comma-separated WebSocket listen multiaddrs, as given to 'kitsune run -w'."`

	out io.Writer `kong:"-"`
}

// peeringEntry is the shape of one Peering.Peers element in Kubo's config.
type peeringEntry struct {
	ID    peer.ID  `json:"ID"`
	Addrs []string `json:"Addrs"`
}

func (c *peeringCmd) Run() error {
	out := c.out
	if out == nil {
		out = os.Stdout
	}
	key, _, err := readPrivateKey(c.Key)
	if err != nil {
		return usageError{err}
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return usageError{fmt.Errorf("%s: %w", c.Key, err)}
	}
	addrs, err := c.addrs()
	if err != nil {
		return usageError{err}
	}
	b, err := json.MarshalIndent([]peeringEntry{{ID: id, Addrs: addrs}}, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", b)
	return err
}

// addrs are the announced addresses, or else the listen addresses a client
// can dial as written: a wildcard IP or port 0 says nothing about where
// Kitsune is reachable.
func (c *peeringCmd) addrs() ([]string, error) {
	var out []string
	if len(c.Announce) > 0 {
		for _, s := range c.Announce {
			if s = strings.TrimSpace(s); s == "" {
				continue
			}
			a, err := ma.NewMultiaddr(s)
			if err != nil {
				return nil, fmt.Errorf("--announce %q: %w", s, err)
			}
			if certhashNeeded(a) {
				return nil, fmt.Errorf("--announce %q: Kubo needs the /certhash Kitsune adds at run time; give its tcp, quic-v1 or ws address instead", s)
			}
			out = append(out, a.String())
		}
		if len(out) == 0 {
			return nil, errors.New("--announce is empty")
		}
		return out, nil
	}
	for _, l := range []struct {
		flag string
		vals []string
		ws   bool
	}{{"-l", c.Listen, false}, {"-w", c.WS, true}} {
		for _, s := range l.vals {
			a, err := parseListen(s, l.ws)
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", l.flag, s, err)
			}
			if a == nil || certhashNeeded(a) {
				continue
			}
			ip, err := manet.ToIP(a)
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", l.flag, s, err)
			}
			if addr, ok := netip.AddrFromSlice(ip); !ok || addr.IsUnspecified() || portOf(a) == "0" {
				continue
			}
			out = append(out, a.String())
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no address a client could dial: give --announce (the public address clients use), or -l/-w with an IP and a port that is not 0")
	}
	return out, nil
}

func certhashNeeded(a ma.Multiaddr) bool {
	for _, p := range a.Protocols() {
		if p.Code == ma.P_WEBTRANSPORT || p.Code == ma.P_WEBRTC_DIRECT {
			return true
		}
	}
	return false
}

func portOf(a ma.Multiaddr) string {
	if v, err := a.ValueForProtocol(ma.P_TCP); err == nil {
		return v
	}
	if v, err := a.ValueForProtocol(ma.P_UDP); err == nil {
		return v
	}
	return ""
}
