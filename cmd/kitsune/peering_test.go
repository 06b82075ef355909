package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPeeringCommand(t *testing.T) {
	key := filepath.Join(t.TempDir(), "kitsune.key")
	id := keyFileID(t, key)
	for _, tc := range []struct {
		name  string
		cmd   peeringCmd
		addrs []string
		err   string
	}{
		{"listen addresses with IP and port", peeringCmd{Listen: []string{"/ip4/198.51.100.1/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1", "/ip4/198.51.100.1/tcp/0"}, WS: []string{"/ip4/198.51.100.1/tcp/4002"}},
			[]string{"/ip4/198.51.100.1/tcp/4001", "/ip4/198.51.100.1/tcp/4002/ws"}, ""},
		{"announce wins", peeringCmd{Announce: []string{"/dns4/kitsune.example.org/tcp/4001", "/dns4/kitsune.example.org/udp/4001/quic-v1"}, Listen: []string{"/ip4/198.51.100.1/tcp/4001"}},
			[]string{"/dns4/kitsune.example.org/tcp/4001", "/dns4/kitsune.example.org/udp/4001/quic-v1"}, ""},
		{"wildcards only", peeringCmd{Listen: []string{"/ip4/0.0.0.0/tcp/4001"}}, nil, "--announce"},
		{"bad announce", peeringCmd{Announce: []string{"/ip4/1.2.3.4/tcp"}}, nil, "/ip4/1.2.3.4/tcp"},
		{"webtransport needs a certhash", peeringCmd{Announce: []string{"/ip4/198.51.100.1/udp/4001/quic-v1/webtransport"}}, nil, "certhash"},
		{"missing key file", peeringCmd{Key: filepath.Join(t.TempDir(), "none.key"), Listen: []string{"/ip4/198.51.100.1/tcp/4001"}}, nil, "none.key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			c := tc.cmd
			if c.Key == "" {
				c.Key = key
			}
			c.out = &out
			err := c.Run()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.err)
				}
				if out.Len() != 0 {
					t.Fatalf("printed %q on error", out.String())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// The shape Kubo's config takes for Peering.Peers.
			var got []struct {
				ID    string
				Addrs []string
			}
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, out.String())
			}
			if len(got) != 1 || got[0].ID != id.String() || !slices.Equal(got[0].Addrs, tc.addrs) {
				t.Fatalf("got %+v, want ID %s addrs %v", got, id, tc.addrs)
			}
		})
	}
}
