package iplimit

import (
	"net/netip"
	"testing"
)

func TestLimiterCapsPerClientAndEmpties(t *testing.T) {
	l := New(2)
	a := netip.MustParseAddr("198.51.100.7")
	r1, ok1 := l.Acquire(a)
	r2, ok2 := l.Acquire(netip.MustParseAddr("::ffff:198.51.100.7")) // the same client, v4-mapped
	if !ok1 || !ok2 {
		t.Fatal("the first two requests of a client were refused")
	}
	if _, ok := l.Acquire(a); ok {
		t.Fatal("a third concurrent request was allowed, max 2")
	}
	// Two addresses in one /64 are one client; another /64 is not.
	v6a, v6b := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2::ffff")
	r3, _ := l.Acquire(v6a)
	r4, _ := l.Acquire(v6b)
	if _, ok := l.Acquire(netip.MustParseAddr("2001:db8:1:2::42")); ok {
		t.Fatal("a /64 got more than max requests by varying its host part")
	}
	r5, ok := l.Acquire(netip.MustParseAddr("2001:db8:1:3::1"))
	if !ok {
		t.Fatal("another /64 was refused")
	}
	if got := l.Active(); got != 3 {
		t.Fatalf("Active = %d, want 3 clients", got)
	}
	for _, r := range []func(){r1, r2, r3, r4, r5} {
		r()
		r() // a second release is harmless
	}
	if got := l.Active(); got != 0 {
		t.Fatalf("Active = %d after every release, want 0", got)
	}
	if _, ok := l.Acquire(a); !ok {
		t.Fatal("a released client was refused")
	}
}
