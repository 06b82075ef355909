package doctor

import (
	"encoding/json"
	"strings"
	"testing"
)

const backID = "12D3KooWAL1gPvUYCFQfEmB43Zsv8qgnQTKeRkxSxzKDkmZVGue7"
const otherID = "12D3KooWCGscENN9xjBByP1CeUVHvsHcGSYe7ntJqKvgzNVumsgF"

// config builds a Config from the JSON `ipfs config show` prints.
func config(t *testing.T, js string) *Config {
	t.Helper()
	var c Config
	if err := json.Unmarshal([]byte(js), &c); err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return &c
}

// wellSet is a node set up as the README says, seen from 127.0.0.1.
func wellSet(t *testing.T, cfg string) Facts {
	return Facts{
		URL: "http://127.0.0.1:5001", Version: "0.41.0", PeerID: otherID,
		Addrs:   []string{"/ip4/127.0.0.1/tcp/4001"},
		Listen:  []string{"/ip4/127.0.0.1/tcp/4001"},
		Dials:   []Dial{{Addr: "/ip4/127.0.0.1/tcp/4001"}},
		LocalIP: "127.0.0.1",
		Config:  config(t, cfg),
		Gateway: "http://127.0.0.1:8080",
	}
}

const goodConfig = `{
  "Addresses": {"Gateway": "/ip4/127.0.0.1/tcp/8080"},
  "Swarm": {"ResourceMgr": {"Allowlist": ["/ip4/127.0.0.1/p2p/` + backID + `"]}},
  "Peering": {"Peers": [{"ID": "` + backID + `"}]},
  "Internal": {"Bitswap": {"MaxOutstandingBytesPerPeer": 16777216}},
  "Routing": {"Type": "auto"}
}`

