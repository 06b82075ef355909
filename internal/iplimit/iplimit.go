// Package iplimit bounds the requests one client runs at once on Kitsune's
// HTTP ports (preload, the HTTP front), so one address cannot hold every
// slot of a node behind it.
package iplimit

import (
	"net/netip"
	"sync"
)

// Limiter counts concurrent requests per client. IPv6 clients are counted
// per /64: one host usually holds a whole /64, and counting single
// addresses would let it open a request per address. An entry lives only
// while its client has a request running, so the map is bounded by the
// requests in flight and empties when they end.
type Limiter struct {
	max int
	mu  sync.Mutex
	n   map[netip.Addr]int
}

// New returns a Limiter allowing max concurrent requests per client.
func New(max int) *Limiter {
	return &Limiter{max: max, n: make(map[netip.Addr]int)}
}

// Key is the address a client is counted under.
func Key(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// Acquire takes a slot for ip; ok is false when it has max requests
// running. release gives the slot back; calling it again does nothing.
func (l *Limiter) Acquire(ip netip.Addr) (release func(), ok bool) {
	k := Key(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[k] >= l.max {
		return nil, false
	}
	l.n[k]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.n[k]--; l.n[k] <= 0 {
				delete(l.n, k)
			}
		})
	}, true
}

// Active is the number of clients with a request running.
func (l *Limiter) Active() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.n)
}
