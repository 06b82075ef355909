package bench

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A failed fetch through Kitsune carries its relay counters, and only
// those; without a Kitsune the error is left as it is.
func TestRelaySummary(t *testing.T) {
	metrics := strings.Join([]string{
		`# HELP kitsune_relay_rewants_total Wants sent again.`,
		`kitsune_relay_rewants_total 3`,
		`kitsune_relay_replies_given_up_blocks_total 1`,
		`kitsune_relay_wants 2`,
		`kitsune_relay_wants_total{direction="in"} 256`,
		`kitsune_downstream_wants_in_flight{node="a"} 1`,
		`kitsune_greetings_total{outcome="ok"} 1`,
		`go_goroutines 40`,
	}, "\n")
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(metrics))
	}))
	defer ts.Close()
	srv := &server{name: "kitsune", admin: ts.URL}
	fetchErr := errors.New("1 of 256 blocks at depth 2 missing")
	err := withRelaySummary(context.Background(), fetchErr, srv)
	if !errors.Is(err, fetchErr) {
		t.Fatalf("the fetch's error is lost: %v", err)
	}
	for _, want := range []string{"kitsune_relay_rewants_total 3", "kitsune_relay_replies_given_up_blocks_total 1", "kitsune_relay_wants 2",
		`kitsune_relay_wants_total{direction="in"} 256`, `kitsune_downstream_wants_in_flight{node="a"} 1`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q missing from %v", want, err)
		}
	}
	for _, not := range []string{"HELP", "greetings", "go_goroutines"} {
		if strings.Contains(err.Error(), not) {
			t.Errorf("%q in %v", not, err)
		}
	}
	if err := withRelaySummary(context.Background(), fetchErr, nil); err != fetchErr {
		t.Fatalf("no Kitsune, yet the error changed: %v", err)
	}
	if s := relaySummary(context.Background(), &server{name: "kitsune"}); !strings.Contains(s, "unavailable") {
		t.Fatalf("no admin port: %q", s)
	}
}
