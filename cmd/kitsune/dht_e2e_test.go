package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/kitsune-lb/kitsune/internal/testkit"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPrivateDHT: three Kubo nodes holding the swarm key, Routing.Type
// dht, bootstrapping only to Kitsune (--psk-file, --private-dht): node A
// learns node B's address through Kitsune's DHT and connects to it; a
// fourth node without the key is refused; the public fleet behind
// Kitsune never sees a DHT protocol on Kitsune's back host nor learns of
// the private members.
//
// Every process runs in one fresh namespace that has only a loopback
// interface, each on its own 127.0.0.x address (see loopbackNode). Kubo's
// DHT puts peers with private addresses in its LAN table and peers with
// public ones in its WAN table; the documentation ranges are neither, so
// no Kubo DHT works on them. Loopback counts as private for the LAN
// table's filter (go-libp2p-kad-dht's isPrivateAddr uses manet.Private4,
// which holds 127.0.0.0/8), but the LAN DHT drops loopback addresses it
// learns from peers unless Kubo's Routing.LoopbackAddressesOnLanDHT is on
// (Kubo's own test profile turns it on for the same reason), so every
// node here sets it.
func TestPrivateDHT(t *testing.T) {
	bin := buildBinary(t)
	ns := newLoopbackNS(t)

	keyHex := hex.EncodeToString(randomBytes(t, 32))
	swarmKey := []byte("/key/swarm/psk/1.0.0/\n/base16/\n" + keyHex + "\n")
	pskFile := filepath.Join(t.TempDir(), "swarm.key")
	if err := os.WriteFile(pskFile, swarmKey, 0o600); err != nil {
		t.Fatal(err)
	}

	// The public fleet runs a DHT of its own, so it would use one on
	// Kitsune's back host if it were offered.
	fleet := startNSKubo(t, ns, []string{"--profile=test"}, loopbackNode(2, map[string]any{
		"Discovery.MDNS.Enabled": false,
		"Bootstrap":              []string{},
		"Routing.Type":           "dht",
	}))
	k := startNS(t, ns, nil, bin, "-d", "/ip4/127.0.0.2/tcp/5001", "-l", "/ip4/127.0.0.1/tcp/4101", "-w", "",
		"--admin", "off", "-k", filepath.Join(t.TempDir(), "kitsune.key"), "--psk-file", pskFile, "--private-dht")
	kid := strings.TrimPrefix(k.waitLine(t, "Kitsune peer ID ", 60*time.Second), "Kitsune peer ID ")
	backID := strings.Fields(strings.TrimPrefix(k.waitLine(t, "Back host peer ID ", 10*time.Second), "Back host peer ID "))[0]
	k.waitLine(t, "Private DHT server on the upstream side (peer records only)", 10*time.Second)
	kaddr := "/ip4/127.0.0.1/tcp/4101/p2p/" + kid

	// Member A is 127.0.0.3, B 127.0.0.4, C 127.0.0.5, D 127.0.0.6.
	member := func(host int, key []byte) *nsKubo {
		return startNSKuboKey(t, ns, key, nil, loopbackNode(host, map[string]any{
			"Bootstrap":              []string{kaddr},
			"Routing.Type":           "dht",
			"Discovery.MDNS.Enabled": false, // found through the DHT, not by mDNS
			"AutoConf.Enabled":       false, // Kubo refuses mainnet AutoConf with a swarm key
		}))
	}
	a, b, c := member(3, swarmKey), member(4, swarmKey), member(5, swarmKey)
	for _, n := range []*nsKubo{a, b, c} {
		eventually(t, 60*time.Second, "a member connected to Kitsune", func() bool { return n.connectedTo(t, kid) })
	}
	// With mDNS off and Kitsune as the only bootstrap peer, the DHT is the
	// only way A can learn of B. Kubo's DHT bootstrap already looks up its
	// own ID, which can bring B's address (and a connection) before the
	// explicit lookup below: that connection too came from Kitsune's DHT.
	// Without --private-dht, A is not connected to B here and the lookup
	// below fails with "routing: not found" (checked by hand once).
	t.Logf("A connected to B after the DHT bootstrap alone: %v", a.connectedTo(t, b.ID))

	// A asks the DHT where B is. Kitsune's routing table fills as members
	// connect; a lookup before B has shown up there may find nothing, so
	// it is retried a few times.
	var found string
	var lastErr error
	var lastOut []byte
	testkit.EventuallyEvery(t, 60*time.Second, 2*time.Second, func() string {
		return fmt.Sprintf("A could not find B through the DHT: %v\n%s", lastErr, lastOut)
	}, func() bool {
		lastOut, lastErr = a.ipfs(testCtx(t, 30*time.Second), "routing", "findpeer", "--timeout=20s", b.ID)
		if lastErr == nil && strings.Contains(string(lastOut), "/ip4/127.0.0.4/tcp/4001") {
			found = strings.TrimSpace(string(lastOut))
			return true
		}
		return false
	})
	t.Logf("A found B at: %s", strings.ReplaceAll(found, "\n", " "))
	a.mustIPFS(t, "swarm", "connect", "/ip4/127.0.0.4/tcp/4001/p2p/"+b.ID)
	if !a.connectedTo(t, b.ID) {
		t.Fatal("A is not connected to B after connecting to the address the DHT gave")
	}
	protos := peerProtocols(t, a, kid)
	if !slices.Contains(protos, "/ipfs/lan/kad/1.0.0") || !slices.Contains(protos, "/ipfs/kad/1.0.0") {
		t.Errorf("Kitsune's front host does not offer the DHT protocols to members: %v", protos)
	}

	// A node without the key cannot connect.
	d := member(6, nil)
	if out, err := d.ipfs(testCtx(t, 40*time.Second), "swarm", "connect", "--timeout=20s", kaddr); err == nil {
		t.Fatalf("a node without the swarm key connected to Kitsune: %s", out)
	}
	if d.connectedTo(t, kid) {
		t.Fatal("the node without the key is connected to Kitsune")
	}

	// The public side: the fleet sees no DHT on the back host and cannot
	// find the private members.
	protos = peerProtocols(t, fleet, backID)
	if len(protos) == 0 {
		t.Fatal("the fleet node knows no protocols of Kitsune's back host")
	}
	for _, p := range protos {
		if strings.Contains(p, "/kad/") {
			t.Errorf("the back host offers %s to the public fleet", p)
		}
	}
	if out, err := fleet.ipfs(testCtx(t, 30*time.Second), "routing", "findpeer", "--timeout=10s", a.ID); err == nil {
		t.Errorf("the public fleet found private member A: %s", out)
	}
	for _, line := range strings.Split(fleet.mustIPFS(t, "swarm", "peers"), "\n") {
		if line != "" && !strings.HasSuffix(line, "/p2p/"+backID) {
			t.Errorf("the fleet is connected to something besides Kitsune's back host: %s", line)
		}
	}
}

