package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/pnet"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kitsune-lb/kitsune/proxy"
)

// frontFlags are the front door's: browser transports, the certificate for
// secure WebSockets, announce addresses, private networks on either side,
// resource limits and the optional relay service.
type frontFlags struct {
	WebTransport []string `name:"webtransport" env:"KITSUNE_WEBTRANSPORT" sep:"," placeholder:"MULTIADDR" help:"Comma-separated WebTransport listen multiaddrs (/ip4/0.0.0.0/udp/4001/quic-v1/webtransport; /quic-v1/webtransport is added to a bare /udp/PORT). Browsers dial them without a CA-signed certificate. Off by default; may share its UDP port with a QUIC listener."`
	WebRTCDirect []string `name:"webrtc-direct" env:"KITSUNE_WEBRTC_DIRECT" sep:"," placeholder:"MULTIADDR" help:"Comma-separated WebRTC-direct listen multiaddrs (/ip4/0.0.0.0/udp/4002/webrtc-direct; /webrtc-direct is added to a bare /udp/PORT). Browsers dial them without a CA-signed certificate; the certificate comes from the key file, so the address stays the same across restarts. Off by default."`
	Mplex        bool     `name:"mplex" env:"KITSUNE_MPLEX" default:"true" negatable:"" help:"Offer the mplex muxer after yamux: deployed js-ipfs (ipfs-core 0.18 and older) speaks nothing else. Peers that know yamux keep choosing it. --no-mplex when no such clients are left."`
	TLSCert      string   `name:"tls-cert" env:"KITSUNE_TLS_CERT" type:"path" placeholder:"FILE" help:"PEM certificate chain for secure WebSocket listeners (/tls/ws or /wss in -w or -l) and an HTTPS preload port (-p …/https). Re-read when the file changes."`
	TLSKey       string   `name:"tls-key" env:"KITSUNE_TLS_KEY" type:"path" placeholder:"FILE" help:"PEM private key of --tls-cert."`

	Announce       []string `name:"announce" env:"KITSUNE_ANNOUNCE" sep:"," placeholder:"MULTIADDR" help:"Comma-separated addresses to announce instead of the listen addresses, in identify and at start: a public DNS name or a TLS terminator in front (/dns4/preload.example.org/tcp/443/wss). A /webtransport or /webrtc-direct address gets Kitsune's /certhash."`
	AppendAnnounce []string `name:"append-announce" env:"KITSUNE_APPEND_ANNOUNCE" sep:"," placeholder:"MULTIADDR" help:"Comma-separated addresses to announce in addition to the listen (or --announce) addresses."`

	PSKFile           string `name:"psk-file" env:"KITSUNE_PSK_FILE" type:"path" placeholder:"FILE" help:"Put the upstream side on a private network: a swarm.key as Kubo uses it (/key/swarm/psk/1.0.0/). Only peers with the key can connect; TCP and WebSocket only."`
	DownstreamPSKFile string `name:"downstream-psk-file" env:"KITSUNE_DOWNSTREAM_PSK_FILE" type:"path" placeholder:"FILE" help:"Reach the downstream Kubo nodes on their private network: their swarm.key. Kitsune then dials them over TCP and WebSocket only."`

	MaxConns          int      `name:"max-conns" env:"KITSUNE_MAX_CONNS" default:"8192" help:"Connections the front host accepts in all; idle ones are trimmed a little below this. Raise the open-file limit to match."`
	MaxStreams        int      `name:"max-streams" env:"KITSUNE_MAX_STREAMS" default:"65536" help:"Streams open on the front host in all."`
	MaxStreamsPerPeer int      `name:"max-streams-per-peer" env:"KITSUNE_MAX_STREAMS_PER_PEER" default:"1024" help:"Streams one upstream peer may have open."`
	MaxConnsPerIP     int      `name:"max-conns-per-ip" env:"KITSUNE_MAX_CONNS_PER_IP" default:"16" help:"Connections from one IPv4 address or IPv6 /56 (an IPv6 /48 gets 8x). New connections from one address are also rate limited: a burst of 2x this (at least 8), then this many a minute. Loopback is not limited unless --conn-limit names it."`
	ConnLimit         []string `name:"conn-limit" env:"KITSUNE_CONN_LIMIT" sep:"," placeholder:"PREFIX=N" help:"Comma-separated connection budgets for whole networks, shared by every address in them, overriding --max-conns-per-ip: raise it for a load balancer or NAT in front of many clients (10.0.0.5=4096), lower it for others (203.0.113.0/24=32, 127.0.0.1=8). A bare address means /32 or /128."`

	Relay                     bool          `name:"relay" env:"KITSUNE_RELAY" help:"Run a circuit relay v2 service, so upstream peers that cannot be dialled directly can be reached through Kitsune. Off by default."`
	RelayMaxReservations      int           `name:"relay-max-reservations" env:"KITSUNE_RELAY_MAX_RESERVATIONS" default:"128" help:"Peers that may hold a relay slot at once."`
	RelayMaxReservationsPerIP int           `name:"relay-max-reservations-per-ip" env:"KITSUNE_RELAY_MAX_RESERVATIONS_PER_IP" default:"8" help:"Relay slots one IP address may hold."`
	RelayMaxCircuits          int           `name:"relay-max-circuits" env:"KITSUNE_RELAY_MAX_CIRCUITS" default:"16" help:"Relayed connections one peer may have open."`
	RelayDuration             time.Duration `name:"relay-duration" env:"KITSUNE_RELAY_DURATION" default:"2m" help:"A relayed connection is closed after this long."`
	RelayData                 int64         `name:"relay-data" env:"KITSUNE_RELAY_DATA" default:"131072" help:"A relayed connection is closed after this many bytes in either direction."`
}

