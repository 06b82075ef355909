package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every namespace this package makes; the sweep
// of stale namespaces only ever touches names with it.
const Prefix = "kitsune-test-"

// nsDir is where `ip netns` keeps its named namespaces.
const nsDir = "/var/run/netns"

// cmdTimeout bounds one `ip`/`tc` command.
const cmdTimeout = 30 * time.Second

// World is the set of namespaces and links of one test.
type World struct {
	t    testing.TB
	ip   string
	id   string // <pid>-<random>, unique per World
	mu   sync.Mutex
	seq  int
	nses []*NS
}

// NS is one network namespace of a World.
type NS struct {
	w     *World
	Name  string // full name, as `ip netns` knows it
	Label string // the label given to Namespace
}

// Link is a veth pair between two namespaces.
type Link struct {
	A, B End
}

// End is one side of a link.
type End struct {
	NS   *NS
	Dev  string       // interface name inside NS
	Addr netip.Prefix // address and subnet on Dev
}

// New makes an empty world for t and sweeps namespaces left behind by test
// processes that no longer exist. It fails the test, never skips it, if
// namespaces cannot be made here.
func New(t testing.TB) *World {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("netns: network namespaces need root (euid %d); the end-to-end tests run as root in CI", os.Geteuid())
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Fatalf("netns: the `ip` command (iproute2) is missing: %v; install iproute2", err)
	}
	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatalf("netns: %v", err)
	}
	w := &World{t: t, ip: ip, id: fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(rnd[:]))}
	if err := sweep(ip); err != nil {
		t.Logf("netns: sweeping stale namespaces: %v", err)
	}
	t.Cleanup(w.close)
	return w
}