func TestCheck(t *testing.T) {
	k := Kitsune{BackID: backID}
	type row struct {
		check  string
		status Status
		fix    string // substring of the fix; "" means none expected
	}
	tests := []struct {
		name  string
		k     Kitsune
		facts func(t *testing.T) Facts
		want  []row
		rows  int // expected number of rows when > 0
	}{
		{"well set", k, func(t *testing.T) Facts { return wellSet(t, goodConfig) }, []row{
			{"rpc", OK, ""}, {"version", OK, ""}, {"swarm", OK, ""}, {"addr-filters", OK, ""},
			{"bitswap-server", OK, ""}, {"peering", OK, ""}, {"allowlist", OK, ""},
			{"max-outstanding", OK, ""}, {"broadcast", OK, ""}, {"routing", OK, ""},
			{"provide", OK, ""}, {"gateway", OK, ""}, {"routing-v1", OK, ""},
		}, 13},
		{"unreachable", k, func(t *testing.T) Facts {
			return Facts{URL: "http://127.0.0.1:1", RPCErr: "connection refused"}
		}, []row{{"rpc", Fail, "Addresses.API"}}, 1},
		{"old kubo", k, func(t *testing.T) Facts {
			f := wellSet(t, goodConfig)
			f.Version = "0.9.1"
			return f
		}, []row{{"version", Warn, "upgrade"}}, 0},
		{"server profile from loopback", k, func(t *testing.T) Facts {
			f := wellSet(t, `{"Swarm": {"AddrFilters": ["/ip4/10.0.0.0/ipcidr/8", "/ip4/127.0.0.0/ipcidr/8"]},
				"Addresses": {"NoAnnounce": ["/ip4/10.0.0.0/ipcidr/8", "/ip4/127.0.0.0/ipcidr/8"]}}`)
			f.Addrs, f.Dials = nil, nil
			return f
		}, []row{
			{"swarm", Fail, `ipfs config --json Addresses.NoAnnounce '["/ip4/10.0.0.0/ipcidr/8"]'`},
			{"addr-filters", Fail, `ipfs config --json Swarm.AddrFilters '["/ip4/10.0.0.0/ipcidr/8"]'`},
		}, 0},
		{"server profile, Kitsune on a public address", k, func(t *testing.T) Facts {
			f := wellSet(t, `{"Swarm": {"AddrFilters": ["/ip4/10.0.0.0/ipcidr/8", "/ip4/127.0.0.0/ipcidr/8"]}}`)
			f.LocalIP = "192.88.99.7"
			return f
		}, []row{{"addr-filters", OK, ""}}, 0},
		{"one filtered address", k, func(t *testing.T) Facts {
			f := wellSet(t, `{"Swarm": {"AddrFilters": ["/ip6/fe80::/ipcidr/10", "/ip4/192.0.2.9"]}}`)
			f.LocalIP = "192.0.2.9"
			return f
		}, []row{{"addr-filters", Fail, `'["/ip6/fe80::/ipcidr/10"]'`}}, 0},
		{"swarm closed", k, func(t *testing.T) Facts {
			f := wellSet(t, goodConfig)
			f.Dials = []Dial{{Addr: "/ip4/127.0.0.1/tcp/4001", Err: "connection refused"}}
			return f
		}, []row{{"swarm", Fail, "firewall"}}, 0},
		{"no allowlist", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Peering": {"Peers": [{"ID": "`+backID+`"}]}, "Swarm": {"ResourceMgr": {"Allowlist": ["/ip4/10.0.0.0/ipcidr/8"]}}}`)
		}, []row{{"allowlist", Fail, `ipfs config --json Swarm.ResourceMgr.Allowlist '["/ip4/10.0.0.0/ipcidr/8","/ip4/127.0.0.1/p2p/` + backID + `"]'`}}, 0},
		{"allowlist for another peer", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Swarm": {"ResourceMgr": {"Allowlist": ["/ip4/127.0.0.1/p2p/`+otherID+`"]}}}`)
		}, []row{{"allowlist", Fail, "Allowlist"}}, 0},
		{"allowlist by network", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Swarm": {"ResourceMgr": {"Allowlist": ["/ip4/127.0.0.0/ipcidr/8"]}}}`)
		}, []row{{"allowlist", OK, ""}}, 0},
		{"resource manager off", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Swarm": {"ResourceMgr": {"Enabled": false}}}`)
		}, []row{{"allowlist", OK, ""}}, 0},
		{"not peered, default broadcast control", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Peering": {"Peers": [{"ID": "`+otherID+`", "Addrs": ["/ip4/192.0.2.1/tcp/4001"]}]}}`)
		}, []row{
			{"peering", Warn, `ipfs config --json Peering.Peers '[{"Addrs":["/ip4/192.0.2.1/tcp/4001"],"ID":"` + otherID + `"},{"ID":"` + backID + `"}]'`},
			{"broadcast", Warn, "Peering.Peers"},
		}, 0},
		{"peered but broadcast control covers peers", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Peering": {"Peers": [{"ID": "`+backID+`"}]}, "Internal": {"Bitswap": {"BroadcastControl": {"PeeredPeers": true}}}}`)
		}, []row{{"broadcast", Warn, "ipfs config --json Internal.Bitswap.BroadcastControl.PeeredPeers false"}}, 0},
		{"broadcast control off", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Internal": {"Bitswap": {"BroadcastControl": {"Enable": false}}}}`)
		}, []row{{"broadcast", OK, ""}, {"max-outstanding", Warn, "MaxOutstandingBytesPerPeer 16777216"}}, 0},
		{"small outstanding bytes", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Internal": {"Bitswap": {"MaxOutstandingBytesPerPeer": 2097152}}}`)
		}, []row{{"max-outstanding", Warn, "16777216"}}, 0},
		{"bitswap server off", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Bitswap": {"ServerEnabled": false}}`)
		}, []row{{"bitswap-server", Fail, "ipfs config --json Bitswap.ServerEnabled true"}}, 0},
		{"bitswap over libp2p off", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Bitswap": {"Libp2pEnabled": false}}`)
		}, []row{{"bitswap-server", Fail, "Bitswap.Libp2pEnabled true"}}, 0},
		{"routing none, provide off", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Routing": {"Type": "none"}, "Provide": {"Enabled": false}}`)
		}, []row{{"routing", Warn, "ipfs config Routing.Type auto"}, {"provide", Warn, "ipfs config --json Provide.Enabled true"}}, 0},
		{"no gateway", k, func(t *testing.T) Facts {
			f := wellSet(t, `{"Addresses": {"Gateway": []}}`)
			f.Gateway = ""
			return f
		}, []row{{"gateway", Warn, "Addresses.Gateway"}, {"routing-v1", Warn, "gateway row"}}, 0},
		{"gateway without routing API", k, func(t *testing.T) Facts {
			return wellSet(t, `{"Addresses": {"Gateway": "/ip4/127.0.0.1/tcp/8080"}, "Gateway": {"ExposeRoutingAPI": false}}`)
		}, []row{{"gateway", OK, ""}, {"routing-v1", Warn, "ipfs config --json Gateway.ExposeRoutingAPI true"}}, 0},
		{"gateway not serving", k, func(t *testing.T) Facts {
			f := wellSet(t, goodConfig)
			f.GatewayErr = "connection refused"
			return f
		}, []row{{"gateway", Warn, "Addresses.Gateway"}}, 0},
		{"no back key", Kitsune{BackErr: "no back host key at k.back"}, func(t *testing.T) Facts { return wellSet(t, goodConfig) }, []row{
			{"peering", Warn, "-k"}, {"allowlist", Warn, "-k"}, {"broadcast", Warn, "BroadcastControl.Enable false"},
		}, 0},
		{"config unreadable", k, func(t *testing.T) Facts {
			f := wellSet(t, goodConfig)
			f.Config, f.ConfigErr = nil, "403 Forbidden"
			return f
		}, []row{{"config", Fail, "config/show"}, {"swarm", OK, ""}}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.facts(t)
			rs := Check(tc.k, f)
			if tc.rows > 0 && len(rs) != tc.rows {
				t.Errorf("%d rows, want %d: %+v", len(rs), tc.rows, rs)
			}
			seen := map[string]bool{}
			for _, r := range rs {
				if seen[r.Check] {
					t.Errorf("check %s twice", r.Check)
				}
				seen[r.Check] = true
				if r.Node != f.URL || r.Reason == "" {
					t.Errorf("row %+v: wrong node or no reason", r)
				}
				if (r.Status == OK) != (r.Fix == "") {
					t.Errorf("row %+v: a fix exactly when not ok", r)
				}
			}
			for _, w := range tc.want {
				var got *Result
				for i := range rs {
					if rs[i].Check == w.check {
						got = &rs[i]
					}
				}
				if got == nil {
					t.Errorf("no %s row in %+v", w.check, rs)
					continue
				}
				if got.Status != w.status || !strings.Contains(got.Fix, w.fix) {
					t.Errorf("%s: %s %q fix %q; want %s, fix containing %q", w.check, got.Status, got.Reason, got.Fix, w.status, w.fix)
				}
			}
			wantFail := false
			for _, r := range rs {
				wantFail = wantFail || r.Status == Fail
			}
			if Failed(rs) != wantFail {
				t.Errorf("Failed = %v", Failed(rs))
			}
		})
	}
}

