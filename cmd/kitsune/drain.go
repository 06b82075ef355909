package main

import (
	"context"
	"fmt"
	"time"
)

// drainFlags configure the graceful stop a rolling restart relies on: on
// SIGTERM or SIGINT /readyz fails at once, so a balancer sends no new
// connections, and the wants and replies already in flight are served
// before closing.
type drainFlags struct {
	DrainTimeout time.Duration `name:"drain-timeout" group:"admin" env:"KITSUNE_DRAIN_TIMEOUT" default:"30s" help:"On SIGTERM or SIGINT, how long to keep serving the wants and replies in flight (while /readyz already reports not ready) before closing; Kitsune closes earlier once nothing has been in flight for --drain-quiet. 0 closes at once. Keep it below the supervisor's stop timeout (systemd TimeoutStopSec, Kubernetes terminationGracePeriodSeconds)."`
	DrainQuiet   time.Duration `name:"drain-quiet" group:"admin" env:"KITSUNE_DRAIN_QUIET" default:"1s" help:"How long nothing may be in flight before a drain ends early. A client that reads what it fetched slower than it arrives (a media player, ipfs cat piped to a slow consumer) asks for nothing while it catches up, and is cut off if the drain ends then: raise this to cover its pauses (at most --drain-timeout)."`
}

func (f *drainFlags) config() (drainPolicy, error) {
	if f.DrainTimeout < 0 {
		return drainPolicy{}, fmt.Errorf("--drain-timeout must not be negative, got %v", f.DrainTimeout)
	}
	if f.DrainQuiet <= 0 {
		return drainPolicy{}, fmt.Errorf("--drain-quiet must be positive, got %v", f.DrainQuiet)
	}
	return drainPolicy{Timeout: f.DrainTimeout, Quiet: f.DrainQuiet}, nil
}

// drainPolicy says how long a stopping Kitsune keeps serving.
type drainPolicy struct {
	// Timeout bounds the whole drain; 0 closes at once.
	Timeout time.Duration
	// Quiet is how long nothing may be in flight before the drain ends
	// early. A client between two blocks of a DAG walk has briefly no
	// want outstanding, so one empty poll is not enough.
	Quiet time.Duration
}

// drainOutcome is why a drain ended.
type drainOutcome int

const (
	drainWaiting   drainOutcome = iota // not over yet
	drainIdle                          // nothing in flight for Quiet
	drainTimedOut                      // Timeout passed with work in flight
	drainCancelled                     // the caller gave up
)

func (o drainOutcome) String() string {
	switch o {
	case drainWaiting:
		return "waiting"
	case drainIdle:
		return "idle"
	case drainTimedOut:
		return "timed out"
	case drainCancelled:
		return "cancelled"
	}
	return fmt.Sprintf("drainOutcome(%d)", int(o))
}

// drainer is the drain's state: fed the time and the in-flight figure at
// each poll, it says whether to keep waiting. Pure, so tests drive it with
// a fake clock.
type drainer struct {
	p         drainPolicy
	began     time.Time
	idleSince time.Time // zero while something is in flight
}

func newDrainer(p drainPolicy, now time.Time) *drainer {
	return &drainer{p: p, began: now}
}

// observe records that inFlight wants were in flight at now.
func (d *drainer) observe(now time.Time, inFlight int) drainOutcome {
	if inFlight > 0 {
		d.idleSince = time.Time{}
	} else if d.idleSince.IsZero() {
		d.idleSince = now
	}
	switch {
	case d.p.Timeout <= 0:
		return drainTimedOut
	case !d.idleSince.IsZero() && now.Sub(d.idleSince) >= d.p.Quiet:
		return drainIdle
	case now.Sub(d.began) >= d.p.Timeout:
		return drainTimedOut
	}
	return drainWaiting
}

// drain polls inFlight at every tick until the drainer says stop or ctx
// ends. now and tick are the clock, injected so tests control time.
func drain(ctx context.Context, p drainPolicy, now func() time.Time, tick <-chan time.Time, inFlight func() int) (drainOutcome, int) {
	d := newDrainer(p, now())
	n := inFlight()
	for {
		if o := d.observe(now(), n); o != drainWaiting {
			return o, n
		}
		select {
		case <-ctx.Done():
			return drainCancelled, n
		case <-tick:
			n = inFlight()
		}
	}
}
