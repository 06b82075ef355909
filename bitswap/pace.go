package bitswap

import "time"

// Reply pacing: how big a reply message to an upstream peer may be, how
// many bytes may be out unconfirmed, and what a finished reply stream
// says about the peer and its link. Pure: times in, decisions out; the
// streams themselves are in replystream.go.
//
// Why: Helia (@helia/bitswap 4.0.19, DEFAULT_MESSAGE_RECEIVE_TIMEOUT)
// aborts an incoming stream whose message has not fully arrived within
// 10 s, and asks a peer for each block once. A 1 MiB message to a browser
// under 0.8 Mbit/s was lost whole, and boxo's SendMessage had already
// returned: it returns once the bytes are buffered.
//
// What a receiver's close means depends on the receiver (read in their
// sources). boxo's handleNewStream (bitswap/network/bsnet/ipfs_impl.go)
// and js-ipfs's ipfs-bitswap 15 read messages until the sender's EOF,
// then close: their close after ours is a delivery, and a reset a message
// lost. Helia's Network._onStream closes its writable end as soon as the
// stream opens, before reading anything, and aborts the stream if no
// complete message arrived within 10 s: its close says nothing, and once
// both sides have closed go-yamux forgets the stream, so a later abort is
// never seen. Only one thing tells them apart: a receiver that closes
// before our side has. So the first message to a peer holds our close for
// a moment (replyProbe): a close meanwhile is Helia's.

// maxReplyBytes is where a reply message stops taking more blocks on a
// fast link: far enough below the 4 MiB receivers accept to leave room
// for one more maximal block, large enough that per-message overhead does
// not dominate.
const maxReplyBytes = 1 << 20

// unconfirmedBytes caps a message to a receiver whose deliveries cannot be
// confirmed (Helia, or one not yet told apart): such a message arrives
// within Helia's 10 s down to 26 KB/s (0.2 Mbit/s) whatever its writes
// showed. A write returns once the bytes fit in the socket and muxer
// buffers, and 256 KiB fits in Helia's yamux window (256 KiB), so write
// times alone overstate a slow link's rate.
const unconfirmedBytes = 256 << 10

const (
	// replyWindow is how long one reply message may take at the peer's
	// measured rate: a third of Helia's 10 s, leaving room for a wrong
	// estimate and for the message queued before it.
	replyWindow = 3 * time.Second
	// replyAckWait bounds the wait for the receiver's close once a message
	// is written: past Helia's 10 s, a receiver that has not closed never
	// will (it is treated as delivered, and its stream let go).
	replyAckWait = 15 * time.Second
	// replyProbe is the longest the first message to a peer holds our
	// close waiting for the receiver's: Helia's comes one round trip after
	// the stream opens (probeWait). boxo's receiver handles the message as
	// soon as it is read, so holding the close delays only the close.
	replyProbe = time.Second
	// minRateSample is the smallest message whose time says anything about
	// the link; smaller ones measure its latency.
	minRateSample = 16 << 10
	// maxRepliesInFlight bounds the reply streams awaiting their outcome
	// per peer (and so the goroutines watching them).
	maxRepliesInFlight = 4
	// maxReplyFailures is how many messages in a row a peer may cut off
	// before the one at hand is given up: a peer that resets every stream,
	// even of one block, would otherwise be sent the same blocks for ever.
	maxReplyFailures = 8
	retryBase        = 100 * time.Millisecond
)

// probeWait is how long a probe holds our close, given the peer's
// measured round trip (0 if unknown): four of them, at least 100 ms, at
// most max; max when the round trip is unknown.
func probeWait(rtt, most time.Duration) time.Duration {
	if rtt <= 0 {
		return most
	}
	return min(most, max(100*time.Millisecond, 4*rtt))
}

// replyKind is what a receiver's close means.
type replyKind int

const (
	kindUnknown replyKind = iota
	// kindReadsFirst closes after reading to our EOF (boxo, js-ipfs): its
	// close is a delivery.
	kindReadsFirst
	// kindClosesFirst closes as the stream opens (Helia): its close says
	// nothing, and only a reset while we still write is seen.
	kindClosesFirst
)

// replyOutcome is how one reply message ended.
type replyOutcome int

