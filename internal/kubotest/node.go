package kubotest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/kubo/client/rpc"
	"github.com/ipfs/kubo/config"
	"github.com/ipfs/kubo/repo/common"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const (
	// readyTimeout is generous because a cold daemon on a loaded 2-core CI
	// box can take several seconds; a healthy one is ready in well under one.
	readyTimeout = 60 * time.Second
	// stopTimeout bounds Kubo's graceful shutdown before we stop asking.
	stopTimeout = 15 * time.Second
	initTimeout = 60 * time.Second
	// probeTimeout keeps one readiness probe from eating the whole budget
	// when the API accepts connections but does not answer yet.
	probeTimeout  = 5 * time.Second
	probeInterval = 50 * time.Millisecond
	pauseTimeout  = 5 * time.Second

	stdoutName = "daemon.stdout"
	stderrName = "daemon.stderr"
	// readyLine is printed after the API, gateway and MFS pinner are up;
	// the API alone answers a little earlier.
	readyLine = "Daemon is ready"
	tailBytes = 8 << 10
	tailLines = 40
)

// Options adjusts a node before its first start.
type Options struct {
	// WebSocket adds a /ip4/127.0.0.1/tcp/0/ws listener, for peers (Helia,
	// browsers) that can only dial WebSocket.
	WebSocket bool
	// Config maps dotted keys to values, applied like
	// `ipfs config --json key value` after this package's own settings, so
	// it can override them. Values are anything encoding/json can marshal.
	Config map[string]any
	// Env holds extra KEY=VALUE entries for init and the daemon, e.g.
	// GOLOG_LOG_LEVEL=bitswap=debug.
	Env []string
	// Binary runs this Kubo instead of Binary(t), e.g. CompatBinary(t).
	Binary string
	// In runs the daemon somewhere other than the test's own network, such
	// as a namespace of internal/netns. The daemon then listens for swarm
	// connections on every address of that place (0.0.0.0), and the API
	// client dials in through In.
	In Place
}

// Place is another network the daemon runs in (netns.NS is one).
type Place interface {
	// Wrap rewrites a command, not yet started, to run inside.
	Wrap(cmd *exec.Cmd)
	// DialContext dials from inside.
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Node is one Kubo daemon with its own repository.
//
// Restart replaces APIAddr, APIURL, SwarmAddrs and API; do not read them
// concurrently with Restart.
type Node struct {
	Dir          string              // IPFS_PATH
	APIAddr      multiaddr.Multiaddr // /ip4/127.0.0.1/tcp/<port>
	APIURL       string              // http://127.0.0.1:<port>
	ID           peer.ID
	SwarmAddrs   []multiaddr.Multiaddr // loopback listen addrs, incl. /ws when enabled
	API          *rpc.HttpApi
	AgentVersion string // as reported by `ipfs id`, e.g. kubo/0.41.0/

	bin       string
	env       []string
	in        Place
	transport *http.Transport

	mu     sync.Mutex
	proc   *daemon // nil while the daemon is not running
	starts int
}

// daemon is one run of `ipfs daemon`.
type daemon struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, valid once done is closed
}

// signal targets the process group, so anything the daemon spawned goes with
// it. Once the daemon is reaped its pid may be reused, hence the done check.
func (d *daemon) signal(sig syscall.Signal) {
	select {
	case <-d.done:
	default:
		_ = syscall.Kill(-d.cmd.Process.Pid, sig)
	}
}

