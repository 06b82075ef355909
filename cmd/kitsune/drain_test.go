package main

import (
	"context"
	"testing"
	"time"
)

func TestDrainer(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := drainPolicy{Timeout: 10 * time.Second, Quiet: time.Second}
	type obs struct {
		at       time.Duration // since the drain began
		inFlight int
		want     drainOutcome
	}
	for _, tc := range []struct {
		name string
		p    drainPolicy
		obs  []obs
	}{
		{"zero timeout closes at once, even with work in flight", drainPolicy{Quiet: time.Second}, []obs{{0, 5, drainTimedOut}}},
		{"nothing in flight ends after the quiet period", p, []obs{{0, 0, drainWaiting}, {500 * time.Millisecond, 0, drainWaiting}, {time.Second, 0, drainIdle}}},
		{"work in flight waits, then idles out", p, []obs{{0, 3, drainWaiting}, {2 * time.Second, 1, drainWaiting}, {3 * time.Second, 0, drainWaiting}, {4 * time.Second, 0, drainIdle}}},
		{"a want between two blocks restarts the quiet period", p, []obs{{0, 0, drainWaiting}, {900 * time.Millisecond, 2, drainWaiting}, {1200 * time.Millisecond, 0, drainWaiting}, {2100 * time.Millisecond, 0, drainWaiting}, {2200 * time.Millisecond, 0, drainIdle}}},
		{"work that never ends times out", p, []obs{{0, 1, drainWaiting}, {9999 * time.Millisecond, 1, drainWaiting}, {10 * time.Second, 1, drainTimedOut}}},
		{"idle at the deadline counts as idle once quiet", p, []obs{{0, 1, drainWaiting}, {9 * time.Second, 0, drainWaiting}, {10 * time.Second, 0, drainIdle}}},
		{"going idle just before the deadline still times out", p, []obs{{0, 1, drainWaiting}, {9800 * time.Millisecond, 0, drainWaiting}, {10 * time.Second, 0, drainTimedOut}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDrainer(tc.p, t0)
			for i, o := range tc.obs {
				if got := d.observe(t0.Add(o.at), o.inFlight); got != o.want {
					t.Fatalf("observation %d (%v, %d in flight): %v, want %v", i, o.at, o.inFlight, got, o.want)
				}
			}
		})
	}
}

// The polling loop with a fake clock: it polls once per tick and stops on
// the drainer's word or when its context ends.
func TestDrainLoop(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := drainPolicy{Timeout: 10 * time.Second, Quiet: time.Second}

	t.Run("idles out after the figures reach zero", func(t *testing.T) {
		figures := []int{4, 2, 0, 0, 0}
		now := t0
		polls := 0
		tick := make(chan time.Time)
		go func() {
			for i := 0; i < 10; i++ { // more ticks than needed; the extra ones are never read
				select {
				case tick <- now:
				case <-time.After(5 * time.Second):
					return
				}
			}
		}()
		o, n := drain(context.Background(), p, func() time.Time { return now }, tick, func() int {
			f := figures[min(polls, len(figures)-1)]
			polls++
			now = t0.Add(time.Duration(polls-1) * 500 * time.Millisecond)
			return f
		})
		if o != drainIdle || n != 0 {
			t.Fatalf("outcome %v with %d in flight, want idle with 0", o, n)
		}
		// 4 and 2 at 0 and 0.5s, idle from 1s, quiet after 2s: five polls.
		if polls != 5 {
			t.Fatalf("%d polls, want 5", polls)
		}
	})
	t.Run("a cancelled context ends it with work in flight", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		o, n := drain(ctx, p, func() time.Time { return t0 }, make(chan time.Time), func() int { return 7 })
		if o != drainCancelled || n != 7 {
			t.Fatalf("outcome %v with %d in flight, want cancelled with 7", o, n)
		}
	})
	t.Run("zero timeout does not poll twice", func(t *testing.T) {
		polls := 0
		o, _ := drain(context.Background(), drainPolicy{}, func() time.Time { return t0 }, nil, func() int { polls++; return 3 })
		if o != drainTimedOut || polls != 1 {
			t.Fatalf("outcome %v after %d polls", o, polls)
		}
	})
}

func TestDrainFlag(t *testing.T) {
	for _, f := range []drainFlags{
		{DrainTimeout: -time.Second, DrainQuiet: time.Second},
		{DrainTimeout: time.Second, DrainQuiet: 0},
		{DrainTimeout: time.Second, DrainQuiet: -time.Second},
	} {
		if p, err := f.config(); err == nil {
			t.Errorf("%+v accepted: %+v", f, p)
		}
	}
	p, err := (&drainFlags{DrainTimeout: 0, DrainQuiet: time.Second}).config()
	if err != nil || p.Timeout != 0 {
		t.Fatalf("0: %+v %v", p, err)
	}
	// The defaults: what the drain did before the flag.
	c := defaultRunCmd(t)
	if p, err := c.drainFlags.config(); err != nil || p.Timeout != 30*time.Second || p.Quiet != time.Second {
		t.Fatalf("defaults: %+v %v", p, err)
	}
	p, err = (&drainFlags{DrainTimeout: 30 * time.Second, DrainQuiet: 5 * time.Second}).config()
	if err != nil || p.Quiet != 5*time.Second || p.Timeout != 30*time.Second {
		t.Fatalf("--drain-quiet 5s: %+v %v", p, err)
	}
}
