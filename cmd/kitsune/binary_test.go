package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// buildBinary compiles the real command once per test binary run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kitsune")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestCommandLine(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()

	run := func(env []string, args ...string) (string, int) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}

	t.Run("help documents every flag", func(t *testing.T) {
		out, code := run(nil, "--help")
		if code != 0 {
			t.Fatalf("--help exited %d", code)
		}
		for _, f := range []string{"-d, --downstream", "-l, --listen", "-w, --ws", "-k, --key", "--max-wants-per-peer", "--max-inflight-per-node", "--max-message-size", "--log-level", "--log-format", "--admin", "$KITSUNE_DOWNSTREAM"} {
			if !strings.Contains(out, f) {
				t.Errorf("--help does not mention %q", f)
			}
		}
	})
	t.Run("missing downstream", func(t *testing.T) {
		out, code := run(nil, "-k", filepath.Join(dir, "k1"))
		if code == 0 || !strings.Contains(out, "downstream") {
			t.Fatalf("exit %d, output %q", code, out)
		}
	})
	t.Run("bad downstream address", func(t *testing.T) {
		out, code := run(nil, "-d", "/ip4/1.2.3.4/udp/5001", "-k", filepath.Join(dir, "k2"))
		if code == 0 || !strings.Contains(out, "/ip4/1.2.3.4/udp/5001") {
			t.Fatalf("exit %d, output %q", code, out)
		}
	})
	t.Run("bad listen address from the environment", func(t *testing.T) {
		out, code := run([]string{"KITSUNE_DOWNSTREAM=http://127.0.0.1:5001", "KITSUNE_LISTEN=/not/a/multiaddr"}, "-k", filepath.Join(dir, "k3"))
		if code == 0 || !strings.Contains(out, "/not/a/multiaddr") {
			t.Fatalf("exit %d, output %q", code, out)
		}
	})
	t.Run("corrupt key file is reported and kept", func(t *testing.T) {
		key := filepath.Join(dir, "corrupt.key")
		if err := os.WriteFile(key, []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, code := run(nil, "-d", "http://127.0.0.1:1", "-k", key, "-l", "/ip4/127.0.0.1/tcp/0", "-w", "/ip4/127.0.0.1/tcp/0")
		if code == 0 || !strings.Contains(out, key) {
			t.Fatalf("exit %d, output %q", code, out)
		}
		if b, _ := os.ReadFile(key); string(b) != "garbage" {
			t.Fatal("corrupt key file was overwritten")
		}
	})
}

// The real binary prints dialable addresses, keeps its peer ID across
// restarts, and exits 0 promptly on SIGTERM and SIGINT.
func TestBinaryStartsAndStops(t *testing.T) {
	bin := buildBinary(t)
	node := kubotest.Start(t, kubotest.Options{})
	key := filepath.Join(t.TempDir(), "kitsune.key")

	startOnce := func(sig syscall.Signal) string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "-d", node.APIURL, "-k", key,
			"-l", "/ip4/127.0.0.1/tcp/0", "-w", "/ip4/127.0.0.1/tcp/0", "--admin", "127.0.0.1:0")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var id string
		var addrs []string
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if rest, ok := strings.CutPrefix(line, "Kitsune peer ID "); ok {
				id = rest
			}
			if strings.Contains(line, "/p2p/") {
				addrs = append(addrs, line)
			}
			if len(addrs) == 2 {
				break
			}
		}
		go func() { _, _ = bufio.NewReader(stdout).WriteTo(new(bytes.Buffer)) }()
		if id == "" || len(addrs) != 2 {
			t.Fatalf("startup output: id %q addrs %v; stderr:\n%s", id, addrs, stderr.String())
		}
		for _, a := range addrs {
			if !strings.HasSuffix(a, "/p2p/"+id) || !strings.HasPrefix(a, "/ip4/127.0.0.1/tcp/") {
				t.Fatalf("address %q is not a full dialable multiaddr of %s", a, id)
			}
		}
		// Wait for the node to join, then stop.
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(stderr.String(), "downstream joined") {
			if time.Now().After(deadline) {
				t.Fatalf("no 'downstream joined' log line; stderr:\n%s", stderr.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
		began := time.Now()
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("exit after %v: %v; stderr:\n%s", sig, err, stderr.String())
		}
		if took := time.Since(began); took > 5*time.Second {
			t.Fatalf("took %v to stop", took)
		}
		return id
	}
	first := startOnce(syscall.SIGTERM)
	st, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", st.Mode().Perm())
	}
	if _, err := os.Stat(key + ".back"); err != nil {
		t.Fatalf("back host key not kept beside the key file: %v", err)
	}
	second := startOnce(syscall.SIGINT)
	if first != second {
		t.Fatalf("peer ID changed across restarts: %s then %s", first, second)
	}
}
