package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/transport"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-libp2p/p2p/transport/websocket"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	proxyproto "github.com/pires/go-proxyproto"
)

// ProxyProtocol makes the TCP and WebSocket listeners read a PROXY protocol
// header (v1 or v2, as HAProxy's send-proxy-v2 writes) from the balancers
// in From, so that everything above the listener (the resource manager's
// per-IP limits, the connection rate limit, metrics, geolocation, the
// preload's caller matching) sees the client's address instead of the
// balancer's.
//
// A connection from an address in From must open with a header and is
// dropped if none arrives within HeaderTimeout; a connection from anywhere
// else may not send one (it is refused if it does) and is served as usual.
// QUIC, WebTransport and WebRTC-direct run over UDP and are not covered.
type ProxyProtocol struct {
	From []netip.Prefix
	// HeaderTimeout bounds the wait for a balancer's header; zero means
	// DefaultProxyHeaderTimeout.
	HeaderTimeout time.Duration
}

const (
	// DefaultProxyHeaderTimeout: a balancer writes the header with its
	// first packet, so a second is already generous.
	DefaultProxyHeaderTimeout = 5 * time.Second
	// maxPendingHeaders bounds the connections whose header is being read
	// at once; beyond it the listener stops accepting until one is done,
	// as the kernel's backlog does for a slow accept loop.
	maxPendingHeaders = 256
)

func (p *ProxyProtocol) enabled() bool { return p != nil && len(p.From) > 0 }

func (p *ProxyProtocol) listed(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, pr := range p.From {
		if pr.Contains(ip) {
			return true
		}
	}
	return false
}

// go-libp2p has no hook for the raw listener (go-libp2p issue 1065), but
// both its TCP and its WebSocket transport hand the listener they open,
// before any byte is read, to the upgrader they were built with
// (Upgrader.GateMaListener), which applies the resource manager and the
// connection gater to each accepted connection. Building the two
// transports with an upgrader that wraps that listener first is the hook:
// every check above it sees the addresses the header names.
type proxyUpgrader struct {
	transport.Upgrader
	pp *ProxyProtocol
}

func (u proxyUpgrader) GateMaListener(l manet.Listener) transport.GatedMaListener {
	return u.Upgrader.GateMaListener(newProxyListener(l, u.pp))
}

// proxyTCP and proxyWS are the transport constructors libp2p.Transport
// takes when PROXY protocol is on: go-libp2p's own, with the wrapping
// upgrader. A shared TCP port (tcpreuse) is not used by Kitsune, so none is
// passed: with one, the transports would listen through it instead.
func proxyTCP(pp *ProxyProtocol) any {
	return func(u transport.Upgrader, rcmgr network.ResourceManager) (*tcp.TcpTransport, error) {
		return tcp.NewTCPTransport(proxyUpgrader{u, pp}, rcmgr, nil)
	}
}

func proxyWS(pp *ProxyProtocol) any {
	return func(u transport.Upgrader, rcmgr network.ResourceManager, opts ...websocket.Option) (*websocket.WebsocketTransport, error) {
		return websocket.New(proxyUpgrader{u, pp}, rcmgr, nil, opts...)
	}
}

// proxyListener accepts from the wrapped listener and reads the balancers'
// headers off the accept path, one goroutine per connection (at most
// maxPendingHeaders at once), so a balancer connection that is slow to
// send its header holds up no other.
type proxyListener struct {
	manet.Listener
	pp      *ProxyProtocol
	timeout time.Duration

	ready   chan accepted
	slots   chan struct{}
	closed  chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	pending sync.Map // manet.Conn -> struct{}: read in progress, closed on Close
}

func newProxyListener(l manet.Listener, pp *ProxyProtocol) *proxyListener {
	timeout := pp.HeaderTimeout
	if timeout <= 0 {
		timeout = DefaultProxyHeaderTimeout
	}
	pl := &proxyListener{
		Listener: l,
		pp:       pp,
		timeout:  timeout,
		ready:    make(chan accepted),
		slots:    make(chan struct{}, maxPendingHeaders),
		closed:   make(chan struct{}),
	}
	pl.wg.Add(1)
	go pl.acceptLoop()
	return pl
}

func (l *proxyListener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			// The caller (go-libp2p's upgrader) decides which errors
			// are temporary; after Close there is nobody to tell.
			select {
			case l.ready <- accepted{err: err}:
			case <-l.closed:
				return
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !l.pp.listed(c.RemoteAddr()) {
			// Not a balancer: served as it is, but a PROXY header
			// from it is refused (the first read fails), so nobody
			// else can claim another address.
			pc := proxyproto.NewConn(c, proxyproto.WithPolicy(proxyproto.REJECT), proxyproto.SetReadHeaderTimeout(l.timeout))
			if !l.hand(&headerConn{Conn: pc, laddr: c.LocalMultiaddr(), raddr: c.RemoteMultiaddr(), lnet: c.LocalAddr(), rnet: c.RemoteAddr()}) {
				return
			}
			continue
		}
		select {
		case l.slots <- struct{}{}:
		case <-l.closed:
			c.Close()
			return
		}
		l.pending.Store(c, struct{}{})
		select {
		case <-l.closed:
			// Close may have looked at pending before the Store.
			l.pending.Delete(c)
			c.Close()
			<-l.slots
			return
		default:
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() { <-l.slots }()
			hc, err := readProxyHeader(c, l.timeout)
			l.pending.Delete(c)
			if err != nil {
				c.Close()
				return
			}
			l.hand(hc)
		}()
	}
}