// frontSettings is the validated front door: everything of the front and
// back hosts' configuration but their keys.
type frontSettings struct {
	Front   proxy.FrontConfig // without Key
	BackPSK pnet.PSK
}

// config validates the flags, adds the --webtransport and --webrtc-direct
// listeners to listen, and checks every listen address against what the
// front host can run: a PSK rules out the UDP transports, wss needs a
// certificate. Every error is one the operator fixes on the command line.
func (f *frontFlags) config(listen *[]ma.Multiaddr, preloadHTTPS bool) (frontSettings, error) {
	var s frontSettings
	for _, l := range []struct {
		flag, want string
		addrs      []string
	}{{"--webtransport", proxy.WebTransport, f.WebTransport}, {"--webrtc-direct", proxy.WebRTCDirect, f.WebRTCDirect}} {
		for _, raw := range l.addrs {
			a, err := parseUDPListen(raw, l.want)
			if err != nil {
				return s, fmt.Errorf("%s %q: %w", l.flag, raw, err)
			}
			if a != nil {
				*listen = append(*listen, a)
			}
		}
	}

	s.Front.NoMplex = !f.Mplex

	var err error
	if f.PSKFile != "" {
		if s.Front.PSK, err = proxy.LoadPSK(f.PSKFile); err != nil {
			return s, fmt.Errorf("--psk-file: %w", err)
		}
	}
	if f.DownstreamPSKFile != "" {
		if s.BackPSK, err = proxy.LoadPSK(f.DownstreamPSKFile); err != nil {
			return s, fmt.Errorf("--downstream-psk-file: %w", err)
		}
	}
	if pnet.ForcePrivateNetwork && (s.Front.PSK == nil || s.BackPSK == nil) {
		return s, fmt.Errorf("%s is set, so go-libp2p refuses a public host: give both --psk-file and --downstream-psk-file, or unset it", pnet.EnvKey)
	}

	switch {
	case f.TLSCert != "" && f.TLSKey != "":
		if s.Front.TLS, err = proxy.LoadTLS(f.TLSCert, f.TLSKey); err != nil {
			return s, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
	case f.TLSCert != "":
		return s, errors.New("--tls-cert needs --tls-key")
	case f.TLSKey != "":
		return s, errors.New("--tls-key needs --tls-cert")
	}

	wss := false
	for _, a := range *listen {
		t, err := proxy.TransportOf(a)
		if err != nil {
			return s, fmt.Errorf("listen address: %w", err)
		}
		if s.Front.PSK != nil && !proxy.WorksWithPSK(t) {
			return s, fmt.Errorf("--psk-file: %s cannot run on a private network: go-libp2p carries a PSK over TCP and WebSocket only "+
				"(QUIC, WebTransport and WebRTC-direct bring their own encryption). Remove it; note that the default -l includes QUIC, so give -l yourself, e.g. -l /ip4/0.0.0.0/tcp/4001", a)
		}
		if t == proxy.WSS {
			wss = true
			if s.Front.TLS == nil {
				return s, fmt.Errorf("%s is a secure WebSocket address: give --tls-cert and --tls-key", a)
			}
		}
	}
	if s.Front.TLS != nil && !wss && !preloadHTTPS {
		return s, errors.New("--tls-cert is set but nothing uses it: add a secure WebSocket listener (-w /ip4/0.0.0.0/tcp/443/tls/ws) or an HTTPS preload port (-p /ip4/0.0.0.0/tcp/443/https)")
	}
	if err := proxy.CheckListenAddrs(*listen, s.Front.PSK != nil, s.Front.TLS != nil); err != nil {
		return s, err // the checks above say it better; this keeps both in step
	}

	for _, a := range []struct {
		flag string
		in   []string
		out  *[]ma.Multiaddr
	}{{"--announce", f.Announce, &s.Front.Announce}, {"--append-announce", f.AppendAnnounce, &s.Front.AppendAnnounce}} {
		for _, raw := range a.in {
			if raw = strings.TrimSpace(raw); raw == "" {
				continue
			}
			m, err := ma.NewMultiaddr(raw)
			if err != nil {
				return s, fmt.Errorf("%s %q: %w", a.flag, raw, err)
			}
			if _, err := m.ValueForProtocol(ma.P_P2P); err == nil {
				return s, fmt.Errorf("%s %q: leave out /p2p/; Kitsune adds its own peer ID", a.flag, raw)
			}
			*a.out = append(*a.out, m)
		}
	}

	s.Front.Limits = proxy.Limits{
		Conns:          f.MaxConns,
		Streams:        f.MaxStreams,
		StreamsPerPeer: f.MaxStreamsPerPeer,
		ConnsPerIP:     f.MaxConnsPerIP,
	}
	for _, v := range []struct {
		name string
		n    int
	}{{"--max-conns", f.MaxConns}, {"--max-streams", f.MaxStreams}, {"--max-streams-per-peer", f.MaxStreamsPerPeer}, {"--max-conns-per-ip", f.MaxConnsPerIP}} {
		if v.n <= 0 {
			return s, fmt.Errorf("%s must be positive, got %d", v.name, v.n)
		}
	}
	for _, raw := range f.ConnLimit {
		if raw = strings.TrimSpace(raw); raw == "" {
			continue
		}
		n, err := parseConnLimit(raw)
		if err != nil {
			return s, fmt.Errorf("--conn-limit %q: %w", raw, err)
		}
		s.Front.Limits.Networks = append(s.Front.Limits.Networks, n)
	}
	if err := s.Front.Limits.Validate(); err != nil {
		return s, fmt.Errorf("limits: %w", err)
	}

	if f.Relay {
		for _, v := range []struct {
			name string
			n    int64
		}{{"--relay-max-reservations", int64(f.RelayMaxReservations)}, {"--relay-max-reservations-per-ip", int64(f.RelayMaxReservationsPerIP)},
			{"--relay-max-circuits", int64(f.RelayMaxCircuits)}, {"--relay-duration", int64(f.RelayDuration)}, {"--relay-data", f.RelayData}} {
			if v.n <= 0 {
				return s, fmt.Errorf("%s must be positive", v.name)
			}
		}
		s.Front.Relay = &proxy.RelayConfig{
			MaxReservations:      f.RelayMaxReservations,
			MaxReservationsPerIP: f.RelayMaxReservationsPerIP,
			MaxCircuits:          f.RelayMaxCircuits,
			Duration:             f.RelayDuration,
			Data:                 f.RelayData,
		}
	}
	return s, nil
}

// parseUDPListen reads a --webtransport or --webrtc-direct address, adding
// the transport's protocols to a bare /udp/PORT.
func parseUDPListen(raw, want string) (ma.Multiaddr, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, nil
	}
	a, err := ma.NewMultiaddr(raw)
	if err != nil {
		return nil, err
	}
	last := a[len(a)-1].Code()
	switch {
	case want == proxy.WebTransport && last == ma.P_UDP:
		a = a.Encapsulate(ma.StringCast("/quic-v1/webtransport"))
	case want == proxy.WebTransport && last == ma.P_QUIC_V1:
		a = a.Encapsulate(ma.StringCast("/webtransport"))
	case want == proxy.WebRTCDirect && last == ma.P_UDP:
		a = a.Encapsulate(ma.StringCast("/webrtc-direct"))
	}
	got, err := proxy.TransportOf(a)
	if err != nil {
		return nil, err
	}
	if got != want {
		return nil, fmt.Errorf("%s is a %s address, not %s", a, got, want)
	}
	return a, nil
}

