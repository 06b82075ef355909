package bitswap

import "testing"

func TestStatsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    Stats
		want int
	}{
		{"nothing", Stats{}, 0},
		{"wants, less those every node refused", Stats{Wants: 5, Refused: 2}, 3},
		{"only refused wants, and the fleet's", Stats{Wants: 2, Refused: 2, ReverseWants: 4}, 4},
		{"more refused than wants counts none", Stats{Wants: 1, Refused: 3}, 0},
		{"replies being written, every want answered", Stats{ReplyBytes: 3 << 20, ReplyStreams: 2}, 2},
		{"blocks waiting for a message", Stats{ReplyBytes: 256 << 10}, 1},
		{"a presence on its way (no block bytes)", Stats{ReplyStreams: 1}, 1},
		{"all of it", Stats{Wants: 3, Refused: 1, ReverseWants: 1, ReplyBytes: 1, ReplyStreams: 4}, 7},
		{"peers with idle outboxes are not work", Stats{ReplyPeers: 9, Peers: 9}, 0},
	} {
		if got := tc.s.InFlight(); got != tc.want {
			t.Errorf("%s: InFlight(%+v) = %d, want %d", tc.name, tc.s, got, tc.want)
		}
	}
}
