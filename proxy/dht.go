package proxy

import (
	"fmt"
	"io"
	"time"

	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p-kad-dht/dual"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	"github.com/libp2p/go-libp2p/core/host"
)

// DHT protocols Kitsune serves with --private-dht: Kubo's Routing.Type
// "dht" runs two Kademlia DHTs, a WAN one for peers with public addresses
// and a LAN one (its protocol has /lan) for peers with private addresses,
// so a private swarm on either kind of network can bootstrap to Kitsune.
const (
	DHTProtocol    = "/ipfs/kad/1.0.0"
	DHTLANProtocol = "/ipfs/lan/kad/1.0.0"
)

// Streams the DHT may hold open on the front host, in all and per peer
// (the resource manager's protocol limits, see Limits): a member's DHT
// reuses one stream per peer, so a peer holding many is misbehaving.
const (
	dhtStreams        = 1024
	dhtStreamsPerPeer = 16
)

// PrivateDHTConfig says what the private DHT keeps.
type PrivateDHTConfig struct {
	// AllRecords keeps provider and value (IPNS, public key) records in
	// memory too. Without it only peer records are served: what members
	// need to find each other's addresses. Their provider and value
	// records are accepted (Kubo's protocol requires it) and dropped.
	AllRecords bool
}

// StartPrivateDHT runs a Kademlia DHT server on the front host h, which
// must be on a private network: members that bootstrap to Kitsune find
// each other's addresses through it. It has no bootstrap peers of its
// own and runs only on h, never on the back host, so the downstream swarm
// never learns of it. Its routing table is bounded by the DHT itself (20
// peers per bucket); its streams by the resource manager's limits for its
// protocols.
func StartPrivateDHT(h host.Host, cfg PrivateDHTConfig) (io.Closer, error) {
	opts := []dht.Option{
		dht.Mode(dht.ModeServer),
		dht.BootstrapPeers(), // members come to Kitsune, not the other way
	}
	if cfg.AllRecords {
		store := dssync.MutexWrap(ds.NewMapDatastore())
		opts = append(opts, dht.Datastore(store), dht.ProviderDatastore(store))
	} else {
		// Kubo's DHT protocol must accept provider and value records, so
		// they are written where nothing stays: a null datastore, no read
		// cache in front of the provider store, and a validity so short
		// that the provider manager's write buffer (at most 256 records
		// before it flushes to the null store) never answers from them.
		null := ds.NewNullDatastore()
		opts = append(opts, dht.Datastore(null), dht.ProviderDatastore(null),
			dht.ProviderManagerOpts(records.Cache(noCache{}), records.ProvideValidity(time.Nanosecond)))
	}
	d, err := dual.New(h, dual.DHTOption(opts...))
	if err != nil {
		return nil, fmt.Errorf("private DHT: %w", err)
	}
	return d, nil
}

// noCache is an LRU cache that keeps nothing.
type noCache struct{}

func (noCache) Add(key, value any) bool        { return false }
func (noCache) Get(key any) (any, bool)        { return nil, false }
func (noCache) Contains(key any) bool          { return false }
func (noCache) Peek(key any) (any, bool)       { return nil, false }
func (noCache) Remove(key any) bool            { return false }
func (noCache) RemoveOldest() (any, any, bool) { return nil, nil, false }
func (noCache) GetOldest() (any, any, bool)    { return nil, nil, false }
func (noCache) Keys() []any                    { return nil }
func (noCache) Len() int                       { return 0 }
func (noCache) Purge()                         {}
func (noCache) Resize(int) int                 { return 0 }