// parseConnLimit reads PREFIX=N, where PREFIX may be a bare address.
func parseConnLimit(raw string) (proxy.NetworkLimit, error) {
	left, right, ok := strings.Cut(raw, "=")
	if !ok {
		return proxy.NetworkLimit{}, errors.New("want PREFIX=N, e.g. 10.0.0.5=4096 or 203.0.113.0/24=32")
	}
	left, right = strings.TrimSpace(left), strings.TrimSpace(right)
	var p netip.Prefix
	if strings.Contains(left, "/") {
		var err error
		if p, err = netip.ParsePrefix(left); err != nil {
			return proxy.NetworkLimit{}, err
		}
	} else {
		addr, err := netip.ParseAddr(left)
		if err != nil {
			return proxy.NetworkLimit{}, err
		}
		p = netip.PrefixFrom(addr, addr.BitLen())
	}
	n, err := strconv.Atoi(right)
	if err != nil || n < 0 {
		return proxy.NetworkLimit{}, fmt.Errorf("%q is not a connection count", right)
	}
	return proxy.NetworkLimit{Prefix: p.Masked(), Conns: n}, nil
}

// frontConfig is the front host's configuration with its key.
func (s frontSettings) frontConfig(key crypto.PrivKey, listen []ma.Multiaddr) proxy.FrontConfig {
	c := s.Front
	c.Key, c.ListenAddrs = key, listen
	return c
}

