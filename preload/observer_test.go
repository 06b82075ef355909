package preload

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
)

type recObserver struct {
	mu       sync.Mutex
	started  []Call
	finished []CallResult
}

func (o *recObserver) CallStarted(c Call) {
	o.mu.Lock()
	o.started = append(o.started, c)
	o.mu.Unlock()
}

func (o *recObserver) CallFinished(r CallResult) {
	o.mu.Lock()
	o.finished = append(o.finished, r)
	o.mu.Unlock()
}

func (o *recObserver) results() (int, []CallResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.started), append([]CallResult(nil), o.finished...)
}

// The observer hears every refs call once, with an outcome from the
// bounded set, the status the caller got and the duration; refused calls
// are not "started".
func TestPreloadObserver(t *testing.T) {
	obs := &recObserver{}
	e := newEnv(t, func(c *Config) { c.Observer = obs })

	resp := e.refs(t, "arg="+e.root.String()+"&r=true")
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	wantError(t, e.refs(t, "arg=not-a-cid"), http.StatusBadRequest)
	e.kubo.setServe(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintln(w, `{"Message":"boom","Code":0,"Type":"error"}`)
	})
	resp = e.refs(t, "arg="+e.root.String())
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	// 404s and preflights are not refs calls.
	e.do(t, http.MethodPost, "/api/v0/cat?arg="+e.root.String(), nil)
	e.do(t, http.MethodOptions, RefsPath, map[string]string{"Origin": "https://example.org"})

	var started int
	var got []CallResult
	eventually(t, "three finished calls", func() bool {
		started, got = obs.results()
		return len(got) == 3
	})
	time.Sleep(50 * time.Millisecond)
	if started, got = obs.results(); started != 2 || len(got) != 3 {
		t.Fatalf("%d started, %d finished; want 2 and 3", started, len(got))
	}
	byOutcome := make(map[string]CallResult)
	for _, r := range got {
		byOutcome[r.Outcome] = r
	}
	ok := byOutcome[OutcomeOK]
	if !ok.Admitted || ok.Status != http.StatusOK || !ok.Call.Root.Equals(e.root) || ok.Call.Node.URL != e.kubo.URL ||
		ok.Call.Node.Peer != "node-a" || !ok.Call.Client.IsLoopback() || ok.Duration <= 0 {
		t.Errorf("ok call reported as %+v", ok)
	}
	if bad, found := byOutcome[OutcomeBadRequest]; !found || bad.Admitted || bad.Status != http.StatusBadRequest {
		t.Errorf("bad request reported as %+v (found %v)", bad, found)
	}
	if ne, found := byOutcome[OutcomeNodeError]; !found || !ne.Admitted || ne.Status != http.StatusInternalServerError {
		t.Errorf("node error reported as %+v (found %v)", ne, found)
	}
}

// A call refused for want of a node still reaches the observer, as
// no_node with its 503.
func TestPreloadObserverNoNode(t *testing.T) {
	obs := &recObserver{}
	e := newEnv(t, func(c *Config) {
		c.Observer = obs
		c.Chooser = ChooserFunc(func(cid.Cid) (string, bool) { return "", false })
	})
	wantError(t, e.refs(t, "arg="+e.root.String()), http.StatusServiceUnavailable)
	eventually(t, "a finished call", func() bool {
		_, got := obs.results()
		return len(got) == 1
	})
	started, got := obs.results()
	if r := got[0]; started != 0 || r.Admitted || r.Outcome != OutcomeNoNode || r.Status != http.StatusServiceUnavailable || !r.Call.Root.Equals(e.root) {
		t.Fatalf("%d started; result %+v", started, r)
	}
}

func TestOutcomeOf(t *testing.T) {
	for word, want := range map[string]string{
		"done": OutcomeOK, "done with stream error": OutcomeStreamError, "node answered 500 Internal Server Error": OutcomeNodeError,
		"node lost": OutcomeNodeLost, "timeout": OutcomeTimeout, "timeout before answer": OutcomeTimeout,
		"shutdown": OutcomeShutdown, "client gone": OutcomeClientGone, "node unreachable": OutcomeUnreachable,
		"bad node URL": OutcomeUnreachable,
	} {
		if got := outcomeOf(word); got != want {
			t.Errorf("outcomeOf(%q) = %q, want %q", word, got, want)
		}
	}
}
