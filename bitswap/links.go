package bitswap

import (
	"bytes"
	"fmt"

	"github.com/ipfs/go-cid"
	dagpb "github.com/ipld/go-codec-dagpb"
	"github.com/ipld/go-ipld-prime/codec"
	"github.com/ipld/go-ipld-prime/codec/dagcbor"
	"github.com/ipld/go-ipld-prime/codec/dagjson"
	"github.com/ipld/go-ipld-prime/datamodel"
	cidlink "github.com/ipld/go-ipld-prime/linking/cid"
	"github.com/ipld/go-ipld-prime/node/basicnode"
)

// maxLinkDepth bounds the walk through one decoded block, so a hostile
// deeply nested dag-cbor block cannot exhaust the stack.
const maxLinkDepth = 64

// Links returns the CIDs a block links to, for the codecs a preloaded DAG
// is made of: dag-pb and raw (UnixFS), dag-cbor and dag-json. Other codecs
// are an error: their links cannot be known, so nothing below them is
// authorised.
func Links(c cid.Cid, data []byte) ([]cid.Cid, error) {
	var (
		dec   codec.Decoder
		proto datamodel.NodePrototype = basicnode.Prototype.Any
	)
	switch c.Prefix().Codec {
	case cid.Raw:
		return nil, nil
	case cid.DagProtobuf:
		dec, proto = dagpb.Decode, dagpb.Type.PBNode
	case cid.DagCBOR:
		dec = dagcbor.Decode
	case cid.DagJSON:
		dec = dagjson.Decode
	default:
		return nil, fmt.Errorf("links of %s: codec 0x%x not supported", c, c.Prefix().Codec)
	}
	nb := proto.NewBuilder()
	if err := dec(nb, bytes.NewReader(data)); err != nil {
		return nil, fmt.Errorf("links of %s: %w", c, err)
	}
	var out []cid.Cid
	if err := collectLinks(nb.Build(), 0, &out); err != nil {
		return nil, fmt.Errorf("links of %s: %w", c, err)
	}
	return out, nil
}

func collectLinks(n datamodel.Node, depth int, out *[]cid.Cid) error {
	if depth > maxLinkDepth {
		return fmt.Errorf("nested deeper than %d", maxLinkDepth)
	}
	switch n.Kind() {
	case datamodel.Kind_Link:
		l, err := n.AsLink()
		if err != nil {
			return err
		}
		if cl, ok := l.(cidlink.Link); ok {
			*out = append(*out, cl.Cid)
		}
	case datamodel.Kind_Map:
		it := n.MapIterator()
		for !it.Done() {
			_, v, err := it.Next()
			if err := descend(v, err, depth, out); err != nil {
				return err
			}
		}
	case datamodel.Kind_List:
		it := n.ListIterator()
		for !it.Done() {
			_, v, err := it.Next()
			if err := descend(v, err, depth, out); err != nil {
				return err
			}
		}
	}
	return nil
}

// descend walks one map value or list element an iterator returned.
func descend(v datamodel.Node, iterErr error, depth int, out *[]cid.Cid) error {
	if iterErr != nil {
		return iterErr
	}
	return collectLinks(v, depth+1, out)
}