// printAddrs writes what an operator needs at start: which side is on a
// private network, where Kitsune listens and what it announces.
func (s frontSettings) printAddrs(out io.Writer, front host.Host) {
	side := func(psk pnet.PSK) string {
		if psk == nil {
			return "public"
		}
		// The fingerprint is the one Kubo prints ("Swarm key
		// fingerprint"), so operators can match keys without showing them.
		return fmt.Sprintf("private network (swarm key fingerprint %x)", proxy.PSKFingerprint(psk))
	}
	fmt.Fprintf(out, "Upstream side: %s\n", side(s.Front.PSK))
	fmt.Fprintf(out, "Downstream side: %s\n", side(s.BackPSK))
	fmt.Fprintln(out, "Listening on:")
	for _, a := range proxy.ListenAddrs(front) {
		fmt.Fprintf(out, "  %s\n", a)
	}
	if len(s.Front.Announce) > 0 || len(s.Front.AppendAnnounce) > 0 {
		fmt.Fprintln(out, "Announcing:")
		for _, a := range proxy.DialableAddrs(front) {
			fmt.Fprintf(out, "  %s\n", a)
		}
	}
	if pp := s.Front.ProxyProtocol; pp != nil {
		from := make([]string, len(pp.From))
		for i, p := range pp.From {
			from[i] = p.String()
		}
		fmt.Fprintf(out, "PROXY protocol required on TCP and WebSocket from %s\n", strings.Join(from, ", "))
	}
	if s.Front.Relay != nil {
		fmt.Fprintf(out, "Circuit relay v2 service on (up to %d reservations)\n", s.Front.Relay.MaxReservations)
	}
}
