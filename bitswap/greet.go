package bitswap

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	bsmsg "github.com/ipfs/boxo/bitswap/message"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"
	"go.uber.org/zap"
)

// Why greet: since Kubo 0.36 (boxo's broadcast reduction) a Bitswap client
// sends its broadcast wants only to peers that have sent it a block or a
// HAVE before, to peers with private or loopback addresses and to its
// Peering.Peers. A Kubo client across the internet that connects to
// Kitsune (by hand, a bootstrap list, routing) is none of these, so it never
// asks Kitsune for anything, and Kitsune has nothing to offer unasked.
// boxo marks a peer as a broadcast target on the first block or HAVE it
// receives from it (client.go, receiveBlocksFrom → MarkBroadcastTarget), so
// one true HAVE right after connecting is enough.
//
// A broadcast want goes out once (boxo's peerWantManager keeps a set of
// them), so only wants made after the HAVE arrived reach Kitsune; a want
// the client broadcast before it never comes. So the HAVE must be on the
// wire before the client can want anything. It is written inside the
// swarm's Connected notification, which go-libp2p runs before it accepts
// any inbound stream on the new connection: the HAVE is queued ahead of
// Kitsune's answer to the client's identify, and a client's host.Connect
// (`ipfs swarm connect`) returns only after that answer. Measured: a
// greeting sent after an event-bus notification instead lost that race to
// a Kubo 0.43.1 client that ran `cat` right after connecting.
//
// The HAVE must be true: it names a block the fleet holds, checked through
// a node's RPC API (CheckHolds), not assumed. It goes on a stream that
// speaks /ipfs/bitswap/1.2.0 only: a peer without that version (older ones
// have no block presences) refuses the stream and never reads the
// message.

// EmptyDirCID is the empty UnixFS directory, which every Kubo node holds
// (it is the root of a fresh MFS), in the CIDv0 form Kubo's clients use.
var EmptyDirCID = cid.MustParse("QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn")

// greetProtocol is the first Bitswap version with block presences.
const greetProtocol = protocol.ID("/ipfs/bitswap/1.2.0")

// GreetConfig configures a Greeter.
type GreetConfig struct {
	// CID is the block presented as HAVE; default EmptyDirCID.
	CID cid.Cid
	// CheckHolds reports whether the fleet holds c (a node's blockstore,
	// without fetching). Required.
	CheckHolds func(ctx context.Context, c cid.Cid) (bool, error)
	// Confirmed is how long a positive check stands; it is renewed at half
	// that, so peers never wait for one. Default 10 minutes.
	Confirmed time.Duration
	// Retry is how soon a failed check is tried again; default 5 s.
	Retry time.Duration
	// MaxWaiting caps the peers waiting for a check; default 4096.
	MaxWaiting int
	// SendTimeout bounds one greeting and one check; default 10 s.
	SendTimeout time.Duration
	// RetryFirst is how soon a greeting that failed is sent again; each
	// further failure doubles it, up to MaxRetries retries. Defaults 250 ms
	// and 5 (the last one about 8 s after the connection opened).
	RetryFirst time.Duration
	MaxRetries int
}

func (c *GreetConfig) fill() {
	if !c.CID.Defined() {
		c.CID = EmptyDirCID
	}
	orDefault(&c.Confirmed, 10*time.Minute)
	orDefault(&c.Retry, 5*time.Second)
	orDefault(&c.MaxWaiting, 4096)
	orDefault(&c.SendTimeout, 10*time.Second)
	orDefault(&c.RetryFirst, 250*time.Millisecond)
	orDefault(&c.MaxRetries, 5)
}

// GreetCounters are the greeter's cumulative totals.
type GreetCounters struct {
	Greeted  atomic.Uint64 // HAVEs the peer read, one per connected peer
	Failed   atomic.Uint64 // greetings that could not be sent (each attempt)
	Retried  atomic.Uint64 // greetings sent again after a failure
	GaveUp   atomic.Uint64 // peers left ungreeted after every retry failed
	Skipped  atomic.Uint64 // peers that refused Bitswap 1.2.0
	Checks   atomic.Uint64 // fleet checks made
	NotHeld  atomic.Uint64 // checks that found the block missing or failed
	Overflow atomic.Uint64 // peers not queued: too many waiting
}

