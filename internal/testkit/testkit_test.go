package testkit

import (
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
