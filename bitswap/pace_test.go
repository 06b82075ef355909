package bitswap

import (
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// timeoutErr is what a stream read returns at its deadline.
type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o deadline reached" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestReplyResult(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	reset := network.ErrReset
	for _, tc := range []struct {
		name string
		ev   replyEvents
		want replyResult
	}{
		{"boxo: reads to our EOF, then closes",
			replyEvents{opened: at(0), wrote: at(100), closed: at(100), ended: at(400)},
			replyResult{replyDelivered, false, ms(100), ms(400)}},
		{"boxo probed: the held time is not the link's",
			replyEvents{opened: at(0), wrote: at(100), closed: at(1100), held: true, ended: at(1400)},
			replyResult{replyDelivered, true, ms(100), ms(400)}},
		{"Helia probed: closed before we did",
			replyEvents{opened: at(0), wrote: at(100), held: true, ended: at(150), closed: at(151)},
			replyResult{replyEarlyClose, true, ms(100), ms(150)}},
		{"Helia: closed while we still wrote",
			replyEvents{opened: at(0), ended: at(5), wrote: at(900), closed: at(900)},
			replyResult{replyEarlyClose, false, ms(900), ms(5)}},
		{"cut off after the write",
			replyEvents{opened: at(0), wrote: at(300), closed: at(300), ended: at(2000), endErr: reset},
			replyResult{replyFailed, false, ms(300), ms(2000)}},
		{"cut off during the probe",
			replyEvents{opened: at(0), wrote: at(300), held: true, ended: at(800), endErr: reset},
			replyResult{replyFailed, true, ms(300), ms(800)}},
		{"cut off while writing",
			replyEvents{opened: at(0), writeErr: reset, ended: at(2000), endErr: reset},
			replyResult{replyFailed, false, 0, ms(2000)}},
		{"no stream",
			replyEvents{writeErr: errors.New("no connection")},
			replyResult{replyFailed, false, 0, 0}},
		{"write deadline",
			replyEvents{opened: at(0), writeErr: timeoutErr{}, ended: at(10000), endErr: timeoutErr{}, timedOut: true},
			replyResult{replyFailed, false, 0, 0}},
		{"never closed",
			replyEvents{opened: at(0), wrote: at(100), closed: at(100), ended: at(15100), endErr: timeoutErr{}, timedOut: true},
			replyResult{replyTimedOut, false, ms(100), ms(15100)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.ev.result(); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestReplyPace(t *testing.T) {
	const kib = 1 << 10
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	type step struct {
		r    replyResult
		size int
	}
	delivered := func(held bool, write, end time.Duration) replyResult {
		return replyResult{replyDelivered, held, write, end}
	}
	boxo := step{delivered(true, 0, time.Millisecond), 1 * kib} // a probe it waited out
	helia := step{replyResult{replyEarlyClose, true, time.Millisecond, time.Millisecond}, 1 * kib}
	fastHelia := step{replyResult{replyEarlyClose, false, time.Millisecond, 0}, 256 * kib}
	for _, tc := range []struct {
		name   string
		window time.Duration
		steps  []step
		kind   replyKind
		target int // messageBytes
		fails  int
	}{
		{"unknown receiver: at most 256 KiB", time.Second, nil, kindUnknown, unconfirmedBytes, 0},
		{"boxo, unmeasured: the largest", time.Second, []step{boxo}, kindReadsFirst, maxReplyBytes, 0},
		{"boxo, fast link keeps the largest", time.Second, []step{boxo, {delivered(false, 0, sec(0.01)), maxReplyBytes}}, kindReadsFirst, maxReplyBytes, 0},
		{"boxo, slow link: a window of its rate", time.Second, []step{boxo, {delivered(false, 0, sec(4)), 512 * kib}}, kindReadsFirst, 128 * kib, 0},
		{"boxo, smoothed", time.Second, []step{boxo, {delivered(false, 0, sec(4)), 512 * kib}, {delivered(false, 0, sec(2)), 512 * kib}}, kindReadsFirst, 192 * kib, 0},
		{"boxo, a tiny message measures latency, not rate", time.Second, []step{boxo, {delivered(false, 0, sec(1)), 1 * kib}}, kindReadsFirst, maxReplyBytes, 0},
		{"a close after ours unprobed proves nothing", time.Second, []step{{delivered(false, sec(0.001), sec(0.1)), 256 * kib}}, kindUnknown, unconfirmedBytes, 0},
		{"Helia: at most 256 KiB however fast its writes", time.Second, []step{helia, {replyResult{replyEarlyClose, false, sec(0.001), 0}, 256 * kib}}, kindClosesFirst, unconfirmedBytes, 0},
		{"Helia: its later closes after ours are not deliveries", time.Second, []step{helia, {delivered(false, sec(0.001), sec(0.01)), 256 * kib}}, kindClosesFirst, unconfirmedBytes, 0},
		{"Helia: four fast writes in a row lift the cap", time.Second, []step{helia, fastHelia, fastHelia, fastHelia, fastHelia}, kindClosesFirst, maxReplyBytes, 0},
		{"Helia: three do not", time.Second, []step{helia, fastHelia, fastHelia, fastHelia}, kindClosesFirst, unconfirmedBytes, 0},
		{"Helia: a slow write ends the run", time.Second, []step{helia, fastHelia, fastHelia, fastHelia, {replyResult{replyEarlyClose, false, sec(2), 0}, 256 * kib}, fastHelia}, kindClosesFirst, unconfirmedBytes, 0},
		{"Helia: write times count", 2 * time.Second, []step{helia, {replyResult{replyEarlyClose, false, sec(1), 0}, 64 * kib}}, kindClosesFirst, 128 * kib, 0},
		{"cut off: half the bound it shows", time.Second, []step{boxo, {replyResult{replyFailed, false, 0, sec(2)}, 1024 * kib}}, kindReadsFirst, 256 * kib, 1},
		{"cut off twice", time.Second, []step{boxo, {replyResult{replyFailed, false, 0, sec(2)}, 1024 * kib}, {replyResult{replyFailed, false, 0, sec(2)}, 256 * kib}}, kindReadsFirst, 64 * kib, 2},
		{"a delivery clears failures", time.Second, []step{boxo, {replyResult{replyFailed, false, 0, sec(2)}, 1024 * kib}, {delivered(false, 0, sec(1)), 128 * kib}}, kindReadsFirst, 192 * kib, 0},
		{"no stream: no rate", time.Second, []step{boxo, {replyResult{replyFailed, false, 0, 0}, 64 * kib}}, kindReadsFirst, maxReplyBytes, 1},
		{"never closed: the rate is at most what it shows", time.Second, []step{boxo, {replyResult{replyTimedOut, false, 0, sec(16)}, 1024 * kib}}, kindReadsFirst, 64 * kib, 0},
		{"at least one block", time.Second, []step{{replyResult{replyFailed, false, 0, sec(10)}, 1}}, kindUnknown, 1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newReplyPace(tc.window)
			for _, s := range tc.steps {
				p.observe(s.r, s.size)
			}
			if p.kind != tc.kind {
				t.Errorf("kind %d, want %d", p.kind, tc.kind)
			}
			if got := p.messageBytes(); got != tc.target {
				t.Errorf("message bytes %d, want %d", got, tc.target)
			}
			if p.failures != tc.fails {
				t.Errorf("failures %d, want %d", p.failures, tc.fails)
			}
			if got := p.inFlightBytes(); got != 2*tc.target {
				t.Errorf("in flight %d, want %d", got, 2*tc.target)
			}
		})
	}
}

func TestProbeWait(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	for _, tc := range []struct{ rtt, want time.Duration }{
		{0, time.Second}, {ms(1), ms(100)}, {ms(50), ms(200)}, {ms(400), time.Second},
	} {
		if got := probeWait(tc.rtt, time.Second); got != tc.want {
			t.Errorf("rtt %v: %v, want %v", tc.rtt, got, tc.want)
		}
	}
}

// One probe at a time, until the kind is known; a probe cut off makes
// way for another.
func TestReplyPaceProbes(t *testing.T) {
	p := newReplyPace(replyWindow)
	if !p.probe() {
		t.Fatal("no probe for an unknown receiver")
	}
	if p.probe() {
		t.Fatal("a second probe while one is out")
	}
	p.observe(replyResult{outcome: replyFailed, held: true}, 1)
	if !p.probe() {
		t.Fatal("no new probe after one was cut off")
	}
	p.observe(replyResult{outcome: replyDelivered, held: true, toEnd: time.Millisecond}, 1)
	if p.kind != kindReadsFirst || p.probe() {
		t.Fatalf("kind %d after a probe waited out; probing again", p.kind)
	}
}

// A peer that cuts off every message is given up on after a bounded
// number of tries, with growing pauses between them.
func TestReplyPaceGivesUp(t *testing.T) {
	p := newReplyPace(replyWindow)
	var waited time.Duration
	for i := range maxReplyFailures {
		if p.givingUp() {
			t.Fatalf("gave up after %d failures", i)
		}
		waited += p.backoff()
		p.observe(replyResult{outcome: replyFailed, toEnd: time.Second}, 64<<10)
	}
	if !p.givingUp() {
		t.Fatalf("still trying after %d failures", maxReplyFailures)
	}
	if waited == 0 || waited > time.Minute {
		t.Errorf("waited %v in all between tries", waited)
	}
	p.observe(replyResult{outcome: replyDelivered, toEnd: time.Second}, 64<<10)
	if p.givingUp() || p.backoff() != 0 {
		t.Error("a delivery did not clear the failures")
	}
}

// Randomised: whatever the outcomes, a message's limit stays between one
// byte (one block a message) and maxReplyBytes, at most unconfirmedBytes
// unless the receiver proved it reads first or wrote fast for long enough, and in-flight bytes at two
// messages' worth.
func TestReplyPaceBounds(t *testing.T) {
	for seed := range 200 {
		p := newReplyPace(time.Duration(seed%7+1) * 500 * time.Millisecond)
		x := uint64(seed)*2654435761 + 1
		next := func(n uint64) uint64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x % n }
		for i := range 100 {
			r := replyResult{outcome: replyOutcome(next(4)), held: next(2) == 0,
				toWrite: time.Duration(next(uint64(20 * time.Second))), toEnd: time.Duration(next(uint64(20 * time.Second)))}
			p.observe(r, int(next(4<<20)))
			m := p.messageBytes()
			if m < 1 || m > maxReplyBytes || (p.kind != kindReadsFirst && p.fastRun < fastRunToLift && m > unconfirmedBytes) {
				t.Fatalf("seed %d step %d: message bytes %d for kind %d", seed, i, m, p.kind)
			}
			if in := p.inFlightBytes(); in != 2*m {
				t.Fatalf("seed %d: in flight %d", seed, p.inFlightBytes())
			}
		}
	}
}

// Two messages are written at once only to a receiver that reads first
// (its close is a delivery), on a link measured fast enough for full
// messages, with no failure since: never to Helia, an unknown receiver, a
// slow link or an unmeasured one.
func TestReplyPaceWriters(t *testing.T) {
	const kib = 1 << 10
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	probe := replyResult{replyDelivered, true, 0, time.Millisecond}
	fast := replyResult{replyDelivered, false, sec(0.05), sec(0.1)} // 1 MiB in 0.1 s
	slow := replyResult{replyDelivered, false, sec(1), sec(4)}      // 1 MiB in 4 s
	heliaProbe := replyResult{replyEarlyClose, true, time.Millisecond, time.Millisecond}
	heliaFast := replyResult{replyEarlyClose, false, time.Millisecond, 0}
	cut := replyResult{replyFailed, false, 0, sec(0.1)}
	type step struct {
		r    replyResult
		size int
	}
	for _, tc := range []struct {
		name  string
		steps []step
		want  int
	}{
		{"unknown receiver", nil, 1},
		{"boxo, rate not measured yet", []step{{probe, 1 * kib}}, 1},
		{"boxo on a fast link", []step{{probe, 1 * kib}, {fast, 1024 * kib}}, 2},
		{"boxo on a slow link", []step{{probe, 1 * kib}, {slow, 1024 * kib}}, 1},
		{"boxo, a message cut off", []step{{probe, 1 * kib}, {fast, 1024 * kib}, {cut, 1024 * kib}}, 1},
		{"boxo, delivered again after a cut-off, still fast", []step{{probe, 1 * kib}, {fast, 1024 * kib}, {cut, 64 * kib}, {fast, 1024 * kib}, {fast, 1024 * kib}, {fast, 1024 * kib}}, 2},
		{"Helia, however fast", []step{{heliaProbe, 1 * kib}, {heliaFast, 256 * kib}, {heliaFast, 256 * kib}, {heliaFast, 256 * kib}, {heliaFast, 256 * kib}, {heliaFast, 1024 * kib}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newReplyPace(replyWindow)
			for _, s := range tc.steps {
				p.observe(s.r, s.size)
			}
			if got := p.writers(); got != tc.want {
				t.Errorf("writers %d, want %d (kind %d, rate %.0f, target %d, failures %d)", got, tc.want, p.kind, p.rate, p.target, p.failures)
			}
		})
	}
}
