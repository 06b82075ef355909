package downstream

import "time"

// health is one node's health as the pool judges it: failures in a row
// (active checks and passive outcomes alike), ejection for a time that
// doubles with each ejection in a row (like Envoy's outlier detection),
// and re-admission. It is pure: the time comes in with every call, and
// the pool acts on what it returns (logs, NodeUp/NodeDown).
type health struct {
	state        State
	failures     int // in a row
	ejections    int // in a row, for the growing ejection time
	ejectedUntil time.Time
	healthySince time.Time
}

// ejectPolicy is when and for how long a failing node is ejected.
type ejectPolicy struct {
	after     int           // failures in a row that eject
	base, max time.Duration // the first ejection's length, and the cap
}

func (o *Options) ejectPolicy() ejectPolicy {
	return ejectPolicy{after: o.EjectAfter, base: o.EjectBase, max: o.EjectMax}
}

// joined: the node is connected. It is up unless ejected: an ejected node
// stays ejected across a reconnect until its time is up and it passes a
// check.
func (h *health) joined(now time.Time) (up bool) {
	if h.state == StateEjected {
		return false
	}
	h.state, h.failures, h.healthySince = StateHealthy, 0, now
	return true
}

// left: the connection is gone.
func (h *health) left() {
	if h.state == StateHealthy {
		h.state = StateUnknown
	}
}

// ok: the node answered (a want, or a passing check). A long healthy
// stretch forgives past ejections.
func (h *health) ok(now time.Time, pol ejectPolicy) {
	h.failures = 0
	if h.state == StateHealthy && h.ejections > 0 && now.Sub(h.healthySince) > pol.max {
		h.ejections = 0
	}
}

// fail counts one failure, and ejects a healthy node at pol.after in a
// row: it returns how long for, or 0 when this failure ejects nothing.
func (h *health) fail(now time.Time, pol ejectPolicy) time.Duration {
	h.failures++
	if h.state != StateHealthy || h.failures < pol.after {
		return 0
	}
	h.ejections++
	d := pol.base << (h.ejections - 1)
	if d > pol.max || d <= 0 {
		d = pol.max
	}
	h.state, h.ejectedUntil = StateEjected, now.Add(d)
	return d
}

// readmit re-admits an ejected node whose time is up, on a passing check;
// it reports whether it did.
func (h *health) readmit(now time.Time) bool {
	if h.state != StateEjected || now.Before(h.ejectedUntil) {
		return false
	}
	h.state, h.failures, h.healthySince = StateHealthy, 0, now
	return true
}
