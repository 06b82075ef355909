package provide

import (
	"context"
	"errors"
	"fmt"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/dual"
	ddhtprovider "github.com/libp2p/go-libp2p-kad-dht/provider/dual"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
)

// DHTConfig configures the DHT Kitsune announces on.
type DHTConfig struct {
	// Bootstrap are the peers the DHT starts from: the public Amino
	// bootstrap list (dht.GetDefaultBootstrapPeerAddrInfos) in production.
	Bootstrap []peer.AddrInfo
	// LANLoopback keeps loopback addresses in the LAN DHT, as Kubo's
	// Routing.LoopbackAddressesOnLanDHT does: only for tests on one
	// machine, where every peer is on 127.0.0.1.
	LANLoopback bool
	// ReprovideInterval is the reprovide cycle; the Amino default (22h)
	// when zero.
	ReprovideInterval time.Duration
}

// DHT is a dual (WAN and LAN, as Kubo runs) Kademlia DHT in client mode on
// the front host, and the sweep provider over it.
type DHT struct {
	DHT      *dual.DHT
	Provider *ddhtprovider.SweepingProvider
}

// StartDHT joins the DHT on h as a client: Kitsune announces and looks
// up, but answers no DHT queries (it is a proxy, not a DHT server for the
// network). Nothing is persisted: the provider's keystore and schedule are
// in memory, because the keys are rebuilt from the fleet's pin lists at
// every start and a restart provides them all again.
func StartDHT(h host.Host, cfg DHTConfig) (*DHT, error) {
	if len(cfg.Bootstrap) == 0 {
		return nil, errors.New("provide: the DHT needs bootstrap peers")
	}
	// Only the provider's own local records land here (dht.Provide of the
	// announced keys), so it is bounded by the key set.
	store := dssync.MutexWrap(ds.NewMapDatastore())
	common := []dht.Option{
		dht.Mode(dht.ModeClient),
		dht.BootstrapPeers(cfg.Bootstrap...),
		dht.Datastore(store),
	}
	var lan []dht.Option
	if cfg.LANLoopback {
		lan = append(lan, dht.AddressFilter(nil))
	}
	d, err := dual.New(h, dual.DHTOption(common...), dual.LanDHTOption(lan...))
	if err != nil {
		return nil, fmt.Errorf("provide: DHT: %w", err)
	}
	var opts []ddhtprovider.Option
	if cfg.ReprovideInterval > 0 {
		opts = append(opts, ddhtprovider.WithReprovideInterval(cfg.ReprovideInterval))
	}
	// As Kubo sets them: an hour at most past the cycle, and the online
	// check once a minute.
	opts = append(opts, ddhtprovider.WithMaxReprovideDelay(time.Hour),
		ddhtprovider.WithConnectivityCheckOnlineInterval(time.Minute),
		ddhtprovider.WithLoggerName("kitsune/provider"))
	p, err := ddhtprovider.New(d, opts...)
	if err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("provide: sweep provider: %w", err)
	}
	if err := d.Bootstrap(context.Background()); err != nil {
		_ = p.Close()
		_ = d.Close()
		return nil, fmt.Errorf("provide: DHT bootstrap: %w", err)
	}
	return &DHT{DHT: d, Provider: p}, nil
}

// Close stops the provider, then the DHT.
func (d *DHT) Close() error {
	return errors.Join(d.Provider.Close(), d.DHT.Close())
}
