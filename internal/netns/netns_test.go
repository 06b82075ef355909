package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"github.com/kitsune-lb/kitsune/internal/testkit"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pair makes two namespaces on one /24.
func pair(t *testing.T) (*World, *NS, *NS, Link) {
	w := New(t)
	a, b := w.Namespace("a"), w.Namespace("b")
	l := w.Link(a, "198.51.100.1/24", b, "198.51.100.2/24")
	return w, a, b, l
}

// echo serves, inside ns, a listener that writes back what it reads.
func echo(t *testing.T, ns *NS, addr string) net.Listener {
	t.Helper()
	l, err := ns.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return l
}

func roundTrip(t *testing.T, c net.Conn, msg []byte) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo returned other bytes")
	}
	return time.Since(start)
}

func exists(name string) bool {
	_, err := os.Stat(filepath.Join(nsDir, name))
	return err == nil
}

func TestLinkCarriesTrafficAndIsolates(t *testing.T) {
	var names []string
	t.Run("world", func(t *testing.T) {
		_, a, b, _ := pair(t)
		names = []string{a.Name, b.Name}
		echo(t, a, "198.51.100.1:7000")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := b.DialContext(ctx, "tcp", "198.51.100.1:7000")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		roundTrip(t, c, []byte("hello"))
		// The host namespace gets no address of the world's.
		out, err := exec.Command("ip", "-4", "-o", "addr", "show").CombinedOutput()
		if err != nil || strings.Contains(string(out), "198.51.100.") {
			t.Fatalf("host addresses (%v):\n%s", err, out)
		}
		// A's loopback is A's own.
		lo := echo(t, a, "127.0.0.1:0")
		if c, err := a.DialContext(ctx, "tcp", lo.Addr().String()); err != nil {
			t.Fatalf("dialling A's loopback from inside A: %v", err)
		} else {
			c.Close()
		}
		if c, err := net.DialTimeout("tcp", lo.Addr().String(), time.Second); err == nil {
			c.Close()
			t.Fatal("A's loopback listener answered in the host namespace")
		}
		for _, n := range names {
			if !exists(n) {
				t.Fatalf("namespace %s missing while the test runs", n)
			}
		}
	})
	for _, n := range names {
		if exists(n) {
			t.Errorf("namespace %s left after the test", n)
		}
	}
}

func TestStartRunsInsideAndCleansUp(t *testing.T) {
	var pid int
	t.Run("world", func(t *testing.T) {
		_, a, _, _ := pair(t)
		out := a.Exec("ip", "-4", "-o", "addr", "show")
		if !strings.Contains(out, "198.51.100.1/24") || strings.Contains(out, "198.51.100.2") {
			t.Fatalf("addresses inside a:\n%s", out)
		}
		// A child in its own process group, which spawns a grandchild:
		// the cleanup must take both.
		p := a.Start(t, exec.Command("sh", "-c", "sleep 600 & ip -4 -o addr show; wait"))
		if p.Cmd.SysProcAttr == nil || !p.Cmd.SysProcAttr.Setpgid {
			t.Fatal("process not in its own group")
		}
		pid = p.Cmd.Process.Pid
		testkit.Eventually(t, 10*time.Second, testkit.Say("process group never formed"), func() bool {
			pgid, err := syscall.Getpgid(pid)
			return err == nil && pgid == pid
		})
	})
	if err := syscall.Kill(-pid, 0); err == nil {
		t.Fatalf("process group %d still alive after cleanup", pid)
	}
}

func TestSweepRemovesStaleNamespaces(t *testing.T) {
	New(t) // root and ip present
	// A namespace named as if by a test process that no longer exists.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("%s%d-deadbeef-1-stale", Prefix, dead.Process.Pid)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	// Someone else's namespace, without the prefix, is left alone.
	other := fmt.Sprintf("not-kitsune-%d", dead.Process.Pid)
	if out, err := exec.Command("ip", "netns", "add", other).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", other).Run() })
	mine := New(t).Namespace("live")

	if exists(name) {
		t.Errorf("stale namespace %s survived the sweep", name)
	}
	if !exists(other) {
		t.Errorf("sweep removed %s, which is not ours", other)
	}
	if !exists(mine.Name) {
		t.Errorf("sweep removed the live namespace %s", mine.Name)
	}
}

func TestProxyAddsDelay(t *testing.T) {
	_, a, b, _ := pair(t)
	srv := echo(t, a, "127.0.0.1:0")
	const oneWay = 20 * time.Millisecond
	p := NewProxy(t, a, "198.51.100.1:0", a, srv.Addr().String(), Delay{OneWay: oneWay})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := b.DialContext(ctx, "tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var best time.Duration
	for i := range 5 {
		rtt := roundTrip(t, c, []byte(fmt.Sprintf("ping %d", i)))
		if i == 0 || rtt < best {
			best = rtt
		}
	}
	t.Logf("round trip through the proxy: %v (best of 5)", best)
	if best < 2*oneWay {
		t.Fatalf("round trip %v, want at least %v", best, 2*oneWay)
	}
	if p.Conns() != 2 {
		t.Fatalf("proxy tracks %d sockets, want 2", p.Conns())
	}
	c.Close()
	testkit.Eventually(t, 10*time.Second,
		func() string { return fmt.Sprintf("proxy still tracks %d sockets after the client closed", p.Conns()) },
		func() bool { return p.Conns() == 0 })
}

func TestShapeLimitsRate(t *testing.T) {
	_, a, b, l := pair(t)
	const rate = 8_000_000 // bit/s: 1 MB/s
	l.Shape(t, Shape{Rate: rate})
	srv, err := a.Listen("tcp", "198.51.100.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const size = 2 << 20
	got := make(chan int64, 1)
	go func() {
		c, err := srv.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := b.DialContext(ctx, "tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, size)
	_, _ = rand.Read(buf)
	start := time.Now()
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
	c.Close()
	n := <-got
	el := time.Since(start)
	mbit := float64(n*8) / el.Seconds() / 1e6
	t.Logf("%d bytes in %v: %.1f Mbit/s through a %d Mbit/s link", n, el, mbit, rate/1_000_000)
	if n != size {
		t.Fatalf("received %d bytes, want %d", n, size)
	}
	// At most the rate plus the bucket; a loaded machine is only slower.
	if mbit > float64(rate)/1e6*1.15 {
		t.Fatalf("%.1f Mbit/s through a link shaped to %d Mbit/s", mbit, rate/1_000_000)
	}
}