const (
	// replyDelivered: the receiver closed its side after ours.
	replyDelivered replyOutcome = iota
	// replyEarlyClose: the receiver closed its side before ours (Helia);
	// the message was written in full and counts as delivered.
	replyEarlyClose
	// replyTimedOut: written, but the receiver neither closed nor reset
	// within replyAckWait. Counted as delivered; the link is slow.
	replyTimedOut
	// replyFailed: the stream was reset (the receiver cut the message off)
	// or could not be opened or written. Its blocks go back in the queue.
	replyFailed
)

func (o replyOutcome) String() string {
	switch o {
	case replyDelivered:
		return "delivered"
	case replyEarlyClose:
		return "closed early"
	case replyTimedOut:
		return "timed out"
	default:
		return "failed"
	}
}

// replyEvents is what one reply stream showed, by time; a zero time was
// not seen.
type replyEvents struct {
	opened   time.Time // the stream was open
	wrote    time.Time // the message's bytes were written
	closed   time.Time // our side was closed (after the probe, if held)
	held     bool      // our close was held for the probe
	writeErr error     // opening or writing failed
	ended    time.Time // the receiver's side ended: EOF, reset or our deadline
	endErr   error     // nil for a normal close (EOF)
	timedOut bool      // ended by our deadline
}

// replyResult judges a finished reply stream.
type replyResult struct {
	outcome replyOutcome
	// held is set when our close waited for the probe.
	held bool
	// toWrite and toEnd run from the stream's opening to the last byte
	// written and to the receiver's end (0 when not seen); the time our
	// close was held is not in toEnd.
	toWrite, toEnd time.Duration
}

func (e replyEvents) result() replyResult {
	since := func(t time.Time) time.Duration {
		if e.opened.IsZero() || t.IsZero() {
			return 0
		}
		return t.Sub(e.opened)
	}
	r := replyResult{held: e.held, toWrite: since(e.wrote), toEnd: since(e.ended)}
	if e.held && r.toEnd > 0 && !e.closed.IsZero() && e.ended.After(e.closed) {
		r.toEnd = max(0, r.toEnd-e.closed.Sub(e.wrote))
	}
	switch {
	case e.writeErr != nil || e.closed.IsZero():
		// A reset while writing: the time until it is how long the
		// receiver waited. No stream at all: nothing about the link.
		r.outcome = replyFailed
		if e.endErr == nil || e.timedOut {
			r.toEnd = 0
		}
	case e.timedOut:
		r.outcome = replyTimedOut
	case e.endErr != nil:
		r.outcome = replyFailed
	case e.ended.Before(e.closed):
		r.outcome = replyEarlyClose
	default:
		r.outcome = replyDelivered
	}
	return r
}

// replyPace sizes one peer's reply messages to the rate its link
// delivers them, and learns what its closes mean.
type replyPace struct {
	window time.Duration
	kind   replyKind
	// probing is set while a message holds our close to learn the kind.
	probing bool
	// rate is the peer's smoothed delivery rate in bytes a second, 0 until
	// measured.
	rate float64
	// target is the size a message stops taking blocks at; a message always
	// carries at least one block.
	target int
	// failures counts messages cut off in a row.
	failures int
	// fastRun counts the messages in a row to a receiver that closes
	// first whose writes alone would allow a full message (fastRunToLift).
	fastRun int
}

func newReplyPace(window time.Duration) replyPace {
	return replyPace{window: window, target: maxReplyBytes}
}

// fastRunToLift is how many messages in a row to a receiver that closes
// first must each have been written fast enough for a full message in the
// window before its messages may pass unconfirmedBytes: by then a slow
// link's buffers are full, and its writes show its pace. (Helia on a fast
// link: 1 MiB messages fetch 64 MiB about a third faster than 256 KiB.)
const fastRunToLift = 4

// messageBytes is where the next message stops taking blocks.
func (p *replyPace) messageBytes() int {
	if p.kind != kindReadsFirst && p.fastRun < fastRunToLift {
		return min(p.target, unconfirmedBytes)
	}
	return p.target
}

// inFlightBytes is how many block bytes may be out unconfirmed: two
// messages' worth, so the next message is written while the receiver
// reads the last, and no more, so a message does not wait behind a pile
// of others on a slow link (its receiver's clock runs from the stream's
// opening). Writes block once the socket's buffer is full, so on a slow
// link what is queued ahead of the peer's other traffic (js-libp2p's ping
// among it) is that buffer, whatever this allows.
func (p *replyPace) inFlightBytes() int { return 2 * p.messageBytes() }

