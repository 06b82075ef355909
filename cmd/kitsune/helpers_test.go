package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/zap/zaptest"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/internal/testkit"
	"github.com/kitsune-lb/kitsune/proxy"
)

// keyFileID loads the key file at path, creating it if missing, as the
// binary does, and returns its peer ID: a test that starts Kitsune on that
// file knows the ID before Kitsune runs.
func keyFileID(t *testing.T, path string) peer.ID {
	t.Helper()
	priv, _, err := proxy.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// startKitsune runs Kitsune in-process in front of nodes, listening on
// loopback only, and waits until every node has joined.
func startKitsune(t *testing.T, nodes []*kubotest.Node, opts ...func(*runCmd)) *kitsune {
	t.Helper()
	var down []string
	for _, n := range nodes {
		down = append(down, n.APIAddr.String())
	}
	c := defaultRunCmd(t)
	c.Downstream = down
	c.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	c.WS = []string{"/ip4/127.0.0.1/tcp/0"}
	c.Key = filepath.Join(t.TempDir(), "kitsune.key")
	c.Admin = "127.0.0.1:0" // never the default port: tests run side by side
	for _, o := range opts {
		o(c)
	}
	cfg, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	k, err := start(context.Background(), cfg, &out, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		k.stop()
		select {
		case <-k.done:
		case <-time.After(10 * time.Second):
			t.Error("kitsune did not stop within 10s")
		}
	})
	eventually(t, 30*time.Second, "every downstream node joined", func() bool {
		return k.pool.ConnectedCount() == len(nodes)
	})
	if !strings.Contains(out.String(), "/p2p/"+k.front.ID().String()) {
		t.Fatalf("startup output lacks dialable addresses:\n%s", out.String())
	}
	return k
}

// addr returns Kitsune's front address for one transport ("tcp", "ws",
// "quic-v1") with /p2p/ appended.
func (k *kitsune) addr(t *testing.T, transport string) ma.Multiaddr {
	t.Helper()
	for _, a := range k.front.Addrs() {
		protos := a.Protocols()
		last := protos[len(protos)-1].Name
		if last == transport {
			p2p, _ := ma.NewComponent("p2p", k.front.ID().String())
			return a.AppendComponent(p2p)
		}
	}
	t.Fatalf("kitsune has no %s address among %v", transport, k.front.Addrs())
	return nil
}

func (k *kitsune) info(t *testing.T, transport string) peer.AddrInfo {
	ai, err := peer.AddrInfoFromP2pAddr(k.addr(t, transport))
	if err != nil {
		t.Fatal(err)
	}
	return *ai
}

// defaultRunCmd parses an empty command line, so tests start from the same
// defaults as the binary.
func defaultRunCmd(t *testing.T) *runCmd {
	t.Helper()
	var c cli
	parser, err := kong.New(&c, kong.Exit(func(int) { t.Fatal("kong tried to exit") }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parser.Parse([]string{"run", "-d", "http://127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	return &c.Run
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	// Conditions here often ask a Kubo node over RPC: look every 50 ms.
	testkit.EventuallyEvery(t, within, 50*time.Millisecond, testkit.Say(what), cond)
}

// waitRelayEmpty waits until no want is left in Kitsune's table.
func waitRelayEmpty(t *testing.T, k *kitsune) {
	t.Helper()
	eventually(t, 10*time.Second, "an empty want table", func() bool {
		s := k.relay.Stats()
		return s.Wants == 0 && s.Queued == 0
	})
	for id, n := range k.relay.Stats().Outstanding {
		if n != 0 {
			t.Fatalf("node %s still has %d wants outstanding", id, n)
		}
	}
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func smallFiles(t *testing.T, n int) map[string][]byte {
	files := make(map[string][]byte, n)
	for i := range n {
		files[fmt.Sprintf("d%02d/file-%03d.txt", i%10, i)] = randomBytes(t, 100+i*7)
	}
	return files
}