// hand passes c to Accept; false (and c closed) once the listener closed.
func (l *proxyListener) hand(c manet.Conn) bool {
	select {
	case l.ready <- accepted{c: c}:
		return true
	case <-l.closed:
		c.Close()
		return false
	}
}

// readProxyHeader reads the header a balancer must send and returns the
// connection with the client's address as its remote address. The local
// address stays the socket's own, one of the listen addresses.
func readProxyHeader(c manet.Conn, timeout time.Duration) (manet.Conn, error) {
	pc := proxyproto.NewConn(c, proxyproto.WithPolicy(proxyproto.REQUIRE), proxyproto.SetReadHeaderTimeout(timeout))
	h := pc.ProxyHeader()
	if h == nil {
		_, err := pc.Read(nil) // the header error, kept by the conn
		return nil, fmt.Errorf("PROXY header from %s: %w", c.RemoteAddr(), err)
	}
	hc := &headerConn{Conn: pc, laddr: c.LocalMultiaddr(), raddr: c.RemoteMultiaddr(), lnet: c.LocalAddr(), rnet: c.RemoteAddr()}
	if h.Command.IsLocal() {
		// LOCAL: the balancer's own connection (a health check).
		return hc, nil
	}
	src, ok := h.SourceAddr.(*net.TCPAddr)
	if !ok {
		return nil, fmt.Errorf("PROXY header from %s: source %v is not a TCP address", c.RemoteAddr(), h.SourceAddr)
	}
	raddr, err := manet.FromNetAddr(src)
	if err != nil {
		return nil, fmt.Errorf("PROXY header from %s: %w", c.RemoteAddr(), err)
	}
	hc.raddr, hc.rnet = raddr, src
	return hc, nil
}

// headerConn is a connection read through a PROXY protocol parser, with
// the addresses fixed when it was accepted (asking the parser would block
// on the header).
type headerConn struct {
	*proxyproto.Conn
	laddr, raddr ma.Multiaddr
	lnet, rnet   net.Addr
}

// The socket options go-libp2p's TCP transport sets on every connection
// reach the socket under the parser.
type tcpOptions interface {
	SetKeepAlive(bool) error
	SetKeepAlivePeriod(time.Duration) error
	SetLinger(int) error
}

var errNoTCP = errors.New("not a TCP connection")

func (c *headerConn) socket() (tcpOptions, error) {
	if o, ok := c.Raw().(tcpOptions); ok {
		return o, nil
	}
	return nil, errNoTCP
}

func (c *headerConn) SetKeepAlive(on bool) error {
	o, err := c.socket()
	if err != nil {
		return err
	}
	return o.SetKeepAlive(on)
}

func (c *headerConn) SetKeepAlivePeriod(d time.Duration) error {
	o, err := c.socket()
	if err != nil {
		return err
	}
	return o.SetKeepAlivePeriod(d)
}

func (c *headerConn) SetLinger(sec int) error {
	o, err := c.socket()
	if err != nil {
		return err
	}
	return o.SetLinger(sec)
}

func (c *headerConn) LocalMultiaddr() ma.Multiaddr  { return c.laddr }
func (c *headerConn) RemoteMultiaddr() ma.Multiaddr { return c.raddr }
func (c *headerConn) LocalAddr() net.Addr           { return c.lnet }
func (c *headerConn) RemoteAddr() net.Addr          { return c.rnet }

// accepted is one outcome of the inner Accept, header read.
type accepted struct {
	c   manet.Conn
	err error
}

func (l *proxyListener) Accept() (manet.Conn, error) {
	select {
	case a := <-l.ready:
		return a.c, a.err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close closes the listener and the connections whose header is still
// awaited, and waits for the goroutines reading them.
func (l *proxyListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.closed)
		err = l.Listener.Close()
		l.pending.Range(func(k, _ any) bool {
			k.(manet.Conn).Close()
			return true
		})
		l.wg.Wait()
	})
	return err
}

// pendingHeaders is how many connections wait for their header (tests).
func (l *proxyListener) pendingHeaders() int { return len(l.slots) }

var errNoProxyFrom = errors.New("PROXY protocol needs at least one balancer address")

// Validate reports a configuration that cannot work.
func (p *ProxyProtocol) Validate() error {
	if p == nil {
		return nil
	}
	if len(p.From) == 0 {
		return errNoProxyFrom
	}
	for _, pr := range p.From {
		if !pr.IsValid() {
			return fmt.Errorf("invalid balancer prefix %v", pr)
		}
	}
	if p.HeaderTimeout < 0 {
		return fmt.Errorf("PROXY header timeout must not be negative, got %v", p.HeaderTimeout)
	}
	return nil
}
