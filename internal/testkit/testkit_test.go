package testkit

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

func TestEventuallyWaitsForTheCondition(t *testing.T) {
	var n atomic.Int32
	Eventually(t, 5*time.Second, Say("three looks"), func() bool { return n.Add(1) >= 3 })
	if n.Load() != 3 {
		t.Fatalf("looked %d times", n.Load())
	}
}

// fakeTB records a Fatalf instead of stopping the test.
type fakeTB struct {
	testing.TB
	failed string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = format
	panic(f)
}

func TestEventuallyFailsAfterItsTime(t *testing.T) {
	f := &fakeTB{TB: t}
	func() {
		defer func() { _ = recover() }()
		Eventually(f, 20*time.Millisecond, Say("never"), func() bool { return false })
	}()
	if f.failed == "" {
		t.Fatal("a condition that never holds did not fail the test")
	}
}

func TestHostListensOnLoopback(t *testing.T) {
	h := Host(t, "/ip4/127.0.0.1/tcp/0")
	if len(h.Addrs()) == 0 {
		t.Fatal("no listen address")
	}
	if len(Host(t).Addrs()) != 0 {
		t.Fatal("a host asked to listen nowhere listens")
	}
}

// SlowLink holds the downlink to its rate, and leaves the uplink alone.
func TestSlowLinkPacesTheDownlink(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	const rate, size = 256 << 10, 128 << 10 // half a second's worth
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		_, _ = c.Write(make([]byte, size))
	}()
	c, err := net.Dial("tcp", SlowLink(t, l.Addr().String(), rate).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if _, err := c.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, c)
	took := time.Since(start)
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	if took < 400*time.Millisecond {
		t.Errorf("%d bytes in %v through a %d B/s link", n, took, rate)
	}
}
