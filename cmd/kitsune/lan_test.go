package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// This file is a minimal, private network-namespace harness for the LAN
// tests of this package: for mDNS and GeoIP a bridge in a hub namespace
// joins member namespaces that get addresses from the documentation range
// 198.51.100.0/24; the private DHT tests use one loopback-only namespace
// instead (newLoopbackNS). It is meant to be swapped for the shared
// harness under internal/ once that exists.

// lanPrefix starts every namespace name this harness makes; the creating
// process's PID follows, so a sweep can tell which ones a killed test run
// left behind without touching those of a run still going.
const lanPrefix = "kseeds-"

var lanSeq atomic.Int64

type lan struct {
	t       *testing.T
	hub     string
	members []string
	addrs   []string // each member's address, without the prefix length
}

// newLAN makes one namespace per address (CIDR, e.g. 198.51.100.1/24) on
// one Ethernet segment: the address on eth0, multicast on, and a loopback
// of its own. Root is needed; without it the test fails, never skips.
func newLAN(t *testing.T, cidrs ...string) *lan {
	t.Helper()
	needNetns(t)
	base := fmt.Sprintf("%s%d-%d-", lanPrefix, os.Getpid(), lanSeq.Add(1))
	l := &lan{t: t, hub: base + "hub"}
	t.Cleanup(l.remove)
	l.ip("netns", "add", l.hub)
	l.ip("-n", l.hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	l.ip("-n", l.hub, "link", "set", "br0", "up")
	for i, cidr := range cidrs {
		ns := base + strconv.Itoa(i)
		l.members = append(l.members, ns)
		addr, _, _ := strings.Cut(cidr, "/")
		l.addrs = append(l.addrs, addr)
		port := "p" + strconv.Itoa(i)
		l.ip("netns", "add", ns)
		l.ip("-n", l.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("-n", l.hub, "link", "set", port, "master", "br0", "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
		l.ip("-n", ns, "addr", "add", cidr, "dev", "eth0")
		l.ip("-n", ns, "link", "set", "eth0", "multicast", "on", "up")
	}
	return l
}

// newLoopbackNS makes one namespace holding nothing but its own loopback
// interface and returns its name: several daemons can run in it on
// distinct 127.0.0.x addresses (all on lo), reaching nothing outside it
// and colliding with no port of the root namespace.
func newLoopbackNS(t *testing.T) string {
	t.Helper()
	needNetns(t)
	l := &lan{t: t, hub: fmt.Sprintf("%s%d-%d-lo", lanPrefix, os.Getpid(), lanSeq.Add(1))}
	t.Cleanup(l.remove)
	l.ip("netns", "add", l.hub)
	l.ip("-n", l.hub, "link", "set", "lo", "up")
	return l.hub
}

// needNetns fails the test unless it can make namespaces (root and the ip
// command), then sweeps those a killed run left behind.
func needNetns(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("LAN tests make network namespaces and need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("LAN tests need the ip command (iproute2): ", err)
	}
	sweepStaleNamespaces(t)
}

// joinRoot links the root namespace, where the test process (and an
// in-process Kitsune) runs, to the segment: each of local is added to the
// root side as a /32, with a /32 route to each member, so nothing but
// this test's own addresses changes in the root namespace. The link goes
// away with the hub namespace.
func (l *lan) joinRoot(local ...string) {
	l.t.Helper()
	dev := fmt.Sprintf("ks%x", rand.Uint32())
	l.ip("link", "add", dev, "type", "veth", "peer", "name", "root", "netns", l.hub)
	l.ip("-n", l.hub, "link", "set", "root", "master", "br0", "up")
	l.ip("link", "set", dev, "up")
	for _, a := range local {
		l.ip("addr", "add", a+"/32", "dev", dev)
	}
	for _, m := range l.addrs {
		l.ip("route", "add", m+"/32", "dev", dev)
	}
}

func (l *lan) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (l *lan) remove() {
	for _, ns := range append(l.members, l.hub) {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			l.t.Logf("removing namespace %s: %v %s", ns, err, out)
		}
	}
}

// sweepStaleNamespaces removes namespaces of this harness whose creating
// process is gone (a test binary killed before its cleanups ran).
func sweepStaleNamespaces(t *testing.T) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, lanPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidStr); err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", pidStr)); err == nil {
			continue // still running: another test binary's
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Logf("sweeping stale namespace %s: %v %s", name, err, out)
		}
	}
}

// nsProc is a process running inside a namespace, in its own process
// group, killed with the test binary if that dies first.
type nsProc struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	stdout *lineWatcher
	stderr bytes.Buffer
}

func nsCommand(ns string, env []string, name string, args ...string) *exec.Cmd {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// startNS starts name in ns and stops it (SIGTERM, then SIGKILL after 15 s)
// when the test ends.
func startNS(t *testing.T, ns string, env []string, name string, args ...string) *nsProc {
	t.Helper()
	p := &nsProc{cmd: nsCommand(ns, env, name, args...), done: make(chan struct{}), stdout: newLineWatcher()}
	p.cmd.Stdout = p.stdout
	p.cmd.Stderr = &lockedWriter{w: &p.stderr}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s in %s: %v", name, ns, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s in %s, stdout:\n%s\nstderr (tail):\n%s", name, ns, p.stdout.text(), tail(p.stderr.String(), 4000))
		}
	})
	return p
}