func TestOlder(t *testing.T) {
	for _, tc := range []struct {
		v, than string
		want    bool
	}{
		{"0.40.1", "0.41.0", true}, {"0.41.0", "0.41.0", false}, {"0.43.1", "0.41.0", false},
		{"0.9.1", "0.41.0", true}, {"1.0.0", "0.41.0", false}, {"0.41.0-rc1", "0.41.0", false},
		{"nonsense", "0.41.0", false}, {"", "0.41.0", false},
	} {
		if got := older(tc.v, tc.than); got != tc.want {
			t.Errorf("older(%q, %q) = %v", tc.v, tc.than, got)
		}
	}
}

func TestStatusJSON(t *testing.T) {
	b, err := json.Marshal([]Result{{Node: "n", Check: "c", Status: Warn, Reason: "r", Fix: "f"}, {Status: Fail}, {Status: OK}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"status":"warn"`, `"status":"fail"`, `"status":"ok"`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("%s lacks %s", b, s)
		}
	}
	var back []Result
	if err := json.Unmarshal(b, &back); err != nil || back[0].Status != Warn || back[1].Status != Fail || back[2].Status != OK {
		t.Errorf("round trip: %+v, %v", back, err)
	}
	var r Result
	if err := json.Unmarshal([]byte(`{"status":"bad"}`), &r); err == nil {
		t.Error("an unknown status was accepted")
	}
}
