package netns

import (
	"fmt"
	"strconv"
	"testing"
	"time"
)

// Shape is a link's bandwidth limit and queue, applied with tbf (this
// kernel has no netem; delay comes from Proxy).
type Shape struct {
	// Rate in bits per second, each direction.
	Rate int64
	// Queue is the longest a packet may wait in the queue before tbf drops
	// it (tbf's latency); a short queue loses packets under load as a
	// congested link does. Default 100 ms.
	Queue time.Duration
}

// Shape limits both ends of the link, each on its egress, so each
// direction gets s.Rate.
func (l Link) Shape(t testing.TB, s Shape) {
	t.Helper()
	for _, e := range []End{l.A, l.B} {
		e.Shape(t, s)
	}
}

// Shape limits the end's egress (what its namespace sends over the link).
func (e End) Shape(t testing.TB, s Shape) {
	t.Helper()
	if s.Rate <= 0 {
		t.Fatalf("netns: Shape.Rate must be positive, got %d", s.Rate)
	}
	if s.Queue <= 0 {
		s.Queue = 100 * time.Millisecond
	}
	// The bucket holds 10 ms at the rate, at least a few full-size frames:
	// a smaller one caps the rate below what was asked for.
	burst := max(s.Rate/8/100, 4*1514)
	e.NS.Exec("tc", "qdisc", "replace", "dev", e.Dev, "root", "tbf",
		"rate", strconv.FormatInt(s.Rate, 10)+"bit",
		"burst", strconv.FormatInt(burst, 10),
		"latency", fmt.Sprintf("%dms", s.Queue.Milliseconds()))
}

// Unshape removes the limit from both ends.
func (l Link) Unshape(t testing.TB) {
	t.Helper()
	for _, e := range []End{l.A, l.B} {
		e.NS.Exec("tc", "qdisc", "del", "dev", e.Dev, "root")
	}
}