// Greeter sends each newly connected upstream peer that speaks Bitswap
// 1.2.0 one HAVE for a block the fleet holds. Its decisions live in
// greetBook; Greeter feeds it the host's connection notifications and
// carries out what it says.
type Greeter struct {
	cfg    GreetConfig
	net    network.Network
	log    *zap.Logger
	notify *network.NotifyBundle

	mu   sync.Mutex
	book *greetBook
	// checked carries a check's result to Run, nodeUp a fleet change,
	// retry a greeting that failed (Run sets its timer).
	checked chan bool
	nodeUp  chan struct{}
	retry   chan struct{}
	// ctx ends the greetings in flight when Run returns.
	ctx    context.Context
	cancel context.CancelFunc

	counters GreetCounters
}

// NewGreeter builds a greeter for the front host h and starts listening
// to its connections at once, so no peer connecting before Run is missed
// (it waits for Run's first check). Run must follow.
func NewGreeter(cfg GreetConfig, h host.Host, log *zap.Logger) (*Greeter, error) {
	cfg.fill()
	if cfg.CheckHolds == nil {
		return nil, errors.New("greeter: no CheckHolds")
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Greeter{
		cfg: cfg, net: h.Network(), log: log,
		book:    newGreetBook(cfg),
		checked: make(chan bool, 1),
		nodeUp:  make(chan struct{}, 1),
		retry:   make(chan struct{}, 1),
		ctx:     ctx, cancel: cancel,
	}
	g.notify = &network.NotifyBundle{ConnectedF: g.connected, DisconnectedF: g.disconnected}
	g.net.Notify(g.notify)
	return g, nil
}

// Counters returns the greeter's counters.
func (g *Greeter) Counters() *GreetCounters { return &g.counters }

// NodeUp tells the greeter a fleet node became usable: a check that failed
// for want of a node to ask is made again at once, not after Retry, so
// peers connecting right after Kitsune's start do not wait.
func (g *Greeter) NodeUp() {
	select {
	case g.nodeUp <- struct{}{}:
	default: // one pending is enough
	}
}

// connected runs inside the swarm's notification, before the connection
// accepts inbound streams: the HAVE written here goes out before anything
// Kitsune answers on this connection. It must not block long.
func (g *Greeter) connected(_ network.Network, c network.Conn) {
	if c.Stat().Limited {
		return // a relayed connection: Bitswap clients do not use it
	}
	g.mu.Lock()
	acts := g.book.connected(c.RemotePeer(), time.Now())
	g.mu.Unlock()
	if len(acts.greet) == 0 {
		g.log.Debug("new peer waits for a fleet check", zap.Stringer("peer", c.RemotePeer()))
	}
	g.do(acts, c)
}

func (g *Greeter) disconnected(n network.Network, c network.Conn) {
	if p := c.RemotePeer(); n.Connectedness(p) != network.Connected {
		g.mu.Lock()
		g.book.gone(p)
		g.mu.Unlock()
	}
}

// do carries out acts; c, if not nil, is the connection that triggered
// them.
func (g *Greeter) do(acts greetActions, c network.Conn) {
	if acts.overflow {
		g.counters.Overflow.Add(1)
	}
	g.counters.Retried.Add(uint64(acts.retries))
	if acts.check {
		g.counters.Checks.Add(1)
		go func() {
			ctx, cancel := context.WithTimeout(g.ctx, g.cfg.SendTimeout)
			defer cancel()
			ok, err := g.cfg.CheckHolds(ctx, g.cfg.CID)
			if ok && err == nil {
				g.log.Debug("greeting block confirmed on the fleet", zap.Stringer("cid", g.cfg.CID))
			} else {
				g.counters.NotHeld.Add(1)
				g.log.Debug("greeting block not confirmed on the fleet", zap.Stringer("cid", g.cfg.CID), zap.Error(err))
			}
			select {
			case g.checked <- ok && err == nil:
			case <-g.ctx.Done():
			}
		}()
	}
	for _, p := range acts.greet {
		conn := c
		if conn == nil || conn.RemotePeer() != p {
			conn = g.conn(p)
		}
		if conn == nil {
			continue // left meanwhile
		}
		g.greet(conn)
	}
}

// conn picks an open, unlimited connection to p.
func (g *Greeter) conn(p peer.ID) network.Conn {
	for _, c := range g.net.ConnsToPeer(p) {
		if !c.Stat().Limited && !c.IsClosed() {
			return c
		}
	}
	return nil
}

// Run checks the fleet and greets peers that waited for a check until ctx
// ends, then stops listening. Call it once, in its own goroutine.
func (g *Greeter) Run(ctx context.Context) {
	defer func() {
		g.net.StopNotify(g.notify)
		g.cancel()
	}()
	tick := time.NewTicker(g.cfg.Retry)
	defer tick.Stop()
	// retryAt fires when the next failed greeting is due again.
	retryAt := time.NewTimer(time.Hour)
	defer retryAt.Stop()
	g.mu.Lock()
	acts := g.book.tick(time.Now())
	g.mu.Unlock()
	g.do(acts, nil)
	for {
		select {
		case <-ctx.Done():
			return
		case ok := <-g.checked:
			g.mu.Lock()
			acts = g.book.checked(ok, time.Now())
			g.mu.Unlock()
		case <-tick.C:
			g.mu.Lock()
			acts = g.book.tick(time.Now())
			g.mu.Unlock()
		case <-retryAt.C:
			g.mu.Lock()
			acts = g.book.tick(time.Now())
			g.mu.Unlock()
		case <-g.retry:
			acts = greetActions{}
		case <-g.nodeUp:
			g.mu.Lock()
			acts = g.book.nodeUp(time.Now())
			g.mu.Unlock()
		}
		g.do(acts, nil)
		g.mu.Lock()
		next := g.book.nextRetry(time.Now())
		g.mu.Unlock()
		if !next.IsZero() {
			retryAt.Reset(max(0, time.Until(next)))
		}
	}
}

// greet writes one HAVE on a new stream of c that speaks Bitswap 1.2.0
// only, negotiated lazily: the protocol header and the message leave
// together, with no negotiation round trip and no wait for identify (which
// host.NewStream would add). The answer is read in the background. A
// greeting that fails is sent again after a backoff while the peer stays
// connected (greetBook.failed): without it, a Kubo client off the LAN
// never sends Kitsune a want. A peer that refuses the protocol is not
// asked again.
func (g *Greeter) greet(c network.Conn) {
	p := c.RemotePeer()
	s, lc, err := g.write(c)
	if err != nil {
		g.done(p, err)
		return
	}
	go func() {
		// The peer either refuses the protocol (before reading any of the
		// message) or reads to the end and closes its side.
		_, err := io.Copy(io.Discard, io.LimitReader(lc, 1<<10))
		if err != nil {
			s.Reset()
		} else {
			err = s.Close()
		}
		g.done(p, err)
	}()
}

func (g *Greeter) write(c network.Conn) (network.Stream, io.ReadWriter, error) {
	ctx, cancel := context.WithTimeout(g.ctx, g.cfg.SendTimeout)
	defer cancel()
	s, err := c.NewStream(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := s.SetProtocol(greetProtocol); err != nil {
		s.Reset()
		return nil, nil, err
	}
	_ = s.SetDeadline(time.Now().Add(g.cfg.SendTimeout))
	lc := msmux.NewMSSelect(s, greetProtocol)
	msg := bsmsg.New(false)
	msg.AddHave(g.cfg.CID)
	if err := msg.ToNetV1(lc); err != nil {
		s.Reset()
		return nil, nil, err
	}
	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return nil, nil, err
	}
	return s, lc, nil
}

func (g *Greeter) done(p peer.ID, err error) {
	switch {
	case refused(err):
		g.mu.Lock()
		g.book.sent(p)
		g.mu.Unlock()
		g.counters.Skipped.Add(1)
		g.log.Debug("not greeted: no Bitswap 1.2.0", zap.Stringer("peer", p))
	case err != nil:
		g.counters.Failed.Add(1)
		g.mu.Lock()
		f := g.book.failed(p, time.Now())
		g.mu.Unlock()
		switch f {
		case greetRetrying:
			select {
			case g.retry <- struct{}{}:
			default: // Run will look at the book anyway
			}
		case greetGaveUp:
			g.counters.GaveUp.Add(1)
		}
		g.log.Debug("greeting failed", zap.Stringer("peer", p), zap.Stringer("then", f), zap.Error(err))
	default:
		// The book before the counter: whoever sees the count (tests,
		// the admin API) then finds the peer's retry entry gone.
		g.mu.Lock()
		g.book.sent(p)
		g.mu.Unlock()
		g.counters.Greeted.Add(1)
		g.log.Debug("greeted", zap.Stringer("peer", p), zap.Stringer("have", g.cfg.CID))
	}
}

// refused reports a peer refusing the protocol: multistream's "na", or a
// stream reset with go-libp2p's negotiation-failed code, which is how a
// go-libp2p peer answers a lazily negotiated stream it does not speak.
func refused(err error) bool {
	var se *network.StreamError
	return errors.Is(err, msmux.ErrNotSupported[protocol.ID]{}) ||
		(errors.As(err, &se) && se.ErrorCode == network.StreamProtocolNegotiationFailed)
}

// greetActions is what greetBook asks the greeter to do.
type greetActions struct {
	greet    []peer.ID
	retries  int  // how many of greet are sent again after a failure
	check    bool // confirm the fleet holds the block
	overflow bool // a peer was not queued
}

// greetFailure is what greetBook does with a greeting that failed.
type greetFailure int

const (
	greetRetrying  greetFailure = iota // sent again after a backoff
	greetGaveUp                        // retries used up, or too many retrying
	greetForgotten                     // the peer left meanwhile
)

func (f greetFailure) String() string {
	switch f {
	case greetRetrying:
		return "retry"
	case greetGaveUp:
		return "give up"
	default:
		return "peer gone"
	}
}

// greetRetry is a connected peer whose last greeting failed.
type greetRetry struct {
	failures int
	// due is when to greet it again; zero while that greeting is out.
	due time.Time
}

// greetBook decides whom to greet and when to check the fleet: each
// connected peer is greeted once (again after a failure, with a backoff,
// a bounded number of times), and only while a check that the fleet holds
// the block is fresh; checks are renewed before they expire, so peers
// normally never wait. Its maps hold connected peers only, at most
// maxWaiting waiting and as many retrying; gone forgets a peer.
type greetBook struct {
	confirmedFor, retry time.Duration
	maxWaiting          int
	retryFirst          time.Duration
	maxRetries          int

	greeted     map[peer.ID]struct{}
	waiting     map[peer.ID]struct{}
	retrying    map[peer.ID]*greetRetry
	checking    bool
	confirmed   bool
	confirmedAt time.Time
	failedAt    time.Time // of the last check that failed
}

// newGreetBook takes cfg's durations and bounds, defaults filled in.
func newGreetBook(cfg GreetConfig) *greetBook {
	cfg.fill()
	return &greetBook{
		confirmedFor: cfg.Confirmed, retry: cfg.Retry, maxWaiting: cfg.MaxWaiting,
		retryFirst: cfg.RetryFirst, maxRetries: cfg.MaxRetries,
		greeted: map[peer.ID]struct{}{}, waiting: map[peer.ID]struct{}{},
		retrying: map[peer.ID]*greetRetry{},
	}
}

func (b *greetBook) fresh(now time.Time) bool {
	return b.confirmed && now.Sub(b.confirmedAt) < b.confirmedFor
}

// connected is a new connection to p.
func (b *greetBook) connected(p peer.ID, now time.Time) greetActions {
	var a greetActions
	if _, ok := b.greeted[p]; ok {
		return a // greeted on an earlier connection still open
	}
	if b.fresh(now) {
		b.greeted[p] = struct{}{}
		a.greet = []peer.ID{p}
		return a
	}
	if _, ok := b.waiting[p]; !ok {
		if len(b.waiting) >= b.maxWaiting {
			a.overflow = true
		} else {
			b.waiting[p] = struct{}{}
		}
	}
	a.check = b.startCheck(now)
	return a
}

// due reports whether a check should start now: none running, and either
// the confirmation is half-way to expiry or, without one, the last failure
// is older than retry.
func (b *greetBook) due(now time.Time) bool {
	switch {
	case b.checking:
		return false
	case b.confirmed:
		return now.Sub(b.confirmedAt) >= b.confirmedFor/2
	default:
		return b.failedAt.IsZero() || now.Sub(b.failedAt) >= b.retry
	}
}

func (b *greetBook) startCheck(now time.Time) bool {
	if !b.due(now) {
		return false
	}
	b.checking = true
	return true
}

// checked is a check's result.
func (b *greetBook) checked(ok bool, now time.Time) greetActions {
	var a greetActions
	b.checking = false
	b.confirmed = ok
	if !ok {
		b.failedAt = now
		return a
	}
	b.confirmedAt, b.failedAt = now, time.Time{}
	for p := range b.waiting {
		b.greeted[p] = struct{}{}
		a.greet = append(a.greet, p)
	}
	clear(b.waiting)
	b.dueRetries(now, &a)
	return a
}

// tick starts a check when one is due, and sends again the failed
// greetings whose backoff is over (while a check is fresh: a HAVE is only
// ever sent for a block the fleet was seen to hold).
func (b *greetBook) tick(now time.Time) greetActions {
	a := greetActions{check: b.startCheck(now)}
	b.dueRetries(now, &a)
	return a
}

// dueRetries adds to a the failed greetings due again, if a check is
// fresh.
func (b *greetBook) dueRetries(now time.Time, a *greetActions) {
	if !b.fresh(now) {
		return
	}
	for p, r := range b.retrying {
		if !r.due.IsZero() && !now.Before(r.due) {
			r.due = time.Time{}
			a.greet = append(a.greet, p)
			a.retries++
		}
	}
}

// failed is a greeting to p that failed (not refused): p is greeted again
// after retryFirst, doubled at each further failure, until maxRetries
// retries have failed.
func (b *greetBook) failed(p peer.ID, now time.Time) greetFailure {
	if _, ok := b.greeted[p]; !ok {
		return greetForgotten
	}
	r := b.retrying[p]
	if r == nil {
		if len(b.retrying) >= b.maxWaiting {
			return greetGaveUp
		}
		r = &greetRetry{}
		b.retrying[p] = r
	}
	r.failures++
	if r.failures > b.maxRetries {
		delete(b.retrying, p)
		return greetGaveUp
	}
	r.due = now.Add(b.retryFirst << (r.failures - 1))
	return greetRetrying
}

// sent is a greeting to p that ended without failing (read, or refused).
func (b *greetBook) sent(p peer.ID) { delete(b.retrying, p) }

// nextRetry is when the earliest failed greeting is due again; zero if
// none is waiting, or none can go before a check confirms the block
// (checked sends those due by then).
func (b *greetBook) nextRetry(now time.Time) time.Time {
	var next time.Time
	if !b.fresh(now) {
		return next
	}
	for _, r := range b.retrying {
		if !r.due.IsZero() && (next.IsZero() || r.due.Before(next)) {
			next = r.due
		}
	}
	return next
}

// nodeUp is a fleet node becoming usable: unless a confirmation stands or
// a check runs, check now, whatever the retry delay.
func (b *greetBook) nodeUp(now time.Time) greetActions {
	if b.confirmed || b.checking {
		return greetActions{}
	}
	b.failedAt = time.Time{}
	return b.tick(now)
}

// gone is a peer with no connection left: a later connection is a new
// session for its Bitswap client (boxo forgets broadcast targets that
// disconnect), so it is greeted again.
func (b *greetBook) gone(p peer.ID) {
	delete(b.greeted, p)
	delete(b.waiting, p)
	delete(b.retrying, p)
}
