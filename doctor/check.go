// Package doctor checks whether the Kubo nodes of a fleet are set up as
// Kitsune needs them. Gather reads what a node says about itself (RPC API,
// a TCP dial of its swarm addresses, its gateway); Check turns those facts
// into one Result per check, each with the exact `ipfs config` command
// that fixes a problem. Check is pure, so every rule is table-tested;
// nothing here ever changes a node.
package doctor

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// Status is a check's outcome.
type Status int

const (
	OK Status = iota
	Warn
	Fail
)

func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Warn:
		return "warn"
	}
	return "fail"
}

// MarshalText makes a Status "ok", "warn" or "fail" in JSON.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads what MarshalText writes, for tools reading --json.
func (s *Status) UnmarshalText(b []byte) error {
	for _, v := range []Status{OK, Warn, Fail} {
		if string(b) == v.String() {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("doctor: unknown status %q", b)
}

// Result is one check of one node.
type Result struct {
	Node   string `json:"node"`
	Check  string `json:"check"`
	Status Status `json:"status"`
	Reason string `json:"reason"`
	// Fix is the command that repairs a warn or fail: an `ipfs config`
	// command to run on the node (then restart it), or what to do when no
	// config key can help.
	Fix string `json:"fix,omitempty"`
}

// Kitsune is what doctor knows of the Kitsune in front of the fleet.
type Kitsune struct {
	// BackID is the back host's peer ID, read from the key file's .back
	// companion; empty with BackErr saying why when it cannot be read.
	BackID  string
	BackErr string
}

// Facts are what one node told us, gathered by Gather.
type Facts struct {
	URL     string // the node's RPC API
	RPCErr  string // non-empty: the RPC API did not answer; nothing else is known
	Version string // Kubo's version, e.g. 0.41.0
	PeerID  string
	// Addrs are the swarm addresses /api/v0/id announces.
	Addrs []string
	// Listen are the node's listen addresses (/api/v0/swarm/addrs/listen).
	Listen []string
	// Dials are the TCP dials of those addresses from here.
	Dials []Dial
	// LocalIP is the address this host reaches the node from: Kitsune's
	// address as the node sees it when doctor runs beside Kitsune.
	LocalIP   string
	Config    *Config
	ConfigErr string
	// Gateway is the URL the node's gateway was probed at ("" when the
	// node runs none) and GatewayErr what went wrong ("" when it served).
	Gateway    string
	GatewayErr string
}

// Dial is one swarm address tried.
type Dial struct {
	Addr string `json:"addr"`
	Err  string `json:"err,omitempty"`
}

// Config is the part of a Kubo config (`ipfs config show`) Kitsune
// depends on. Pointers are nil when the key is unset (Kubo's default).
type Config struct {
	Addresses struct {
		Gateway    Strings
		NoAnnounce []string
	}
	Swarm struct {
		AddrFilters []string
		ResourceMgr struct {
			Enabled   *bool
			Allowlist []string
		}
	}
	Peering struct {
		Peers []struct {
			ID    string
			Addrs []string
		}
	}
	Internal struct {
		Bitswap *struct {
			MaxOutstandingBytesPerPeer *int64
			BroadcastControl           *struct {
				Enable      *bool
				PeeredPeers *bool
			}
		}
	}
	Bitswap struct {
		Libp2pEnabled *bool
		ServerEnabled *bool
	}
	Gateway struct {
		ExposeRoutingAPI *bool
	}
	Routing struct {
		Type *string
	}
	Provide struct {
		Enabled *bool
	}
}

// Strings is Kubo's string-or-list config value.
type Strings []string

func (s *Strings) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = Strings{one}
		if one == "" {
			*s = nil
		}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*s = many
	return nil
}

// RecommendedOutstandingBytes is what doctor suggests for
// Internal.Bitswap.MaxOutstandingBytesPerPeer; below MinOutstandingBytes
// it warns. Kubo's default is 1 MiB.
const (
	RecommendedOutstandingBytes = 16 << 20
	MinOutstandingBytes         = 4 << 20
	kuboDefaultOutstandingBytes = 1 << 20
)

// OldestTestedKubo is the oldest Kubo release Kitsune's tests run.
const OldestTestedKubo = "0.41.0"

// Check turns one node's facts into results, in a fixed order.
func Check(k Kitsune, f Facts) []Result {
	var out []Result
	add := func(check string, s Status, reason, fix string) {
		out = append(out, Result{Node: f.URL, Check: check, Status: s, Reason: reason, Fix: fix})
	}
	if f.RPCErr != "" {
		add("rpc", Fail, "RPC API unreachable from here: "+f.RPCErr+"; Kitsune learns the node's peer ID and addresses through it",
			"start the daemon, and make Addresses.API listen where Kitsune can reach it (e.g. ipfs config Addresses.API /ip4/0.0.0.0/tcp/5001, firewalled from the internet)")
		return out
	}
	add("rpc", OK, "RPC API answers", "")

	if older(f.Version, OldestTestedKubo) {
		add("version", Warn, fmt.Sprintf("Kubo %s is older than the oldest release Kitsune is tested with (%s)", f.Version, OldestTestedKubo), "upgrade Kubo")
	} else {
		add("version", OK, "Kubo "+f.Version, "")
	}

	c := f.Config
	out = append(out, checkSwarm(f, c)...)
	if c == nil {
		add("config", Fail, "cannot read the node's config (/api/v0/config/show): "+f.ConfigErr, "check the RPC API allows config/show")
		return out
	}
	if r, ok := checkAddrFilters(f, c); ok {
		out = append(out, r)
	}
	out = append(out, checkBitswapServer(f, c))
	out = append(out, checkIdentityRows(k, f, c)...)
	out = append(out, checkOutstanding(f, c))
	out = append(out, checkBroadcast(k, f, c))
	out = append(out, checkRoutingAndProvide(f, c)...)
	out = append(out, checkGateway(f, c)...)
	return out
}

// Failed reports whether any result failed: doctor's exit status.
func Failed(rs []Result) bool {
	return slices.ContainsFunc(rs, func(r Result) bool { return r.Status == Fail })
}

func checkSwarm(f Facts, c *Config) []Result {
	r := Result{Node: f.URL, Check: "swarm"}
	if len(f.Addrs) == 0 {
		r.Status = Fail
		r.Reason = "/api/v0/id lists no swarm address, so Kitsune has nothing to dial"
		if c != nil && len(c.Addresses.NoAnnounce) > 0 {
			r.Reason += " (Addresses.NoAnnounce hides them; Kubo's server profile puts loopback and private ranges there)"
			r.Fix = "ipfs config --json Addresses.NoAnnounce " + jsonList(keepNoAnnounce(f, c.Addresses.NoAnnounce))
		} else {
			r.Fix = "make the node listen on a reachable address: ipfs config --json Addresses.Swarm '[\"/ip4/0.0.0.0/tcp/4001\"]'"
		}
		return []Result{r}
	}
	var okAddrs, bad []string
	for _, d := range f.Dials {
		if d.Err == "" {
			okAddrs = append(okAddrs, d.Addr)
		} else {
			bad = append(bad, d.Addr+": "+d.Err)
		}
	}
	switch {
	case len(okAddrs) > 0:
		r.Status, r.Reason = OK, "TCP connect to "+strings.Join(okAddrs, ", ")
	case len(f.Dials) == 0:
		r.Status = Warn
		r.Reason = "no TCP swarm address to try (" + strings.Join(f.Addrs, ", ") + "); Kitsune prefers TCP to its fleet"
		r.Fix = "ipfs config --json Addresses.Swarm '[\"/ip4/0.0.0.0/tcp/4001\",\"/ip4/0.0.0.0/udp/4001/quic-v1\"]'"
	default:
		r.Status = Fail
		r.Reason = "no swarm address accepts a TCP connection from here: " + strings.Join(bad, "; ")
		r.Fix = "open the swarm port to Kitsune's host (firewall), or listen on a reachable interface via Addresses.Swarm"
	}
	return []Result{r}
}

// keepNoAnnounce drops the NoAnnounce entries that hide the address
// Kitsune would dial: on the RPC API's host when the node listens there,
// else any listen address.
func keepNoAnnounce(f Facts, na []string) []string {
	var ips []netip.Addr
	for _, l := range f.Listen {
		if m, err := ma.NewMultiaddr(l); err == nil {
			if ip, err := manet.ToIP(m); err == nil {
				if a, ok := netip.AddrFromSlice(ip); ok {
					ips = append(ips, a.Unmap())
				}
			}
		}
	}
	if u, err := url.Parse(f.URL); err == nil {
		if h, err := netip.ParseAddr(u.Hostname()); err == nil && slices.Contains(ips, h) {
			ips = []netip.Addr{h}
		}
	}
	var keep []string
	for _, e := range na {
		if !slices.ContainsFunc(ips, func(ip netip.Addr) bool { return filterContains(e, ip) }) {
			keep = append(keep, e)
		}
	}
	return keep
}

// checkAddrFilters finds the filters that refuse Kitsune's address. Not
// reported when that address is unknown.
func checkAddrFilters(f Facts, c *Config) (Result, bool) {
	r := Result{Node: f.URL, Check: "addr-filters"}
	ip, err := netip.ParseAddr(f.LocalIP)
	if err != nil {
		return r, false
	}
	var hit, keep []string
	for _, s := range c.Swarm.AddrFilters {
		if filterContains(s, ip) {
			hit = append(hit, s)
		} else {
			keep = append(keep, s)
		}
	}
	if len(hit) == 0 {
		r.Status, r.Reason = OK, fmt.Sprintf("Swarm.AddrFilters lets %s (Kitsune's address as the node sees it) in", ip)
		return r, true
	}
	r.Status = Fail
	r.Reason = fmt.Sprintf("Swarm.AddrFilters %s refuses connections from %s, Kitsune's address (Kubo's server profile filters loopback and private ranges)", strings.Join(hit, ", "), ip)
	r.Fix = "ipfs config --json Swarm.AddrFilters " + jsonList(keep)
	return r, true
}

// filterContains reads an AddrFilters entry (/ip4/10.0.0.0/ipcidr/8).
func filterContains(filter string, ip netip.Addr) bool {
	m, err := ma.NewMultiaddr(filter)
	if err != nil {
		return false
	}
	var addr, bits string
	ma.ForEach(m, func(c ma.Component) bool {
		switch c.Protocol().Code {
		case ma.P_IP4, ma.P_IP6:
			addr = c.Value()
		case ma.P_IPCIDR:
			bits = c.Value()
		}
		return true
	})
	if bits == "" {
		return addr == ip.String()
	}
	p, err := netip.ParsePrefix(addr + "/" + bits)
	return err == nil && p.Contains(ip)
}

func checkBitswapServer(f Facts, c *Config) Result {
	r := Result{Node: f.URL, Check: "bitswap-server", Status: OK, Reason: "the node answers Bitswap wants over libp2p"}
	if isFalse(c.Bitswap.Libp2pEnabled) {
		r.Status, r.Reason = Fail, "Bitswap.Libp2pEnabled is false: the node speaks no Bitswap over libp2p, which is all Kitsune relays"
		r.Fix = "ipfs config --json Bitswap.Libp2pEnabled true"
	} else if isFalse(c.Bitswap.ServerEnabled) {
		r.Status, r.Reason = Fail, "Bitswap.ServerEnabled is false: the node answers no wants, so it serves nothing through Kitsune"
		r.Fix = "ipfs config --json Bitswap.ServerEnabled true"
	}
	return r
}

// checkIdentityRows checks the back host's place in Peering.Peers and the
// resource manager's allowlist.
func checkIdentityRows(k Kitsune, f Facts, c *Config) []Result {
	peering := Result{Node: f.URL, Check: "peering"}
	allow := Result{Node: f.URL, Check: "allowlist"}
	if k.BackID == "" {
		for _, r := range []*Result{&peering, &allow} {
			r.Status = Warn
			r.Reason = "cannot check: " + k.BackErr
			r.Fix = "give doctor the -k key file Kitsune runs with (Kitsune creates <key>.back on its first start)"
		}
		return []Result{peering, allow}
	}

	var peers []map[string]any
	found := false
	for _, p := range c.Peering.Peers {
		found = found || p.ID == k.BackID
		e := map[string]any{"ID": p.ID}
		if len(p.Addrs) > 0 {
			e["Addrs"] = p.Addrs
		}
		peers = append(peers, e)
	}
	if found {
		peering.Status, peering.Reason = OK, "Peering.Peers lists the back host "+k.BackID
	} else {
		peering.Status = Warn
		peering.Reason = "Peering.Peers lacks the back host " + k.BackID + ": the node's connection manager may trim Kitsune's connection, and broadcast control may leave Kitsune out of the node's wants (preload reverse sessions)"
		peers = append(peers, map[string]any{"ID": k.BackID})
		peering.Fix = "ipfs config --json Peering.Peers " + shellJSON(peers)
	}

	if isFalse(c.Swarm.ResourceMgr.Enabled) {
		allow.Status, allow.Reason = OK, "the resource manager is off (Swarm.ResourceMgr.Enabled false): no limits to lift"
		return []Result{peering, allow}
	}
	ip, ipErr := netip.ParseAddr(f.LocalIP)
	for _, e := range c.Swarm.ResourceMgr.Allowlist {
		if allowlistCovers(e, ip, k.BackID) {
			allow.Status, allow.Reason = OK, "Swarm.ResourceMgr.Allowlist lets the back host in: "+e
			return []Result{peering, allow}
		}
	}
	allow.Status = Fail
	allow.Reason = "Swarm.ResourceMgr.Allowlist has no entry for the back host " + k.BackID
	if ipErr == nil {
		allow.Reason += " at " + ip.String()
	}
	allow.Reason += ": every client's wants share one peer's resource-manager limits on this node"
	entry := "/p2p/" + k.BackID
	if ipErr == nil {
		proto := "ip4"
		if ip.Is6() {
			proto = "ip6"
		}
		entry = "/" + proto + "/" + ip.String() + entry
	} else {
		entry = "/ip4/<Kitsune's IP>" + entry
	}
	allow.Fix = "ipfs config --json Swarm.ResourceMgr.Allowlist " + jsonList(append(slices.Clone(c.Swarm.ResourceMgr.Allowlist), entry))
	return []Result{peering, allow}
}

// allowlistCovers reads an allowlist entry as go-libp2p does: an IP or
// network, optionally restricted to one peer.
func allowlistCovers(entry string, ip netip.Addr, id string) bool {
	m, err := ma.NewMultiaddr(entry)
	if err != nil || !ip.IsValid() {
		return false
	}
	var addr, bits, p string
	ma.ForEach(m, func(c ma.Component) bool {
		switch c.Protocol().Code {
		case ma.P_IP4, ma.P_IP6:
			addr = c.Value()
		case ma.P_IPCIDR:
			bits = c.Value()
		case ma.P_P2P:
			p = c.Value()
		}
		return true
	})
	if addr == "" || (p != "" && p != id) {
		return false
	}
	if bits == "" {
		a, err := netip.ParseAddr(addr)
		return err == nil && a == ip
	}
	pre, err := netip.ParsePrefix(addr + "/" + bits)
	return err == nil && pre.Masked().Contains(ip)
}

func checkOutstanding(f Facts, c *Config) Result {
	r := Result{Node: f.URL, Check: "max-outstanding"}
	v := int64(kuboDefaultOutstandingBytes)
	set := false
	if b := c.Internal.Bitswap; b != nil && b.MaxOutstandingBytesPerPeer != nil {
		v, set = *b.MaxOutstandingBytesPerPeer, true
	}
	desc := fmt.Sprintf("Internal.Bitswap.MaxOutstandingBytesPerPeer is %s", humanBytes(v))
	if !set {
		desc += " (Kubo's default)"
	}
	if v >= MinOutstandingBytes {
		r.Status, r.Reason = OK, desc
		return r
	}
	r.Status = Warn
	r.Reason = desc + ": Kitsune is one peer carrying all its clients' wants, and the node sends one peer at most this much block data at a time, which caps what it streams to every client together"
	r.Fix = "ipfs config --json Internal.Bitswap.MaxOutstandingBytesPerPeer " + strconv.Itoa(RecommendedOutstandingBytes)
	return r
}

// checkBroadcast: Kubo's broadcast control sends a node's want-haves only
// to peers likely to have the block, always to peered ones by default.
// Kitsune relays a node's wants to upstream peers only in a preload reverse
// session, and then it must hear them.
func checkBroadcast(k Kitsune, f Facts, c *Config) Result {
	r := Result{Node: f.URL, Check: "broadcast"}
	var enable, peered *bool
	if b := c.Internal.Bitswap; b != nil && b.BroadcastControl != nil {
		enable, peered = b.BroadcastControl.Enable, b.BroadcastControl.PeeredPeers
	}
	if isFalse(enable) {
		r.Status, r.Reason = OK, "broadcast control is off: the node sends its wants to every peer, Kitsune included"
		return r
	}
	isPeered := k.BackID != "" && slices.ContainsFunc(c.Peering.Peers, func(p struct {
		ID    string
		Addrs []string
	}) bool {
		return p.ID == k.BackID
	})
	if isPeered && !isTrue(peered) {
		r.Status, r.Reason = OK, "broadcast control always includes peered peers, and the back host is peered"
		return r
	}
	r.Status = Warn
	r.Reason = "broadcast control (Internal.Bitswap.BroadcastControl) may leave Kitsune out of the node's want broadcasts, which preload reverse sessions need"
	if isTrue(peered) {
		r.Reason += "; PeeredPeers is true, so peering does not help"
		r.Fix = "ipfs config --json Internal.Bitswap.BroadcastControl.PeeredPeers false"
	} else {
		r.Fix = "list the back host in Peering.Peers (the peering row's command)"
		if k.BackID == "" {
			r.Fix = "ipfs config --json Internal.Bitswap.BroadcastControl.Enable false"
		}
	}
	return r
}

func checkRoutingAndProvide(f Facts, c *Config) []Result {
	rt := Result{Node: f.URL, Check: "routing", Status: OK}
	typ := "auto"
	if c.Routing.Type != nil && *c.Routing.Type != "" {
		typ = *c.Routing.Type
	}
	rt.Reason = "Routing.Type " + typ + ": the node can find blocks outside the fleet for --fetch-misses"
	if typ == "none" {
		rt.Status = Warn
		rt.Reason = "Routing.Type none: the node cannot find providers, so Kitsune's miss fetches (--fetch-misses) only find what the node's connected peers have"
		rt.Fix = "ipfs config Routing.Type auto"
	}
	pv := Result{Node: f.URL, Check: "provide", Status: OK, Reason: "Provide.Enabled: the node announces what it holds, including DAGs preloaded through Kitsune"}
	if isFalse(c.Provide.Enabled) {
		pv.Status = Warn
		pv.Reason = "Provide.Enabled is false: DAGs preloaded through Kitsune stay unannounced, so only clients of Kitsune find them"
		pv.Fix = "ipfs config --json Provide.Enabled true"
	}
	return []Result{rt, pv}
}

// checkGateway: what an HTTP front in front of the fleet would use.
func checkGateway(f Facts, c *Config) []Result {
	gw := Result{Node: f.URL, Check: "gateway"}
	rv := Result{Node: f.URL, Check: "routing-v1"}
	fix := "ipfs config Addresses.Gateway /ip4/0.0.0.0/tcp/8080"
	switch {
	case len(c.Addresses.Gateway) == 0:
		gw.Status, gw.Reason, gw.Fix = Warn, "no gateway (Addresses.Gateway empty): nothing for an HTTP front (trustless gateway) to use", fix
	case f.GatewayErr != "":
		gw.Status, gw.Reason = Warn, "gateway at "+f.Gateway+" did not serve the empty block /ipfs/bafkqaaa: "+f.GatewayErr
		gw.Fix = "make Addresses.Gateway listen where Kitsune can reach it: " + fix
	default:
		gw.Status, gw.Reason = OK, "gateway serves at "+f.Gateway
	}
	switch {
	case gw.Status != OK:
		rv.Status, rv.Reason, rv.Fix = Warn, "no /routing/v1 without a reachable gateway", "see the gateway row"
	case isFalse(c.Gateway.ExposeRoutingAPI):
		rv.Status, rv.Reason = Warn, "Gateway.ExposeRoutingAPI is false: the gateway serves no /routing/v1 (delegated routing)"
		rv.Fix = "ipfs config --json Gateway.ExposeRoutingAPI true"
	default:
		rv.Status, rv.Reason = OK, "the gateway serves /routing/v1 (Gateway.ExposeRoutingAPI)"
	}
	return []Result{gw, rv}
}

func isFalse(b *bool) bool { return b != nil && !*b }
func isTrue(b *bool) bool  { return b != nil && *b }

// older compares dotted versions numerically (0.9.1 < 0.41.0); an
// unreadable version is not called older.
func older(v, than string) bool {
	parse := func(s string) []int {
		s, _, _ = strings.Cut(s, "-")
		var out []int
		for _, p := range strings.Split(s, ".") {
			n, err := strconv.Atoi(p)
			if err != nil {
				return nil
			}
			out = append(out, n)
		}
		return out
	}
	a, b := parse(v), parse(than)
	if a == nil || b == nil {
		return false
	}
	return slices.Compare(a, b) < 0
}

func humanBytes(v int64) string {
	switch {
	case v >= 1<<20 && v%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", v>>20)
	case v >= 1<<10 && v%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", v>>10)
	}
	return fmt.Sprintf("%d bytes", v)
}

// jsonList is a shell-quoted JSON list for `ipfs config --json`.
func jsonList(s []string) string {
	if s == nil {
		s = []string{}
	}
	return shellJSON(s)
}

func shellJSON(v any) string {
	b, _ := json.Marshal(v) // strings and maps of strings always marshal
	return "'" + strings.ReplaceAll(string(b), "'", `'\''`) + "'"
}
