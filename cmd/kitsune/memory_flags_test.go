package main

import (
	"strings"
	"testing"

	"github.com/kitsune-lb/kitsune/bitswap"
)

// --recent-block-bytes reaches the relay: the default as given, 0 as
// "none" (the relay's own 0 would mean its default), a negative refused.
func TestRecentBlockBytesFlag(t *testing.T) {
	for _, tc := range []struct {
		set  int
		want int
		err  string
	}{
		{set: 33554432, want: 33554432},
		{set: 1 << 20, want: 1 << 20},
		{set: 0, want: -1},
		{set: -5, err: "--recent-block-bytes"},
	} {
		cfg, err := configWithRelayFlag(t, func(c *runCmd) *int { return &c.RecentBlockBytes }, bitswap.DefaultRecentBlockBytes, tc.set)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%d: error %v, want one naming %s", tc.set, err, tc.err)
			}
		case err != nil:
			t.Errorf("%d: %v", tc.set, err)
		case cfg.Relay.RecentBlockBytes != tc.want:
			t.Errorf("%d: relay gets %d, want %d", tc.set, cfg.Relay.RecentBlockBytes, tc.want)
		}
	}
}

// --reply-memory reaches the relay, its default the relay's; 0 or a
// negative is refused (every reply is bounded).
func TestReplyMemoryFlag(t *testing.T) {
	for _, tc := range []struct {
		set int
		err bool
	}{
		{set: bitswap.DefaultReplyMemoryBytes},
		{set: 64 << 20},
		{set: 0, err: true},
		{set: -1, err: true},
	} {
		cfg, err := configWithRelayFlag(t, func(c *runCmd) *int { return &c.ReplyMemory }, bitswap.DefaultReplyMemoryBytes, tc.set)
		switch {
		case tc.err:
			if err == nil || !strings.Contains(err.Error(), "--reply-memory") {
				t.Errorf("%d: error %v, want one naming --reply-memory", tc.set, err)
			}
		case err != nil:
			t.Errorf("%d: %v", tc.set, err)
		case cfg.Relay.ReplyMemoryBytes != tc.set:
			t.Errorf("%d: relay gets %d", tc.set, cfg.Relay.ReplyMemoryBytes)
		}
	}
}

// configWithRelayFlag checks that one of the relay's memory flags defaults
// to the relay's own default, sets it and builds the configuration.
func configWithRelayFlag(t *testing.T, flag func(*runCmd) *int, relayDefault, set int) (config, error) {
	t.Helper()
	c := defaultRunCmd(t)
	if got := *flag(c); got != relayDefault {
		t.Fatalf("flag default %d, relay default %d", got, relayDefault)
	}
	c.Downstream = []string{"/ip4/127.0.0.1/tcp/5001"}
	*flag(c) = set
	return c.config()
}