func (p *nsProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// lineWatcher keeps a process's output and lets a test wait for a line.
type lineWatcher struct {
	buf     lockedWriter
	changed chan struct{}
}

func newLineWatcher() *lineWatcher {
	return &lineWatcher{buf: lockedWriter{w: &bytes.Buffer{}}, changed: make(chan struct{}, 1)}
}

func (w *lineWatcher) Write(b []byte) (int, error) {
	n, err := w.buf.Write(b)
	select {
	case w.changed <- struct{}{}:
	default:
	}
	return n, err
}

func (w *lineWatcher) text() string {
	w.buf.mu.Lock()
	defer w.buf.mu.Unlock()
	return w.buf.w.(*bytes.Buffer).String()
}

// waitLine returns the first output line containing sub.
func (p *nsProc) waitLine(t *testing.T, sub string, within time.Duration) string {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		sc := bufio.NewScanner(strings.NewReader(p.stdout.text()))
		for sc.Scan() {
			if strings.Contains(sc.Text(), sub) {
				return sc.Text()
			}
		}
		select {
		case <-p.stdout.changed:
		case <-p.done:
			t.Fatalf("process exited (%v) before printing %q; stderr:\n%s", p.err, sub, tail(p.stderr.String(), 4000))
		case <-deadline.C:
			t.Fatalf("no line with %q within %v", sub, within)
		}
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.w)
}

// nsKubo is a Kubo daemon inside a namespace. Its repository starts from
// Kubo's default configuration (plus cfg): these tests are about what a
// node configured as users leave it does on a LAN.
type nsKubo struct {
	ns, dir string
	bin     string
	env     []string
	ID      string
	proc    *nsProc
}

func startNSKubo(t *testing.T, ns string, initArgs []string, cfg map[string]any) *nsKubo {
	t.Helper()
	return startNSKuboKey(t, ns, nil, initArgs, cfg)
}

// startNSKuboKey is startNSKubo with a swarm.key (a private network) when
// swarmKey is not nil.
func startNSKuboKey(t *testing.T, ns string, swarmKey []byte, initArgs []string, cfg map[string]any) *nsKubo {
	t.Helper()
	k := &nsKubo{ns: ns, dir: t.TempDir()}
	k.env = []string{"IPFS_PATH=" + k.dir, "IPFS_TELEMETRY=off"}
	bin := kubotest.Binary(t)
	k.bin = bin
	init := nsCommand(ns, k.env, bin, append([]string{"init"}, initArgs...)...)
	if out, err := init.CombinedOutput(); err != nil {
		t.Fatalf("ipfs init in %s: %v\n%s", ns, err, out)
	}
	file := filepath.Join(k.dir, "config")
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := json.Unmarshal(raw, &conf); err != nil {
		t.Fatal(err)
	}
	for key, v := range cfg {
		m := conf
		parts := strings.Split(key, ".")
		for _, p := range parts[:len(parts)-1] {
			next, ok := m[p].(map[string]any)
			if !ok {
				next = map[string]any{}
				m[p] = next
			}
			m = next
		}
		m[parts[len(parts)-1]] = v
	}
	k.ID = conf["Identity"].(map[string]any)["PeerID"].(string)
	if raw, err = json.MarshalIndent(conf, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if swarmKey != nil {
		if err := os.WriteFile(filepath.Join(k.dir, "swarm.key"), swarmKey, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	k.proc = startNS(t, ns, k.env, bin, "daemon")
	k.proc.waitLine(t, "Daemon is ready", 90*time.Second)
	return k
}

// ipfs runs an ipfs command against the daemon, inside its namespace.
func (k *nsKubo) ipfs(ctx context.Context, args ...string) ([]byte, error) {
	cmd := nsCommand(k.ns, k.env, k.bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			if cmd.Process != nil {
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
		case <-done:
		}
	}()
	out, err := cmd.Output()
	close(done)
	if err != nil {
		return out, fmt.Errorf("ipfs %s: %w: %s", strings.Join(args, " "), errors.Join(err, ctx.Err()), stderr.String())
	}
	return out, nil
}

func (k *nsKubo) mustIPFS(t *testing.T, args ...string) string {
	t.Helper()
	out, err := k.ipfs(testCtx(t, 60*time.Second), args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// connectedTo reports whether the daemon has a connection to id.
func (k *nsKubo) connectedTo(t *testing.T, id string) bool {
	t.Helper()
	for _, line := range strings.Split(k.mustIPFS(t, "swarm", "peers"), "\n") {
		if strings.HasSuffix(line, "/p2p/"+id) {
			return true
		}
	}
	return false
}

// A namespace left by a test binary that was killed (its PID is gone) is
// removed by the next run's sweep; one of a running process is kept.
func TestSweepStaleNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root to make network namespaces")
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("%s%d-0-hub", lanPrefix, dead.Process.Pid)
	live := fmt.Sprintf("%s%d-0-hub", lanPrefix, os.Getppid()) // go test itself: running
	for _, ns := range []string{stale, live} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v %s", ns, err, out)
		}
	}
	t.Cleanup(func() {
		for _, ns := range []string{stale, live} {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	sweepStaleNamespaces(t)
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), stale) {
		t.Errorf("the stale namespace %s survived the sweep", stale)
	}
	if !strings.Contains(string(out), live) {
		t.Errorf("the sweep removed %s, whose process is running", live)
	}
}
