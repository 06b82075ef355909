package proxy

import (
	"fmt"
	"io"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	"go.uber.org/zap"
)

// StartMDNS announces h on the local network with libp2p's mDNS service
// (service name _p2p._udp, as Kubo browses for by default), so Kubo nodes
// on the LAN find Kitsune and connect without any configuration. The
// announcement carries h's interface listen addresses as they are when it
// starts (browser transports are left out by go-libp2p).
//
// Kitsune only answers: peers it finds are logged, never dialled. It is a
// server, and dialling every mDNS speaker on the LAN would spend connection
// budget on peers that may never want anything; a Kubo node with mDNS on
// (Kubo's default) dials Kitsune itself.
func StartMDNS(h host.Host, log *zap.Logger) (io.Closer, error) {
	s := mdns.NewMdnsService(h, mdns.ServiceName, foundLogger{log})
	if err := s.Start(); err != nil {
		return nil, fmt.Errorf("mDNS: %w", err)
	}
	return s, nil
}

type foundLogger struct{ log *zap.Logger }

func (f foundLogger) HandlePeerFound(ai peer.AddrInfo) {
	f.log.Debug("mDNS: peer on the local network", zap.Stringer("peer", ai.ID), zap.Int("addrs", len(ai.Addrs)))
}
