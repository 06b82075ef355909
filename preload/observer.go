package preload

import (
	"strings"
	"time"
)

// Observer hears about refs calls, for metrics and status pages. Both
// methods are called in the request's goroutine and must not block.
type Observer interface {
	// CallStarted is called for each admitted call, just before
	// Sessions.Begin.
	CallStarted(Call)
	// CallFinished is called once for every POST to RefsPath that gets
	// past the method check: admitted calls when they end, and calls
	// Kitsune refused itself (bad request, rate limited, no node).
	CallFinished(CallResult)
}

// CallResult is how one refs call ended.
type CallResult struct {
	// Call is what was asked. For a refused call only what was known by
	// then is set (Root is undefined for a bad request); Node is set only
	// for admitted calls.
	Call Call
	// Admitted is whether the call got past the limits and to a node (and
	// so had a CallStarted).
	Admitted bool
	// Outcome is one of the Outcome constants: a bounded set, fit for a
	// metric label.
	Outcome string
	// Status is the HTTP status sent to the caller: the node's, or
	// Kitsune's own refusal; 0 when the caller left before any.
	Status int
	// Duration is from the request's arrival to the end of the answer.
	Duration time.Duration
}

// Outcomes of a refs call.
const (
	OutcomeOK          = "ok"           // the node's 200 answer relayed to the end
	OutcomeStreamError = "stream_error" // relayed, ending with an X-Stream-Error from the node
	OutcomeNodeError   = "node_error"   // the node answered with an error status
	OutcomeNodeLost    = "node_lost"    // the node's answer broke off
	OutcomeUnreachable = "unreachable"  // the node could not be reached (502)
	OutcomeTimeout     = "timeout"      // Kitsune's --preload-timeout ended it
	OutcomeShutdown    = "shutdown"     // Kitsune shutting down ended it
	OutcomeClientGone  = "client_gone"  // the caller went away
	OutcomeBadRequest  = "bad_request"  // refused: 400
	OutcomeRateLimited = "rate_limited" // refused: 429, past the per-IP limit
	OutcomeNoNode      = "no_node"      // refused: 503, no node usable
)

// outcomeOf maps forward's word for the log to an Outcome.
func outcomeOf(word string) string {
	switch {
	case word == "done":
		return OutcomeOK
	case word == "done with stream error":
		return OutcomeStreamError
	case strings.HasPrefix(word, "node answered "):
		return OutcomeNodeError
	case word == "node lost":
		return OutcomeNodeLost
	case word == "timeout" || word == "timeout before answer":
		return OutcomeTimeout
	case word == "shutdown":
		return OutcomeShutdown
	case word == "client gone":
		return OutcomeClientGone
	}
	return OutcomeUnreachable // "node unreachable", "bad node URL"
}