// maxWriters is how many reply messages may be written at once to a
// receiver that reads first, on a link measured fast enough for full
// messages. Each reply goes on a new stream, whose yamux window starts at
// 256 KiB and grows only as the receiver reads: written one after
// another, every message spends its first round trips waiting for window
// (scenario 5, 40 ms away at 50 Mbit/s: about 38 Mbit/s while writing).
// Two at once keep the link busy. Never to Helia, whose clock runs from a
// stream's opening, nor on a slow link or before the rate is known: there
// a message sharing the link would take twice as long.
const maxWriters = 2

// writers is how many messages may be written at once.
func (p *replyPace) writers() int {
	if p.kind == kindReadsFirst && p.rate > 0 && p.target >= maxReplyBytes && p.failures == 0 {
		return maxWriters
	}
	return 1
}

// preopen reports whether the stream of the next message may be opened
// ahead of it, while the writer waits for one: only to a receiver that
// reads first (boxo, js-ipfs), which accepts a stream and waits for its
// message, and only while no message has failed. Helia's clock runs from
// a stream's opening; a receiver not yet told apart may be Helia.
func (p *replyPace) preopen() bool { return p.kind == kindReadsFirst && p.failures == 0 }

// probe reports whether the next message should hold our close to learn
// the receiver's kind (one at a time, until it is known).
func (p *replyPace) probe() bool {
	if p.kind != kindUnknown || p.probing {
		return false
	}
	p.probing = true
	return true
}

// backoff is how long to wait before the next message after failures.
func (p *replyPace) backoff() time.Duration {
	if p.failures == 0 {
		return 0
	}
	return retryBase << min(p.failures-1, 5)
}

// givingUp reports whether a message just cut off should be dropped
// rather than sent again.
func (p *replyPace) givingUp() bool { return p.failures >= maxReplyFailures }

// observe folds in how a message of size block bytes ended.
func (p *replyPace) observe(r replyResult, size int) {
	if r.held {
		p.probing = false
	}
	rate := func(d time.Duration) float64 {
		if d <= 0 || size <= 0 {
			return 0
		}
		return float64(size) / d.Seconds()
	}
	switch r.outcome {
	case replyFailed:
		p.failures++
		p.fastRun = 0
		if s := rate(r.toEnd); s > 0 {
			// The receiver had less than the message in that time: its
			// rate is below it. Halve, so the next message arrives in time
			// even if the link is slower than this bound.
			p.lower(s / 2)
		}
	case replyTimedOut:
		p.failures = 0
		p.fastRun = 0
		if s := rate(r.toEnd); s > 0 {
			p.lower(s)
		}
	case replyEarlyClose:
		p.failures = 0
		p.kind = kindClosesFirst
		p.sample(size, rate(r.toWrite))
		p.countFast(size, rate(r.toWrite))
	case replyDelivered:
		p.failures = 0
		if r.held && p.kind == kindUnknown {
			p.kind = kindReadsFirst // it waited for our close
		}
		if p.kind == kindReadsFirst {
			p.sample(size, rate(r.toEnd))
		} else {
			p.sample(size, rate(r.toWrite))
			p.countFast(size, rate(r.toWrite))
		}
	}
	if p.rate > 0 {
		p.target = int(min(float64(maxReplyBytes), max(1, p.rate*p.window.Seconds())))
	}
}

// sample folds a measured rate in, unless the message was too small to
// say anything about the link.
func (p *replyPace) sample(size int, r float64) {
	if r <= 0 || size < min(minRateSample, p.target/2) {
		return
	}
	if p.rate == 0 {
		p.rate = r
	} else {
		p.rate = 0.5*r + 0.5*p.rate
	}
}

// countFast extends or ends the run of messages written fast enough for
// a full message in the window; small messages say nothing either way.
func (p *replyPace) countFast(size int, r float64) {
	if size < minRateSample {
		return
	}
	if r*p.window.Seconds() >= maxReplyBytes {
		p.fastRun++
	} else {
		p.fastRun = 0
	}
}

// lower caps the rate at r.
func (p *replyPace) lower(r float64) {
	if p.rate == 0 || r < p.rate {
		p.rate = r
	}
}
