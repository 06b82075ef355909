package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/websocket"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// vmRSS reads a process's resident set size in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil || len(f) != 2 || f[1] != "kB" {
				t.Fatalf("VmRSS line %q", line)
			}
			return n << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// steadyRSS waits until a process's RSS stops moving (three readings in a
// row within 256 KiB of each other, the GC and the connection handshakes
// done) and returns it; bounded by 30 s.
func steadyRSS(t *testing.T, pid int) int64 {
	t.Helper()
	var last []int64
	testkit.EventuallyEvery(t, 30*time.Second, 200*time.Millisecond, testkit.Say("a steady RSS"), func() bool {
		last = append(last, vmRSS(t, pid))
		if len(last) > 3 {
			last = last[1:]
		}
		return len(last) == 3 && slices.Max(last)-slices.Min(last) < 256<<10
	})
	return last[2]
}

// What an idle browser-style connection costs a replica, for the capacity
// note in docs/deploy.md: the Kitsune binary holds idleWS WebSocket
// connections (Noise, yamux), each from its own peer, and its RSS is read
// before and after, each once it has stopped moving. bench/ measures the same for
// TCP (scenario 4). The bound is the benchmark's target for TCP with
// room for the WebSocket framing.
func TestIdleWebSocketRSS(t *testing.T) {
	const idleWS = 1000
	bin := buildBinary(t)
	node := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 4*time.Minute)
	cmd := exec.CommandContext(ctx, bin, "-d", node.APIURL, "-k", filepath.Join(t.TempDir(), "kitsune.key"),
		"-l", "/ip4/127.0.0.1/tcp/0", "-w", "/ip4/127.0.0.1/tcp/0", "--admin", "127.0.0.1:0", "--no-greet")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	var wsAddr string
	sc := bufio.NewScanner(stdout)
	for wsAddr == "" && sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); strings.Contains(line, "/ws/p2p/") {
			wsAddr = line
		}
	}
	go func() { _, _ = bufio.NewReader(stdout).WriteTo(new(bytes.Buffer)); _ = cmd.Wait(); close(exited) }()
	if wsAddr == "" {
		t.Fatalf("no WebSocket address printed; stderr:\n%s", stderr.String())
	}
	ai, err := peer.AddrInfoFromString(wsAddr)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "downstream joined", func() bool { return strings.Contains(stderr.String(), "downstream joined") })
	pid := cmd.Process.Pid
	before := steadyRSS(t, pid)

	hosts := make([]host.Host, 0, idleWS)
	t.Cleanup(func() {
		for _, h := range hosts {
			_ = h.Close()
		}
	})
	for i := range idleWS {
		h, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(websocket.New),
			libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay(), libp2p.DisableMetrics())
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		err = h.Connect(cctx, *ai)
		cancel()
		if err != nil {
			t.Fatalf("connection %d: %v", i+1, err)
		}
	}
	after := steadyRSS(t, pid)
	held := 0
	for _, h := range hosts {
		if len(h.Network().ConnsToPeer(ai.ID)) > 0 {
			held++
		}
	}
	if held < idleWS {
		t.Fatalf("only %d of %d idle WebSocket connections still open", held, idleWS)
	}
	per := float64(after-before) / float64(held)
	t.Logf("Kitsune RSS %.1f MiB before, %.1f MiB with %d idle WebSocket connections: %.1f KiB per connection",
		float64(before)/(1<<20), float64(after)/(1<<20), held, per/1024)
	if per > 96<<10 {
		t.Fatalf("%.1f KiB per idle WebSocket connection, above the 96 KiB budget", per/1024)
	}
}
