package heliatest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFetchFromKubo: Helia fetches a 3 MiB file from a Kubo node over /ws.
func TestFetchFromKubo(t *testing.T) {
	Node(t) // fail on missing npm deps before starting Kubo
	k := startKubo(t)

	content := make([]byte, 3<<20)
	rand.Read(content)
	want := sha256.Sum256(content)
	cid := strings.TrimSpace(k.run(t, content, "add", "-Q", "--pin=false"))

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	res, err := Fetch(ctx, t, k.wsAddr, cid)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != int64(len(content)) || res.SHA256 != hex.EncodeToString(want[:]) {
		t.Fatalf("fetched %d bytes sha256 %s, want %d bytes %x", res.Bytes, res.SHA256, len(content), want)
	}
	t.Logf("helia fetched %s (%d bytes) in %d ms (%v with node start-up)", cid, res.Bytes, res.MS, res.Wall.Round(time.Millisecond))
	// Node's start-up (loading Helia) is seconds on an idle machine and
	// several times that on a loaded one; time limits below allow for it.
	startup := res.Wall - time.Duration(res.MS)*time.Millisecond

	// A directory path, and a CID Kubo does not have: that must fail in time.
	tmp := t.TempDir()
	if err := os.MkdirAll(filepath.Join(tmp, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "sub", "file.bin"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := strings.TrimSpace(k.run(t, nil, "add", "-Q", "-r", "--pin=false", tmp))
	res, err = Fetch(ctx, t, k.wsAddr, dir, WithPath("sub/file.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if res.SHA256 != hex.EncodeToString(want[:]) {
		t.Fatalf("fetched %s/sub/file.bin sha256 %s, want %x", dir, res.SHA256, want)
	}

	res, err = Fetch(ctx, t, k.wsAddr, "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", WithTimeout(3*time.Second))
	if err == nil || res.OK {
		t.Fatalf("fetch of a missing block: %+v, %v; want an error", res, err)
	}
	if !strings.Contains(strings.ToLower(res.Error), "abort") {
		t.Fatalf("missing block: %q, want Helia's abort on timeout", res.Error)
	}
	if limit := 3*time.Second + 2*startup + 5*time.Second; res.Wall > limit {
		t.Fatalf("fetch of a missing block took %v despite a 3 s timeout (limit %v with start-up)", res.Wall, limit)
	}
}

// TestKuboCatsFromAdder: content added in Helia is fetched by Kubo through
// the connection Helia dialled (no swarm connect, no routing).
func TestKuboCatsFromAdder(t *testing.T) {
	Node(t)
	k := startKubo(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	for _, opts := range []AddOptions{{Size: 3 << 20}, {Dir: true}} {
		t.Run(fmt.Sprintf("dir=%v", opts.Dir), func(t *testing.T) {
			start := time.Now()
			a, err := StartAdder(ctx, t, k.wsAddr, opts)
			if err != nil {
				t.Fatal(err)
			}
			started := time.Now()
			path := a.CID
			if opts.Dir {
				path += "/" + a.Path
				if len(a.Files) != 3 {
					t.Fatalf("files: %+v", a.Files)
				}
			}
			got := k.run(t, nil, "cat", "--timeout=30s", path)
			sum := sha256.Sum256([]byte(got))
			if int64(len(got)) != a.Bytes || hex.EncodeToString(sum[:]) != a.SHA256 {
				t.Fatalf("kubo cat %s: %d bytes sha256 %x, helia said %d bytes %s", path, len(got), sum, a.Bytes, a.SHA256)
			}
			catted := time.Now()
			if err := a.Stop(); err != nil {
				t.Fatal(err)
			}
			t.Logf("helia added %s (peer %s) in %v, kubo cat %v, stop %v", path, a.PeerID,
				started.Sub(start).Round(time.Millisecond), catted.Sub(started).Round(time.Millisecond),
				time.Since(catted).Round(time.Millisecond))
		})
	}
}

// kubo is the smallest Kubo daemon that will do: loopback only, no
// bootstrap, no routing. internal/kubotest has the full harness.
type kubo struct {
	bin, repo string
	wsAddr    string // /ip4/127.0.0.1/tcp/N/ws/p2p/<id>
}

func kuboBin(t testing.TB) string {
	bin := os.Getenv("KITSUNE_KUBO_BIN")
	if bin == "" {
		bin = filepath.Join(Root(t), ".cache", "bin", "ipfs")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kubo binary %s missing (set KITSUNE_KUBO_BIN or build it into .cache/bin): %v", bin, err)
	}
	return bin
}

func startKubo(t testing.TB) *kubo {
	t.Helper()
	k := &kubo{bin: kuboBin(t), repo: t.TempDir()}
	k.run(t, nil, "init", "--profile=test", "--empty-repo")
	k.run(t, nil, "config", "--json", "Addresses.Swarm", `["/ip4/127.0.0.1/tcp/0","/ip4/127.0.0.1/tcp/0/ws"]`)
	k.run(t, nil, "config", "--json", "Bootstrap", `[]`)
	k.run(t, nil, "config", "Routing.Type", "none")

	var out syncBuffer
	cmd := exec.Command(k.bin, "daemon")
	cmd.Env = append(os.Environ(), "IPFS_PATH="+k.repo)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})

	deadline := time.After(60 * time.Second)
	for !strings.Contains(out.String(), "Daemon is ready") {
		select {
		case <-exited:
			t.Fatalf("ipfs daemon exited:\n%s", out.String())
		case <-deadline:
			t.Fatalf("ipfs daemon not ready after 60 s:\n%s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}

	var id struct {
		ID        string
		Addresses []string
	}
	if err := json.Unmarshal([]byte(k.run(t, nil, "id")), &id); err != nil {
		t.Fatal(err)
	}
	for _, a := range id.Addresses {
		if strings.HasPrefix(a, "/ip4/127.0.0.1/") && strings.Contains(a, "/ws/p2p/") {
			k.wsAddr = a
		}
	}
	if k.wsAddr == "" {
		t.Fatalf("no /ws address in %v", id.Addresses)
	}
	return k
}

// run runs an ipfs command against the repo and returns its stdout.
func (k *kubo) run(t testing.TB, stdin []byte, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.bin, args...)
	cmd.Env = append(os.Environ(), "IPFS_PATH="+k.repo)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ipfs %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}
