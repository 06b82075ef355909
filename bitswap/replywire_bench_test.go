package bitswap

import (
	"context"
	"io"
	"syscall"
	"testing"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/kitsune-lb/kitsune/proxy"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"
)

// BenchmarkReplyWrite writes a reply of four 256 KiB blocks (scenario 1's
// messages) from Kitsune's front host to a client over loopback (TCP,
// Noise, yamux), with boxo's encoder and with Kitsune's. The client reads
// and discards each message in the same process, so ns/op counts both
// ends; allocations are the writer's besides the reader's fixed few.
//
//	go test -run '^$' -bench ReplyWrite -benchmem -count 5 ./bitswap
func BenchmarkReplyWrite(b *testing.B) {
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		b.Fatal(err)
	}
	front, err := proxy.NewFront(proxy.FrontConfig{Key: key, ListenAddrs: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}, NoMplex: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = front.Close() })
	client, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = client.Close() })
	read := make(chan error, 1)
	client.SetStreamHandler(bsnet.ProtocolBitswap, func(s network.Stream) {
		_, err := io.Copy(io.Discard, s)
		_ = s.Close()
		read <- err
	})
	ctx := context.Background()
	if err := client.Connect(ctx, peer.AddrInfo{ID: front.ID(), Addrs: front.Addrs()}); err != nil {
		b.Fatal(err)
	}

	// A host with go-yamux's default frames, 17 bytes over a Noise message.
	plain, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = plain.Close() })
	if err := client.Connect(ctx, peer.AddrInfo{ID: plain.ID(), Addrs: plain.Addrs()}); err != nil {
		b.Fatal(err)
	}

	msg := bsmsg.New(false)
	size := 0
	for i := range 4 {
		data := make([]byte, 256<<10)
		data[0] = byte(i)
		blk, err := blocks.NewBlockWithCid(data, cid.NewCidV1(cid.Raw, mustHash(data, mh.SHA2_256)))
		if err != nil {
			b.Fatal(err)
		}
		msg.AddBlock(blk)
		size += len(data)
	}
	for _, enc := range []struct {
		name  string
		from  host.Host
		write func(network.Stream) error
	}{
		{"boxo/64KiB-frames", plain, func(s network.Stream) error { return msg.ToNetV1(s) }},
		{"kitsune/64KiB-frames", plain, func(s network.Stream) error {
			w, err := encodeReply(wirePartsOf(msg), true)
			if err != nil {
				return err
			}
			return w.writeTo(s, 64<<10-12)
		}},
		{"boxo/front-frames", front, func(s network.Stream) error { return msg.ToNetV1(s) }},
		{"kitsune/front-frames", front, func(s network.Stream) error { return writeReply(s, msg) }},
	} {
		b.Run(enc.name, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			cpu0 := processCPU(b)
			for b.Loop() {
				s, err := enc.from.NewStream(network.WithNoDial(ctx, "bench"), client.ID(), bsnet.ProtocolBitswap)
				if err != nil {
					b.Fatal(err)
				}
				if err := enc.write(s); err != nil {
					b.Fatal(err)
				}
				_ = s.CloseWrite()
				if err := <-read; err != nil {
					b.Fatal(err)
				}
				_ = s.Close()
			}
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the process's user and system CPU time so far: on a shared
// machine a steadier figure than the wall clock.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
