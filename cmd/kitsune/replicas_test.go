package main

import (
	"context"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// Replicas sharing a key file announce identical addresses, certificate
// hashes included: go-libp2p derives the WebRTC-direct certificate from
// the host key, and the WebTransport certificates from the key and the
// time (in buckets of about two weeks), so replicas with the same key and
// clock agree without sharing any other state. Clients keep the newest
// signed peer record of the peer ID, so replicas that disagreed would
// overwrite each other's addresses. A replica with another key announces
// other hashes (the check would see a difference).
func TestReplicasAnnounceIdenticalAddresses(t *testing.T) {
	node := kubotest.Start(t, kubotest.Options{})
	key := filepath.Join(t.TempDir(), "kitsune.key")
	announce := []string{
		"/ip4/198.51.100.1/tcp/4001",
		"/ip4/198.51.100.1/tcp/4002/ws",
		"/ip4/198.51.100.1/udp/4001/quic-v1",
		"/ip4/198.51.100.1/udp/4001/quic-v1/webtransport",
		"/ip4/198.51.100.1/udp/4003/webrtc-direct",
	}
	replica := func(key string) []string {
		k := startKitsune(t, []*kubotest.Node{node}, func(c *runCmd) {
			if key != "" {
				c.Key = key
			}
			c.WebTransport = []string{"/ip4/127.0.0.1/udp/0"}
			c.WebRTCDirect = []string{"/ip4/127.0.0.1/udp/0"}
			c.Announce = announce
		})
		var out []string
		for _, a := range k.front.Addrs() {
			out = append(out, a.String())
		}
		slices.Sort(out)
		return out
	}
	one, two := replica(key), replica(key)
	if !slices.Equal(one, two) {
		t.Fatalf("replicas with one key announce different addresses:\n%s\nand\n%s", strings.Join(one, "\n"), strings.Join(two, "\n"))
	}
	hashes := 0
	for _, s := range one {
		if _, err := ma.StringCast(s).ValueForProtocol(ma.P_CERTHASH); err == nil {
			hashes++
		}
	}
	if hashes != 2 {
		t.Fatalf("want the WebTransport and WebRTC-direct addresses with /certhash among:\n%s", strings.Join(one, "\n"))
	}
	other := replica("")
	if slices.Equal(one, other) {
		t.Fatal("a replica with another key announces the same certificate hashes: the comparison proves nothing")
	}
	t.Logf("two replicas with one key announce the same %d addresses:\n%s", len(one), strings.Join(one, "\n"))
}

// Replicas that share the back key (the default .back file beside a shared
// key file) confuse the fleet, which sends its replies over either
// connection: the second one to join a node says so.
func TestSharedBackKeyWarned(t *testing.T) {
	node := kubotest.Start(t, kubotest.Options{})
	key := filepath.Join(t.TempDir(), "kitsune.key")
	startKitsune(t, []*kubotest.Node{node}, func(c *runCmd) { c.Key = key })

	second := func(backKey string) *observer.ObservedLogs {
		core, logs := observer.New(zap.WarnLevel)
		c := defaultRunCmd(t)
		c.Downstream = []string{node.APIAddr.String()}
		c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		c.WS = nil
		c.Key = key
		c.BackKey = backKey
		c.Admin = "127.0.0.1:0"
		cfg, err := c.config()
		if err != nil {
			t.Fatal(err)
		}
		k, err := start(context.Background(), cfg, io.Discard, zap.New(core))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			k.stop()
			<-k.done
		})
		eventually(t, 30*time.Second, "the node joined", func() bool { return k.pool.ConnectedCount() == 1 })
		return logs
	}
	const warning = "another process is connected to this node under the back host's peer ID"
	if logs := second(""); logs.FilterMessageSnippet(warning).Len() == 0 {
		t.Fatalf("no warning from a replica sharing the back key; warnings: %v", logs.All())
	}
	if logs := second(filepath.Join(t.TempDir(), "own.back")); logs.FilterMessageSnippet(warning).Len() != 0 {
		t.Fatalf("a replica with its own back key was warned: %v", logs.All())
	}
}
