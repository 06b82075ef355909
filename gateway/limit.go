package gateway

import (
	"context"
	"errors"
	"net/netip"
	"sync"

	"golang.org/x/sync/semaphore"

	"github.com/kitsune-lb/kitsune/internal/iplimit"
)

// errBusy is returned when a client has its running and waiting requests
// at their bounds.
var errBusy = errors.New("gateway: too many requests from this address")

// queueLimiter bounds the gateway requests one client runs at once, and
// lets a few more wait for a slot instead of refusing them: trustless
// clients fetch a DAG's blocks in parallel (Helia's UnixFS exporter asks
// for every leaf of a node at once), and Helia 7 drops a gateway from its
// session on the first 429, then never settles the fetch. Entries live
// only while their client has requests running or waiting.
type queueLimiter struct {
	running, waiting int

	mu sync.Mutex
	m  map[netip.Addr]*client
}

type client struct {
	sem   *semaphore.Weighted
	users int // running and waiting
}

func newQueueLimiter(running, waiting int) *queueLimiter {
	return &queueLimiter{running: running, waiting: waiting, m: make(map[netip.Addr]*client)}
}

// acquire takes a slot for ip, waiting for one while ctx lasts; errBusy
// when ip already has running+waiting requests, ctx's error when it ended
// first. release gives the slot back.
func (l *queueLimiter) acquire(ctx context.Context, ip netip.Addr) (release func(), err error) {
	k := iplimit.Key(ip)
	l.mu.Lock()
	c := l.m[k]
	if c == nil {
		c = &client{sem: semaphore.NewWeighted(int64(l.running))}
		l.m[k] = c
	}
	if c.users >= l.running+l.waiting {
		l.mu.Unlock()
		return nil, errBusy
	}
	c.users++
	l.mu.Unlock()
	done := func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if c.users--; c.users == 0 {
			delete(l.m, k)
		}
	}
	if err := c.sem.Acquire(ctx, 1); err != nil {
		done()
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			c.sem.Release(1)
			done()
		})
	}, nil
}

// clients is the number of addresses with requests running or waiting.
func (l *queueLimiter) clients() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
