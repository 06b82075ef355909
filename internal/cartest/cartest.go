// Package cartest reads and checks CAR streams in tests: every block
// against its CID, and that a DAG arrived whole.
package cartest

import (
	"errors"
	"fmt"
	"io"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/go-cid"
	carv2 "github.com/ipld/go-car/v2"
)

// Read reads a CAR, checks each block's bytes against its CID and that
// root is the CAR's only root, and returns the blocks in stream order.
func Read(r io.Reader, root cid.Cid) ([]cid.Cid, map[cid.Cid][]byte, error) {
	br, err := carv2.NewBlockReader(r)
	if err != nil {
		return nil, nil, fmt.Errorf("car header: %w", err)
	}
	if len(br.Roots) != 1 || !br.Roots[0].Equals(root) {
		return nil, nil, fmt.Errorf("car roots %v, want [%s]", br.Roots, root)
	}
	got := make(map[cid.Cid][]byte)
	var order []cid.Cid
	for {
		b, err := br.Next()
		if errors.Is(err, io.EOF) {
			return order, got, nil
		}
		if err != nil {
			return order, got, fmt.Errorf("car block %d: %w", len(order), err)
		}
		sum, err := b.Cid().Prefix().Sum(b.RawData())
		if err != nil || !sum.Equals(b.Cid()) {
			return order, got, fmt.Errorf("block %s: bytes hash to %s (%v)", b.Cid(), sum, err)
		}
		got[b.Cid()] = b.RawData()
		order = append(order, b.Cid())
	}
}

// Complete checks that blocks hold root and, through dag-pb links, every
// block below it; it returns how many blocks the DAG has.
func Complete(blocks map[cid.Cid][]byte, root cid.Cid) (int, error) {
	seen := map[cid.Cid]bool{}
	stack := []cid.Cid{root}
	for len(stack) > 0 {
		c := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[c] {
			continue
		}
		seen[c] = true
		data, ok := blocks[c]
		if !ok {
			return len(seen), fmt.Errorf("block %s missing", c)
		}
		if c.Prefix().Codec != cid.DagProtobuf {
			continue
		}
		n, err := merkledag.DecodeProtobuf(data)
		if err != nil {
			return len(seen), fmt.Errorf("block %s: %w", c, err)
		}
		for _, l := range n.Links() {
			stack = append(stack, l.Cid)
		}
	}
	return len(seen), nil
}
