package bitswap

import (
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	pb "github.com/ipfs/boxo/bitswap/message/pb"
	blocks "github.com/ipfs/go-block-format"
)

// fill runs once in New and again in newCore, so a second pass must not
// change what the first decided: a "none" setting (negative) that the
// first pass turned into 0 used to become the default on the second.
func TestConfigFillIsIdempotent(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
	}{
		{"zero", Config{}},
		{"have blocks never", Config{MaxHaveBlockSize: -1}},
		{"recent blocks off", Config{RecentBlockBytes: -1}},
		{"set", Config{MaxHaveBlockSize: 4096, RecentBlockBytes: 1 << 20, CheckInterval: time.Second}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			once := tc.cfg
			once.fill()
			twice := once
			twice.fill()
			if once != twice {
				t.Fatalf("second fill changed the config:\nonce  %+v\ntwice %+v", once, twice)
			}
		})
	}
}

// A negative MaxHaveBlockSize means a want-have never gets the block,
// even a tiny one, once New and the core have both filled the config.
func TestNegativeMaxHaveBlockSizeSurvivesNew(t *testing.T) {
	cfg := Config{MaxHaveBlockSize: -1}
	cfg.fill() // as New does before it builds the core
	kit := newCoreKit(t, cfg, testNode(1))
	blk := blockOf(t, "tiny", 100)
	p := testPeer(1)
	kit.k.fromPeer(p, []bsmsg.Entry{entry(blk.Cid(), pb.Message_Wantlist_Have, true)}, false, kit.now)
	kit.k.fromNode(testNode(1), []blocks.Block{blk}, nil, nil, kit.advance(time.Millisecond))
	if len(kit.fx.blocks[p]) != 0 {
		t.Fatalf("want-have got the %d-byte block with MaxHaveBlockSize -1", len(blk.RawData()))
	}
	if len(kit.fx.presences[p]) != 1 || kit.fx.presences[p][0].Type != pb.Message_Have {
		t.Fatalf("want-have answered with %v, want one HAVE", kit.fx.presences[p])
	}
}
