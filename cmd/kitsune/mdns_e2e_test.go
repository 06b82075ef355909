package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMDNSOnLAN: a Kubo node with Kubo's default configuration on the same
// LAN as Kitsune finds it by mDNS and fetches a file only the fleet holds;
// with --mdns off it never connects. Kitsune (the real binary) and its
// one-node fleet share a namespace; the fleet node listens on loopback
// only and has mDNS off, so the client can reach the file only through
// Kitsune.
func TestMDNSOnLAN(t *testing.T) {
	bin := buildBinary(t)
	l := newLAN(t, "198.51.100.1/24", "198.51.100.2/24")
	kns, cns := l.members[0], l.members[1]

	fleet := startNSKubo(t, kns, []string{"--profile=test"}, map[string]any{
		"Addresses.API":          "/ip4/127.0.0.1/tcp/5001",
		"Addresses.Gateway":      []string{},
		"Addresses.Swarm":        []string{"/ip4/127.0.0.1/tcp/4001"},
		"Discovery.MDNS.Enabled": false,
		"Bootstrap":              []string{},
		"Routing.Type":           "none",
	})
	data := randomBytes(t, 1<<20)
	file := filepath.Join(t.TempDir(), "only-in-the-fleet")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	c := fleet.mustIPFS(t, "add", "-Q", file)

	// The client: `ipfs init` and nothing else.
	client := startNSKubo(t, cns, nil, nil)

	key := filepath.Join(t.TempDir(), "kitsune.key")
	kitsune := func(extra ...string) (*nsProc, string) {
		args := append([]string{"-d", "/ip4/127.0.0.1/tcp/5001", "-l", "/ip4/0.0.0.0/tcp/4101,/ip4/0.0.0.0/udp/4101/quic-v1", "-w", "", "--admin", "off", "-k", key}, extra...)
		p := startNS(t, kns, nil, bin, args...)
		id := strings.TrimPrefix(p.waitLine(t, "Kitsune peer ID ", 60*time.Second), "Kitsune peer ID ")
		p.waitLine(t, "Listening on:", 30*time.Second)
		return p, id
	}

	// Off: the client sees no Kitsune. 20 s spans the client's first mDNS
	// queries (at start, then 4 s and about 10 s later) and Kitsune's own
	// start; a Kitsune that announced would be found within a few seconds.
	off, id := kitsune()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if client.connectedTo(t, id) {
			t.Fatal("the client connected to Kitsune although --mdns is off")
		}
		time.Sleep(time.Second)
	}
	off.stop()

	// On: the client finds Kitsune and fetches through it.
	on, _ := kitsune("--mdns")
	on.waitLine(t, "Announcing on the local network by mDNS", 10*time.Second)
	found := time.Now()
	eventually(t, 60*time.Second, "the client connected to Kitsune by mDNS", func() bool { return client.connectedTo(t, id) })
	t.Logf("client connected to Kitsune %v after Kitsune started announcing", time.Since(found).Round(100*time.Millisecond))
	// What the client knows of Kitsune's addresses (mDNS and identify):
	// with a loopback or private one among them, Kubo counts Kitsune as a
	// local peer and broadcasts its wants to it.
	t.Logf("the client's addresses for Kitsune: %v", peerAddrs(client.mustIPFS(t, "swarm", "addrs"), id))
	start := time.Now()
	got, err := client.ipfs(testCtx(t, 60*time.Second), "cat", "--timeout=50s", c)
	if err != nil {
		peers, _ := client.ipfs(testCtx(t, 10*time.Second), "swarm", "addrs")
		t.Fatalf("fetch through Kitsune: %v\nclient's known addresses:\n%s", err, peers)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes, want the %d added", len(got), len(data))
	}
	t.Logf("fetched %d bytes through Kitsune in %v", len(got), time.Since(start).Round(time.Millisecond))
}

// peerAddrs picks one peer's addresses out of `ipfs swarm addrs` output:
// a "<peer ID> (n)" line followed by its indented addresses.
func peerAddrs(out, id string) []string {
	var addrs []string
	in := false
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
			in = strings.HasPrefix(line, id+" ")
			continue
		}
		if in {
			addrs = append(addrs, strings.TrimSpace(line))
		}
	}
	return addrs
}