// Start initialises a fresh repository in t.TempDir(), starts a daemon on it
// and waits until it is ready. The daemon is stopped by t.Cleanup.
func Start(t testing.TB, opts Options) *Node {
	t.Helper()
	n := &Node{Dir: t.TempDir(), bin: opts.Binary, in: opts.In}
	if n.bin == "" {
		n.bin = Binary(t)
	}
	// Telemetry would try to reach the internet; opts.Env comes last so a
	// test can still turn it back on.
	n.env = append(os.Environ(), "IPFS_PATH="+n.Dir, "IPFS_TELEMETRY=off")
	n.env = append(n.env, opts.Env...)
	if err := n.init(opts); err != nil {
		t.Fatalf("kubotest: %v", err)
	}
	t.Cleanup(func() {
		// A daemon that died without being told to (a panic, a fatal log)
		// is a finding even if every assertion held: Kitsune's peers must
		// not be able to crash a Kubo node.
		if d := n.current(); d != nil {
			select {
			case <-d.done:
				t.Errorf("kubotest: node %s exited on its own during the test: %v", n.ID, d.err)
			default:
			}
		}
		// The repository, logs included, goes away with the temp dir, so
		// this is the last chance to show why a test failed.
		if t.Failed() {
			if tail := n.stderrTail(); tail != "" {
				t.Logf("kubotest: stderr tail of node %s (%s):\n%s", n.ID, n.Dir, tail)
			}
		}
		n.Stop()
	})
	if err := n.launch(); err != nil {
		t.Fatalf("kubotest: %v", err)
	}
	// Which Kubo a test ran matters when reading its results: the tests
	// run the newest release and a compatibility subset an older one.
	t.Logf("kubotest: node %s runs %s (%s)", n.ID, n.AgentVersion, n.bin)
	return n
}

func (n *Node) init(opts Options) error {
	ctx, cancel := context.WithTimeout(context.Background(), initTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, "init", "--profile=test", "--empty-repo")
	cmd.Env = n.env
	cmd.Dir = n.Dir
	cmd.SysProcAttr = daemonSysProcAttr()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ipfs init in %s: %w\n%s", n.Dir, err, out)
	}
	return n.configure(opts)
}

// configure edits the config file directly rather than running
// `ipfs config` once per key: same result (the same MapSetKV and the same
// decode check), without a process start per setting.
func (n *Node) configure(opts Options) error {
	file := filepath.Join(n.Dir, "config")
	raw, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("reading config: %w", err)
	}
	var cfg map[string]any
	if err := decodeJSON(raw, &cfg); err != nil {
		return fmt.Errorf("parsing %s: %w", file, err)
	}

	host := "127.0.0.1"
	if opts.In != nil {
		host = "0.0.0.0"
	}
	swarm := []string{"/ip4/" + host + "/tcp/0", "/ip4/" + host + "/udp/0/quic-v1"}
	if opts.WebSocket {
		swarm = append(swarm, "/ip4/"+host+"/tcp/0/ws")
	}
	// The test profile already sets loopback API and swarm addresses, no
	// bootstrap peers and no mDNS; these close the remaining ways a node
	// could find or be found by anything but the test.
	isolation := []struct {
		key   string
		value any
	}{
		{"Addresses.API", "/ip4/127.0.0.1/tcp/0"},
		{"Addresses.Swarm", swarm},
		{"Addresses.Gateway", []string{}},
		{"Bootstrap", []string{}},
		{"Discovery.MDNS.Enabled", false},
		{"Routing.Type", "none"},
		{"Swarm.DisableNatPortMap", true},
		{"Swarm.RelayClient.Enabled", false},
		{"Swarm.RelayService.Enabled", false},
		{"AutoNAT.ServiceMode", "disabled"},
	}
	for _, s := range isolation {
		if err := setKey(cfg, s.key, s.value); err != nil {
			return err
		}
	}
	// Sorted so that a parent key is set before its children and a run is
	// reproducible.
	for _, key := range slices.Sorted(maps.Keys(opts.Config)) {
		if err := setKey(cfg, key, opts.Config[key]); err != nil {
			return err
		}
	}

	parsed, err := config.FromMap(cfg)
	if err != nil {
		return fmt.Errorf("config after applying options: %w", err)
	}
	if n.ID, err = peer.Decode(parsed.Identity.PeerID); err != nil {
		return fmt.Errorf("peer ID in %s: %w", file, err)
	}
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding config: %w", err)
	}
	if err := os.WriteFile(file, out, 0o600); err != nil {
		return fmt.Errorf("writing config: %w", err)
	}
	return nil
}

// setKey round-trips value through JSON first so that a later dotted key can
// descend into it (MapSetKV only walks map[string]any), exactly as if it had
// been given to `ipfs config --json`.
func setKey(cfg map[string]any, key string, value any) error {
	raw, err := json.Marshal(value)
	if err != nil {
		return fmt.Errorf("config %s: %w", key, err)
	}
	var v any
	if err := decodeJSON(raw, &v); err != nil {
		return fmt.Errorf("config %s: %w", key, err)
	}
	if err := common.MapSetKV(cfg, key, v); err != nil {
		return fmt.Errorf("config %s: %w", key, err)
	}
	return nil
}