// peerProtocols is what node n's peerstore holds as p's protocols
// (from identify).
func peerProtocols(t *testing.T, n *nsKubo, p string) []string {
	t.Helper()
	var id struct{ Protocols []string }
	if err := json.Unmarshal([]byte(n.mustIPFS(t, "id", "--enc=json", p)), &id); err != nil {
		t.Fatal(err)
	}
	return id.Protocols
}

// Kitsune's private DHT keeps peer records only unless asked: a provider
// record member C announces is dropped, so member A finds no provider;
// with --private-dht-all-records A finds C. The members are DHT clients
// (Routing.Type dhtclient; with "dht" Kubo serves its LAN DHT itself and
// A would ask C directly), so Kitsune is the only DHT server that could
// hold the record. (Kitsune's LAN DHT stores C's record without C's
// loopback addresses, which it filters, so A learns C's ID only: what the
// test checks.)
func TestPrivateDHTRecords(t *testing.T) {
	bin := buildBinary(t)
	for _, tc := range []struct {
		name  string
		flags []string
		found bool
	}{
		{"peer records only", nil, false},
		{"all records", []string{"--private-dht-all-records"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := newLoopbackNS(t) // addresses as in TestPrivateDHT
			swarmKey := []byte("/key/swarm/psk/1.0.0/\n/base16/\n" + hex.EncodeToString(randomBytes(t, 32)) + "\n")
			pskFile := filepath.Join(t.TempDir(), "swarm.key")
			if err := os.WriteFile(pskFile, swarmKey, 0o600); err != nil {
				t.Fatal(err)
			}
			startNSKubo(t, ns, []string{"--profile=test"}, loopbackNode(2, map[string]any{
				"Bootstrap":    []string{},
				"Routing.Type": "none",
			}))
			args := append([]string{"-d", "/ip4/127.0.0.2/tcp/5001", "-l", "/ip4/127.0.0.1/tcp/4101", "-w", "",
				"--admin", "off", "-k", filepath.Join(t.TempDir(), "kitsune.key"), "--psk-file", pskFile, "--private-dht"}, tc.flags...)
			k := startNS(t, ns, nil, bin, args...)
			kid := strings.TrimPrefix(k.waitLine(t, "Kitsune peer ID ", 60*time.Second), "Kitsune peer ID ")
			k.waitLine(t, "Private DHT server", 10*time.Second)
			member := func(host int) *nsKubo {
				return startNSKuboKey(t, ns, swarmKey, nil, loopbackNode(host, map[string]any{
					"Bootstrap":              []string{"/ip4/127.0.0.1/tcp/4101/p2p/" + kid},
					"Routing.Type":           "dhtclient",
					"Discovery.MDNS.Enabled": false,
					"AutoConf.Enabled":       false,
				}))
			}
			a, c := member(3), member(5)
			for _, n := range []*nsKubo{a, c} {
				eventually(t, 60*time.Second, "a member connected to Kitsune", func() bool { return n.connectedTo(t, kid) })
			}
			file := filepath.Join(t.TempDir(), "provided")
			if err := os.WriteFile(file, randomBytes(t, 4096), 0o600); err != nil {
				t.Fatal(err)
			}
			cid := c.mustIPFS(t, "add", "-Q", "--pin=false", file)
			c.mustIPFS(t, "routing", "provide", cid)

			// Bounded: the positive case finds C within seconds; the
			// negative one is given the same 30 s to find anything.
			var provs string
			deadline := time.Now().Add(30 * time.Second)
			for time.Now().Before(deadline) {
				out, _ := a.ipfs(testCtx(t, 20*time.Second), "routing", "findprovs", "--num-providers=1", "--timeout=10s", cid)
				if provs = strings.TrimSpace(string(out)); provs != "" {
					break
				}
				time.Sleep(time.Second)
			}
			if got := strings.Contains(provs, c.ID); got != tc.found {
				t.Fatalf("A found providers %q; want C (%s) found: %v", provs, c.ID, tc.found)
			}
			t.Logf("providers A found: %q", provs)
		})
	}
}

// loopbackNode adds to cfg the addresses of a Kubo node that is alone on
// 127.0.0.host in a loopback-only namespace (newLoopbackNS): RPC API and
// swarm there (the swarm on TCP only: go-libp2p carries a PSK over TCP
// and WebSocket), no gateway, and loopback addresses kept by the LAN DHT.
func loopbackNode(host int, cfg map[string]any) map[string]any {
	ip := "/ip4/127.0.0." + strconv.Itoa(host)
	cfg["Addresses.API"] = ip + "/tcp/5001"
	cfg["Addresses.Gateway"] = []string{}
	cfg["Addresses.Swarm"] = []string{ip + "/tcp/4001"}
	cfg["Routing.LoopbackAddressesOnLanDHT"] = true
	return cfg
}
