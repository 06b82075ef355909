package bitswap

import (
	"bytes"
	"testing"

	format "github.com/ipfs/go-ipld-format"
	"github.com/ipld/go-ipld-prime/codec/dagcbor"
	"github.com/ipld/go-ipld-prime/codec/dagjson"
	"github.com/ipld/go-ipld-prime/node/basicnode"

	"github.com/ipfs/boxo/ipld/merkledag"
	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"
)

func sum(t *testing.T, codec uint64, data []byte) cid.Cid {
	t.Helper()
	c, err := cid.Prefix{Version: 1, Codec: codec, MhType: multihash.SHA2_256, MhLength: -1}.Sum(data)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLinks(t *testing.T) {
	leafA := sum(t, cid.Raw, []byte("a"))
	leafB := sum(t, cid.Raw, []byte("b"))

	t.Run("raw has none", func(t *testing.T) {
		got, err := Links(leafA, []byte("a"))
		if err != nil || len(got) != 0 {
			t.Fatalf("%v %v", got, err)
		}
	})
	t.Run("dag-pb", func(t *testing.T) {
		n := merkledag.NodeWithData(nil)
		_ = n.AddRawLink("x", mustLink(leafA))
		_ = n.AddRawLink("y", mustLink(leafB))
		got, err := Links(n.Cid(), n.RawData())
		if err != nil || len(got) != 2 || !got[0].Equals(leafA) || !got[1].Equals(leafB) {
			t.Fatalf("%v %v", got, err)
		}
	})
	t.Run("dag-json", func(t *testing.T) {
		data := []byte(`{"a":{"/":"` + leafA.String() + `"},"list":[1,{"/":"` + leafB.String() + `"}]}`)
		got, err := Links(sum(t, cid.DagJSON, data), data)
		if err != nil || len(got) != 2 {
			t.Fatalf("%v %v", got, err)
		}
	})
	t.Run("dag-cbor", func(t *testing.T) {
		nb := basicnode.Prototype.Any.NewBuilder()
		jsonData := []byte(`{"x":[{"/":"` + leafA.String() + `"}],"y":{"z":{"/":"` + leafB.String() + `"}}}`)
		if err := dagjson.Decode(nb, bytes.NewReader(jsonData)); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := dagcbor.Encode(nb.Build(), &buf); err != nil {
			t.Fatal(err)
		}
		got, err := Links(sum(t, cid.DagCBOR, buf.Bytes()), buf.Bytes())
		if err != nil || len(got) != 2 {
			t.Fatalf("%v %v", got, err)
		}
	})
	t.Run("garbage is an error", func(t *testing.T) {
		data := []byte("\xff\xfe not cbor")
		if _, err := Links(sum(t, cid.DagCBOR, data), data); err == nil {
			t.Fatal("no error for a broken dag-cbor block")
		}
	})
	t.Run("unknown codec is an error", func(t *testing.T) {
		if _, err := Links(sum(t, 0x300, []byte("x")), []byte("x")); err == nil {
			t.Fatal("no error for an unknown codec")
		}
	})
}

func mustLink(c cid.Cid) *format.Link { return &format.Link{Cid: c} }
