package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// server is a proxy under test run as a process of its own (Kitsune, or
// the floor forwarder), so its CPU time and peak RSS are its alone.
type server struct {
	name   string
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	stdout *lockedBuffer
	errLog string // file holding stderr

	info  peer.AddrInfo // its TCP address, what clients dial
	admin string        // Kitsune's admin base URL, "" when it has none
	// hc reaches admin (Kitsune in a namespace listens on that
	// namespace's loopback); nil is http.DefaultClient.
	hc   *http.Client
	back peer.ID // Kitsune's back host
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startServer(name, bin string, args, env []string, dir string) (*server, error) {
	return startServerIn(nil, name, bin, args, env, dir)
}

// startServerIn is startServer with the command rewritten by wrap before
// it starts (netns.NS.Wrap runs it inside a namespace); nil runs it here.
func startServerIn(wrap func(*exec.Cmd), name, bin string, args, env []string, dir string) (*server, error) {
	errLog := filepath.Join(dir, name+".stderr")
	ef, err := os.Create(errLog)
	if err != nil {
		return nil, err
	}
	defer ef.Close()
	s := &server{name: name, done: make(chan struct{}), stdout: &lockedBuffer{}, errLog: errLog}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Env = append(os.Environ(), env...)
	s.cmd.Dir = dir
	s.cmd.Stdout = s.stdout
	s.cmd.Stderr = ef
	// Its own process group, and killed with us if the benchmark dies.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if wrap != nil {
		wrap(s.cmd) // `ip netns exec` execs in place: the pid stays Kitsune's
	}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

func (s *server) httpClient() *http.Client {
	if s.hc != nil {
		return s.hc
	}
	return http.DefaultClient
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) usage() (procUsage, error) {
	select {
	case <-s.done:
		return procUsage{}, fmt.Errorf("%s exited: %v\n%s", s.name, s.err, s.stderrTail())
	default:
	}
	return readUsage(s.pid())
}

func (s *server) stderrTail() string {
	b, _ := os.ReadFile(s.errLog)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// waitFor polls until ready says so, the process exits, or timeout.
func (s *server) waitFor(timeout time.Duration, what string, ready func(stdout, stderr string) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		errText, _ := os.ReadFile(s.errLog)
		if ready(s.stdout.String(), string(errText)) {
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("%s exited before %s: %v\nstdout:\n%s\nstderr:\n%s", s.name, what, s.err, s.stdout, s.stderrTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %s after %v\nstdout:\n%s\nstderr:\n%s", s.name, what, timeout, s.stdout, s.stderrTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM, then SIGKILL after 10 s.
func (s *server) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = syscall.Kill(-s.pid(), syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-s.pid(), syscall.SIGKILL)
		<-s.done
	}
}

// tcpInfo finds the first /ip4/.../tcp/N/p2p/ID address (not WebSocket)
// among the lines of a start-up banner.
func tcpInfo(out string) (peer.AddrInfo, bool) {
	for line := range strings.SplitSeq(out, "\n") {
		for f := range strings.FieldsSeq(line) {
			if !strings.HasPrefix(f, "/ip4/") || !strings.Contains(f, "/tcp/") || !strings.Contains(f, "/p2p/") || strings.Contains(f, "/ws") {
				continue
			}
			a, err := ma.NewMultiaddr(f)
			if err != nil {
				continue
			}
			ai, err := peer.AddrInfoFromP2pAddr(a)
			if err != nil {
				continue
			}
			return *ai, true
		}
	}
	return peer.AddrInfo{}, false
}

// kitsuneFeatures is what the Kitsune binary's --help says it supports:
// the benchmark runs against whatever build it is given.
type kitsuneFeatures struct {
	admin  bool // --admin (metrics, /debug/pprof)
	recent bool // --recent-block-bytes
}

func probeKitsune(bin string) (kitsuneFeatures, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--help").CombinedOutput()
	if err != nil {
		return kitsuneFeatures{}, fmt.Errorf("%s --help: %w\n%s", bin, err, out)
	}
	return kitsuneFeatures{
		admin:  strings.Contains(string(out), "--admin"),
		recent: strings.Contains(string(out), "--recent-block-bytes"),
	}, nil
}

// startKitsune runs the Kitsune binary in front of the nodes' RPC APIs,
// listening on loopback TCP only, and waits until every node has joined.
func startKitsune(bin string, feat kitsuneFeatures, apis []string, dir string, extra []string) (*server, error) {
	return startKitsuneOn(nil, "/ip4/127.0.0.1/tcp/0", bin, feat, apis, dir, extra)
}

// startKitsuneOn is startKitsune listening on listen, with the command
// rewritten by wrap (see startServerIn).
func startKitsuneOn(wrap func(*exec.Cmd), listen, bin string, feat kitsuneFeatures, apis []string, dir string, extra []string) (*server, error) {
	args := []string{
		"-d", strings.Join(apis, ","),
		"-l", listen,
		"-w", "",
		"-k", filepath.Join(dir, "kitsune.key"),
		"--log-level", "info",
	}
	if feat.admin {
		args = append(args, "--admin", "127.0.0.1:0")
	}
	args = append(args, extra...)
	s, err := startServerIn(wrap, "kitsune", bin, args, nil, dir)
	if err != nil {
		return nil, err
	}
	err = s.waitFor(30*time.Second, fmt.Sprintf("%d downstream nodes joined", len(apis)), func(stdout, stderr string) bool {
		_, ok := tcpInfo(stdout)
		return ok && strings.Count(stderr, "downstream joined") >= len(apis) &&
			(!feat.admin || strings.Contains(stdout, "Admin "))
	})
	if err != nil {
		s.stop()
		return nil, err
	}
	s.info, _ = tcpInfo(s.stdout.String())
	for line := range strings.SplitSeq(s.stdout.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "Back host peer ID "); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				s.back, _ = peer.Decode(f[0])
			}
		}
	}
	if feat.admin {
		for line := range strings.SplitSeq(s.stdout.String(), "\n") {
			if strings.HasPrefix(line, "Admin ") {
				if i := strings.Index(line, "http://"); i >= 0 {
					s.admin = strings.TrimSpace(line[i:])
				}
			}
		}
	}
	// "joined" is logged just before the relay hears of the node.
	time.Sleep(100 * time.Millisecond)
	return s, nil
}

// startForwarder runs this very binary again as the floor forwarder.
func startForwarder(targets []peer.AddrInfo, dir string) (*server, error) {
	return startForwarderWith(forwarderConfig{Listen: "/ip4/127.0.0.1/tcp/0", Targets: targets}, dir)
}

// startForwarderWith is startForwarder with the whole configuration.
func startForwarderWith(cfg forwarderConfig, dir string) (*server, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	s, err := startServer("forwarder", self, nil, []string{forwarderEnv + "=" + string(raw)}, dir)
	if err != nil {
		return nil, err
	}
	if err := s.waitFor(30*time.Second, "ready line", func(stdout, _ string) bool {
		return strings.Contains(stdout, "forwarder ready")
	}); err != nil {
		s.stop()
		return nil, err
	}
	var ok bool
	if s.info, ok = tcpInfo(s.stdout.String()); !ok {
		s.stop()
		return nil, errors.New("forwarder printed no TCP address")
	}
	return s, nil
}

// lines reads a stream of lines, for Kubo RPC responses.
func lines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