// decodeJSON keeps numbers as json.Number so large integers in the config
// (byte sizes, durations in ns) survive the round trip unrounded.
func decodeJSON(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}

// launch starts the daemon on the existing repository and waits for it.
func (n *Node) launch() error {
	// A killed daemon leaves its api file behind; reading it would point the
	// readiness probe at a dead port.
	if err := os.Remove(filepath.Join(n.Dir, "api")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale api file: %w", err)
	}
	n.starts++
	mark := fmt.Sprintf("--- kubotest: daemon start %d at %s ---\n", n.starts, time.Now().Format(time.RFC3339Nano))
	stdout, err := openLog(filepath.Join(n.Dir, stdoutName), mark)
	if err != nil {
		return err
	}
	defer stdout.Close()
	stderr, err := openLog(filepath.Join(n.Dir, stderrName), mark)
	if err != nil {
		return err
	}
	defer stderr.Close()
	// Readiness is judged on this run's output only, not an earlier one's.
	offset, err := stdout.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("seeking %s: %w", stdoutName, err)
	}

	cmd := exec.Command(n.bin, "daemon")
	cmd.Env = n.env
	cmd.Dir = n.Dir
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	cmd.SysProcAttr = daemonSysProcAttr()
	if n.in != nil {
		n.in.Wrap(cmd)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting ipfs daemon: %w", err)
	}
	d := &daemon{cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	n.mu.Lock()
	n.proc = d
	n.mu.Unlock()

	if err := n.waitReady(d, offset); err != nil {
		n.halt(false)
		return fmt.Errorf("%w\n--- %s (tail) ---\n%s", err, filepath.Join(n.Dir, stderrName), n.stderrTail())
	}
	return nil
}

func openLog(name, mark string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening daemon log: %w", err)
	}
	if _, err := io.WriteString(f, mark); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing daemon log: %w", err)
	}
	return f, nil
}

func (n *Node) waitReady(d *daemon, stdoutOffset int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	tick := time.NewTicker(probeInterval)
	defer tick.Stop()
	for {
		err := n.probe(ctx, stdoutOffset)
		if err == nil {
			return nil
		}
		select {
		case <-d.done:
			// Kubo rejects bad config with log.Fatal: fail now, not in 60 s.
			if d.err == nil {
				return errors.New("ipfs daemon exited with status 0 before it was ready")
			}
			return fmt.Errorf("ipfs daemon exited before it was ready: %w", d.err)
		case <-ctx.Done():
			return fmt.Errorf("ipfs daemon not ready after %v: %w", readyTimeout, err)
		case <-tick.C:
		}
	}
}

// probe succeeds once the daemon has said it is ready and its API answers;
// only then does it publish the new addresses and client on n.
func (n *Node) probe(ctx context.Context, stdoutOffset int64) error {
	out, err := readFrom(filepath.Join(n.Dir, stdoutName), stdoutOffset)
	if err != nil {
		return err
	}
	if !bytes.Contains(out, []byte(readyLine)) {
		return fmt.Errorf("no %q on stdout yet", readyLine)
	}
	apiAddr, err := rpc.ApiAddr(n.Dir)
	if err != nil {
		return fmt.Errorf("reading api file: %w", err)
	}
	_, hostport, err := manet.DialArgs(apiAddr)
	if err != nil {
		return fmt.Errorf("api address %s: %w", apiAddr, err)
	}
	// Keep-alives on: the rpc package's default client turns them off, which
	// costs a TCP handshake per call and fills the port range with
	// TIME_WAIT sockets in tests that poll. No Proxy: an HTTP_PROXY from the
	// environment has no business seeing a loopback API.
	transport := &http.Transport{MaxIdleConnsPerHost: 16}
	if n.in != nil {
		transport.DialContext = n.in.DialContext
	}
	api, err := rpc.NewApiWithClient(apiAddr, &http.Client{Transport: transport})
	if err != nil {
		return fmt.Errorf("rpc client for %s: %w", apiAddr, err)
	}

	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var id struct {
		ID           string
		AgentVersion string
	}
	if err := api.Request("id").Exec(ctx, &id); err != nil {
		transport.CloseIdleConnections()
		return fmt.Errorf("ipfs id: %w", err)
	}
	if id.ID != n.ID.String() {
		transport.CloseIdleConnections()
		return fmt.Errorf("daemon reports peer ID %s, config says %s", id.ID, n.ID)
	}
	listen, err := api.Swarm().ListenAddrs(ctx)
	if err != nil {
		transport.CloseIdleConnections()
		return fmt.Errorf("swarm addrs listen: %w", err)
	}

	if n.transport != nil {
		n.transport.CloseIdleConnections()
	}
	n.transport = transport
	n.API = api
	n.APIAddr = apiAddr
	n.APIURL = "http://" + hostport
	n.AgentVersion = id.AgentVersion
	n.SwarmAddrs = dialable(listen)
	return nil
}