// sweep deletes namespaces with Prefix whose creating process is gone: a
// test binary killed before its cleanups ran.
func sweep(ip string) error {
	entries, err := os.ReadDir(nsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), Prefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue
		}
		if _, err := os.Stat(filepath.Join("/proc", pidStr)); err == nil {
			continue // its test is still running
		}
		if err := remove(ip, e.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// remove kills whatever still runs in the namespace, then deletes it (which
// deletes its veth ends; their peers go with them).
func remove(ip, name string) error {
	if out, err := run(ip, "netns", "pids", name); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if out, err := run(ip, "netns", "del", name); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

func (w *World) close() {
	w.mu.Lock()
	nses := w.nses
	w.nses = nil
	w.mu.Unlock()
	// Processes first (each NS.Start registered its own cleanup, which ran
	// before this one), then whatever is left, e.g. wrapped commands.
	for i := len(nses) - 1; i >= 0; i-- {
		if err := remove(w.ip, nses[i].Name); err != nil {
			w.t.Errorf("netns: %v", err)
		}
	}
}

func run(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// ip runs an `ip` command and fails the test on error.
func (w *World) run(args ...string) {
	w.t.Helper()
	if out, err := run(w.ip, args...); err != nil {
		w.t.Fatalf("netns: ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// Namespace makes a new namespace with its loopback up.
func (w *World) Namespace(label string) *NS {
	w.t.Helper()
	w.mu.Lock()
	w.seq++
	name := fmt.Sprintf("%s%s-%d-%s", Prefix, w.id, w.seq, label)
	w.mu.Unlock()
	w.run("netns", "add", name)
	ns := &NS{w: w, Name: name, Label: label}
	w.mu.Lock()
	w.nses = append(w.nses, ns)
	w.mu.Unlock()
	w.run("-n", name, "link", "set", "lo", "up")
	return ns
}

// Link joins a and b with a veth pair and gives each end an address in
// CIDR form ("198.51.100.1/24"). The veth is created directly inside the
// two namespaces, so its names never meet the host's.
func (w *World) Link(a *NS, aAddr string, b *NS, bAddr string) Link {
	w.t.Helper()
	pa, err := netip.ParsePrefix(aAddr)
	if err != nil {
		w.t.Fatalf("netns: address %q: %v", aAddr, err)
	}
	pb, err := netip.ParsePrefix(bAddr)
	if err != nil {
		w.t.Fatalf("netns: address %q: %v", bAddr, err)
	}
	w.mu.Lock()
	w.seq++
	n := w.seq
	w.mu.Unlock()
	// Interface names are at most 15 bytes; the sequence number keeps
	// them unique within the world, hence within each namespace.
	l := Link{
		A: End{NS: a, Dev: fmt.Sprintf("veth%da", n), Addr: pa},
		B: End{NS: b, Dev: fmt.Sprintf("veth%db", n), Addr: pb},
	}
	w.run("link", "add", l.A.Dev, "netns", a.Name, "type", "veth", "peer", "name", l.B.Dev, "netns", b.Name)
	for _, e := range []End{l.A, l.B} {
		w.run("-n", e.NS.Name, "addr", "add", e.Addr.String(), "dev", e.Dev)
		w.run("-n", e.NS.Name, "link", "set", e.Dev, "up")
	}
	return l
}

// Route adds a route inside ns: dst in CIDR form ("203.0.113.0/24" or
// "default") through the gateway via.
func (ns *NS) Route(dst, via string) {
	ns.w.t.Helper()
	ns.w.run("-n", ns.Name, "route", "add", dst, "via", via)
}

// Forward makes ns route packets between its links, as a router does.
func (ns *NS) Forward() {
	ns.w.t.Helper()
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		ns.w.t.Fatalf("netns: enabling forwarding in %s: %v", ns.Name, err)
	}
}

// Exec runs a short command (tc, ip, sysctl) inside ns and returns its
// combined output; it fails the test if the command fails.
func (ns *NS) Exec(name string, args ...string) string {
	ns.w.t.Helper()
	out, err := run(ns.w.ip, append([]string{"netns", "exec", ns.Name, name}, args...)...)
	if err != nil {
		ns.w.t.Fatalf("netns: %s %s in %s: %v: %s", name, strings.Join(args, " "), ns.Name, err, bytes.TrimSpace(out))
	}
	return string(out)
}

// Wrap rewrites cmd, not yet started, to run inside ns (through
// `ip netns exec`, which execs in place: the pid is the command's own).
func (ns *NS) Wrap(cmd *exec.Cmd) {
	cmd.Args = append([]string{ns.w.ip, "netns", "exec", ns.Name, cmd.Path}, cmd.Args[1:]...)
	cmd.Path = ns.w.ip
	cmd.Err = nil // a failed LookPath of the original is reported by ip
}

// Proc is a process started with NS.Start.
type Proc struct {
	Cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Done is closed once the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is Wait's result, valid once Done is closed.
func (p *Proc) Err() error { return p.err }

// Kill kills the process group and waits for the process to exit.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Signal sends sig to the process group, if the process still runs.
func (p *Proc) Signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = syscall.Kill(-p.Cmd.Process.Pid, sig)
	}
}

// Start runs cmd inside ns in its own process group, with a parent-death
// signal so that a killed test binary takes it along; t.Cleanup kills the
// group and waits for it.
func (ns *NS) Start(t testing.TB, cmd *exec.Cmd) *Proc {
	t.Helper()
	ns.Wrap(cmd)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("netns: starting %v in %s: %v", cmd.Args, ns.Name, err)
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.Kill)
	return p
}

// Do runs f on an OS thread switched into ns, so that sockets f creates
// belong to ns; f must not hand work to other goroutines. The thread is
// switched back afterwards, or retired if that fails.
func (ns *NS) Do(f func() error) error {
	target, err := os.Open(filepath.Join(nsDir, ns.Name))
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", ns.Name, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening this thread's namespace: %w", err)
	}
	defer orig.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering namespace %s: %w", ns.Name, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime retires it when this
		// goroutine ends, instead of reusing a thread in the wrong place.
		return errors.Join(ferr, fmt.Errorf("leaving namespace %s: %w", ns.Name, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// DialContext dials address from inside ns.
func (ns *NS) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		// No fallback racing: it would dial on another goroutine.
		d := net.Dialer{FallbackDelay: -1}
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// DialFrom dials address from inside ns with local (one of ns's
// addresses) as the source: several clients behind one interface.
func (ns *NS) DialFrom(ctx context.Context, local netip.Addr, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{FallbackDelay: -1, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(local, 0))}
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen listens on address inside ns.
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// HTTPClient returns a client whose connections are made inside ns.
func (ns *NS) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: ns.DialContext, MaxIdleConnsPerHost: 16}}
}
