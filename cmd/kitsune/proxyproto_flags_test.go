package main

import (
	"slices"
	"strings"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

func TestProxyProtocolFlag(t *testing.T) {
	tcpWS := []ma.Multiaddr{ma.StringCast("/ip4/0.0.0.0/tcp/4001"), ma.StringCast("/ip4/0.0.0.0/tcp/4002/ws")}
	quicOnly := []ma.Multiaddr{ma.StringCast("/ip4/0.0.0.0/udp/4001/quic-v1")}
	for _, c := range []struct {
		name    string
		from    []string
		listen  []ma.Multiaddr
		want    []string // nil: off
		wantErr string
	}{
		{name: "unset", listen: tcpWS},
		{name: "empty entries", from: []string{" ", ""}, listen: tcpWS},
		{name: "address and prefix", from: []string{"10.0.2.1", "10.0.3.0/24", "2001:db8::1"}, listen: tcpWS, want: []string{"10.0.2.1/32", "10.0.3.0/24", "2001:db8::1/128"}},
		{name: "v4-mapped", from: []string{"::ffff:10.0.2.1"}, listen: tcpWS, want: []string{"10.0.2.1/32"}},
		{name: "not an address", from: []string{"balancer.local"}, listen: tcpWS, wantErr: `"balancer.local"`},
		{name: "nothing to read it on", from: []string{"10.0.2.1"}, listen: quicOnly, wantErr: "no TCP or WebSocket listener"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := proxyProtoFlags{ProxyProtocolFrom: c.from}
			pp, err := f.config(c.listen)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one mentioning %s", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.want == nil {
				if pp != nil {
					t.Fatalf("PROXY protocol on: %+v", pp)
				}
				return
			}
			var got []string
			for _, p := range pp.From {
				got = append(got, p.String())
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("from %v, want %v", got, c.want)
			}
			if err := pp.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