// dialable keeps the IP listen addresses: Kubo also lists a bare
// /p2p-circuit for its relay transport, which names no place to dial and
// would send a Connect through relay discovery.
func dialable(addrs []multiaddr.Multiaddr) []multiaddr.Multiaddr {
	var out []multiaddr.Multiaddr
	for _, a := range addrs {
		if manet.IsThinWaist(a) {
			out = append(out, a)
		}
	}
	return out
}

func readFrom(name string, offset int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("opening daemon log: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, fmt.Errorf("seeking daemon log: %w", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading daemon log: %w", err)
	}
	return b, nil
}

// stderrTail returns the last lines of the daemon's stderr, across restarts.
func (n *Node) stderrTail() string {
	f, err := os.Open(filepath.Join(n.Dir, stderrName))
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	start := max(fi.Size()-tailBytes, 0)
	b, err := readFrom(f.Name(), start)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if start > 0 && len(lines) > 1 {
		lines = lines[1:] // most likely cut mid-line
	}
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	return strings.Join(lines, "\n")
}

func (n *Node) current() *daemon {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// halt ends the current run, gracefully or not, and waits until the process
// is gone so that a following start finds the repository unlocked.
func (n *Node) halt(graceful bool) {
	n.mu.Lock()
	d := n.proc
	n.proc = nil
	n.mu.Unlock()
	if d == nil {
		return
	}
	if graceful {
		d.signal(syscall.SIGTERM)
		// A paused daemon would sit on the SIGTERM until resumed.
		d.signal(syscall.SIGCONT)
		timer := time.NewTimer(stopTimeout)
		select {
		case <-d.done:
		case <-timer.C:
		}
		timer.Stop()
	}
	d.signal(syscall.SIGKILL)
	<-d.done
	if n.transport != nil {
		n.transport.CloseIdleConnections()
	}
}

// Stop shuts the daemon down with SIGTERM, escalating to SIGKILL after 15 s,
// and returns once it has exited. Stopping a stopped node does nothing.
func (n *Node) Stop() { n.halt(true) }

// Kill ends the daemon with SIGKILL, as a crash or OOM kill would: no
// goodbye to peers, connections die with the process.
func (n *Node) Kill() { n.halt(false) }

// Pause freezes the daemon with SIGSTOP: its sockets stay open but nothing
// answers, which is how a hung node looks to its peers. It returns once the
// daemon is actually frozen. No-op if stopped.
func (n *Node) Pause() {
	if d := n.current(); d != nil {
		d.signal(syscall.SIGSTOP)
		waitStopped(d.cmd.Process.Pid, pauseTimeout)
	}
}

// Resume undoes Pause with SIGCONT. No-op if stopped.
func (n *Node) Resume() {
	if d := n.current(); d != nil {
		d.signal(syscall.SIGCONT)
	}
}

// Restart stops the daemon if it runs and starts it again on the same
// repository: same peer ID and blocks, new ports, new API client.
func (n *Node) Restart(t testing.TB) {
	t.Helper()
	n.Stop()
	if err := n.launch(); err != nil {
		t.Fatalf("kubotest: restarting node %s: %v", n.ID, err)
	}
}
