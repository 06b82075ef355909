package downstream

import (
	"testing"
	"time"
)

func TestHealth(t *testing.T) {
	pol := ejectPolicy{after: 3, base: 10 * time.Second, max: time.Minute}
	t0 := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type step struct {
		op    string // join, leave, ok, fail, readmit
		at    time.Duration
		want  time.Duration // fail: ejection length; join, readmit: 1 for true
		state State
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"three failures in a row eject", []step{
			{"join", 0, 1, StateHealthy},
			{"fail", 1, 0, StateHealthy},
			{"fail", 2, 0, StateHealthy},
			{"fail", 3, 10 * time.Second, StateEjected},
			{"fail", 4, 0, StateEjected}, // ejected once, not again
		}},
		{"an answer in between resets the count", []step{
			{"join", 0, 1, StateHealthy},
			{"fail", 1, 0, StateHealthy},
			{"fail", 2, 0, StateHealthy},
			{"ok", 3, 0, StateHealthy},
			{"fail", 4, 0, StateHealthy},
			{"fail", 5, 0, StateHealthy},
		}},
		{"readmitted only once the time is up", []step{
			{"join", 0, 1, StateHealthy},
			{"fail", 0, 0, StateHealthy}, {"fail", 0, 0, StateHealthy},
			{"fail", 0, 10 * time.Second, StateEjected},
			{"readmit", 9 * time.Second, 0, StateEjected},
			{"readmit", 10 * time.Second, 1, StateHealthy},
		}},
		{"ejections in a row double, up to the cap", []step{
			{"join", 0, 1, StateHealthy},
			{"fail", 0, 0, StateHealthy}, {"fail", 0, 0, StateHealthy},
			{"fail", 0, 10 * time.Second, StateEjected},
			{"readmit", 10 * time.Second, 1, StateHealthy},
			{"fail", 11 * time.Second, 0, StateHealthy}, {"fail", 11 * time.Second, 0, StateHealthy},
			{"fail", 11 * time.Second, 20 * time.Second, StateEjected},
			{"readmit", 31 * time.Second, 1, StateHealthy},
			{"fail", 32 * time.Second, 0, StateHealthy}, {"fail", 32 * time.Second, 0, StateHealthy},
			{"fail", 32 * time.Second, 40 * time.Second, StateEjected},
			{"readmit", 72 * time.Second, 1, StateHealthy},
			{"fail", 73 * time.Second, 0, StateHealthy}, {"fail", 73 * time.Second, 0, StateHealthy},
			{"fail", 73 * time.Second, time.Minute, StateEjected},
		}},
		{"a long healthy stretch forgives past ejections", []step{
			{"join", 0, 1, StateHealthy},
			{"fail", 0, 0, StateHealthy}, {"fail", 0, 0, StateHealthy},
			{"fail", 0, 10 * time.Second, StateEjected},
			{"readmit", 10 * time.Second, 1, StateHealthy},
			{"ok", 10*time.Second + time.Minute + 1, 0, StateHealthy},
			{"fail", 80 * time.Second, 0, StateHealthy}, {"fail", 80 * time.Second, 0, StateHealthy},
			{"fail", 80 * time.Second, 10 * time.Second, StateEjected},
		}},
		{"an ejected node stays ejected across a reconnect", []step{
			{"join", 0, 1, StateHealthy},
			{"fail", 0, 0, StateHealthy}, {"fail", 0, 0, StateHealthy},
			{"fail", 0, 10 * time.Second, StateEjected},
			{"leave", 1, 0, StateEjected},
			{"join", 2, 0, StateEjected},
			{"readmit", 10 * time.Second, 1, StateHealthy},
		}},
		{"a healthy node that leaves is unknown", []step{
			{"join", 0, 1, StateHealthy},
			{"leave", 1, 0, StateUnknown},
			{"fail", 2, 0, StateUnknown}, {"fail", 3, 0, StateUnknown}, {"fail", 4, 0, StateUnknown},
			{"join", 5, 1, StateHealthy},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h health
			for i, s := range tc.steps {
				var got time.Duration
				b := func(v bool) time.Duration {
					if v {
						return 1
					}
					return 0
				}
				switch s.op {
				case "join":
					got = b(h.joined(at(s.at)))
				case "leave":
					h.left()
				case "ok":
					h.ok(at(s.at), pol)
				case "fail":
					got = h.fail(at(s.at), pol)
				case "readmit":
					got = b(h.readmit(at(s.at)))
				}
				if got != s.want || h.state != s.state {
					t.Fatalf("step %d (%s at %v): got %v and %v, want %v and %v", i, s.op, s.at, got, h.state, s.want, s.state)
				}
			}
		})
	}
}
