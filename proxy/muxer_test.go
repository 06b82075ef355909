package proxy

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
)

// countingConn counts the writes that reach the raw connection carrying
// data: one per Noise message.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	// A frame with no data (a window update, a stream's opening) is
	// 30 bytes on the wire: the 12-byte header, Noise's 2-byte length
	// and 16-byte tag.
	if len(b) > 30 {
		c.writes.Add(1)
	}
	return c.Conn.Write(b)
}

// noiseMessagesFor writes n bytes on a stream of a yamux session built by
// mux over Noise over a pipe, and counts the Noise messages it took.
func noiseMessagesFor(t *testing.T, mux network.Multiplexer, n int) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := func() (crypto.PrivKey, peer.ID) {
		k, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return k, id
	}
	sk, _ := key()
	ck, cid := key()
	srvRaw, cliRaw := net.Pipe()
	counted := &countingConn{Conn: srvRaw}
	t.Cleanup(func() { _ = srvRaw.Close(); _ = cliRaw.Close() })
	st, err := noise.New(noise.ID, sk, nil)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := noise.New(noise.ID, ck, nil)
	if err != nil {
		t.Fatal(err)
	}
	type secured struct {
		c   net.Conn
		err error
	}
	cliSec := make(chan secured, 1)
	go func() {
		c, err := ct.SecureInbound(ctx, cliRaw, "")
		cliSec <- secured{c, err}
	}()
	srv, err := st.SecureOutbound(ctx, counted, cid)
	if err != nil {
		t.Fatal(err)
	}
	cs := <-cliSec
	if cs.err != nil {
		t.Fatal(cs.err)
	}
	srvMux, err := mux.NewConn(srv, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	cliMux, err := yamux.DefaultTransport.NewConn(cs.c, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srvMux.Close(); _ = cliMux.Close() })

	first, got := make(chan error, 1), make(chan error, 1)
	go func() {
		s, err := cliMux.AcceptStream()
		if err == nil {
			_, err = io.ReadFull(s, make([]byte, 1))
		}
		first <- err
		if err == nil {
			_, err = io.CopyN(io.Discard, s, int64(n-1))
		}
		got <- err
	}()
	s, err := srvMux.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The stream opens with a byte of its own, read before counting.
	if _, err := s.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	before := counted.writes.Load()
	if _, err := s.Write(make([]byte, n-1)); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	_ = s.(network.MuxedStream).Reset()
	return counted.writes.Load() - before
}

// The front host's yamux frames each fit one Noise message; go-yamux's
// default ones take two.
func TestFrontFramesAreOneNoiseMessage(t *testing.T) {
	const frames = 3
	if got := noiseMessagesFor(t, frontMuxer(), 1+frames*FrontFrameData); got != frames {
		t.Errorf("front muxer: %d frames of data took %d Noise messages", frames, got)
	}
	if got := noiseMessagesFor(t, yamux.DefaultTransport, 1+frames*(64<<10-yamuxHeader)); got != 2*frames {
		t.Errorf("default muxer: %d frames of data took %d Noise messages, expected %d (the test's premise changed)", frames, got, 2*frames)
	}
}
