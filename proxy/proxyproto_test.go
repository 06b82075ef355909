package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/libp2p/go-libp2p/p2p/transport/websocket"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/kitsune-lb/kitsune/internal/testkit"
)

// proxyHeader is what HAProxy's send-proxy-v2 writes for a client at src.
func proxyHeader(src string) *proxyproto.Header {
	s := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src))
	return &proxyproto.Header{
		Version:           2,
		Command:           proxyproto.PROXY,
		TransportProtocol: proxyproto.TCPv4,
		SourceAddr:        s,
		DestinationAddr:   &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 4001},
	}
}

func listenProxy(t *testing.T, from string, timeout time.Duration) *proxyListener {
	t.Helper()
	inner, err := manet.Listen(ma.StringCast("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	l := newProxyListener(inner, &ProxyProtocol{From: []netip.Prefix{netip.MustParsePrefix(from)}, HeaderTimeout: timeout})
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// dialWith connects to l and writes header (if any) and payload.
func dialWith(t *testing.T, l *proxyListener, h *proxyproto.Header, payload string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if h != nil {
		if _, err := h.WriteTo(c); err != nil {
			t.Fatal(err)
		}
	}
	if payload != "" {
		if _, err := io.WriteString(c, payload); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func acceptWithin(t *testing.T, l *proxyListener, d time.Duration) (manet.Conn, error) {
	t.Helper()
	type res struct {
		c   manet.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-time.After(d):
		return nil, errors.New("no connection accepted")
	}
}

// closedByServer reports whether the server closed c (EOF or reset)
// within d.
func closedByServer(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func TestProxyListenerBalancer(t *testing.T) {
	l := listenProxy(t, "127.0.0.1/32", 300*time.Millisecond)

	// A silent balancer connection first: it must not hold up the next.
	silent := dialWith(t, l, nil, "")
	dialWith(t, l, proxyHeader("203.0.113.9:4321"), "hello")
	c, err := acceptWithin(t, l, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.RemoteMultiaddr().String(); got != "/ip4/203.0.113.9/tcp/4321" {
		t.Errorf("remote multiaddr %s, want the header's source", got)
	}
	if got := c.RemoteAddr().String(); got != "203.0.113.9:4321" {
		t.Errorf("remote addr %s, want the header's source", got)
	}
	if !c.LocalMultiaddr().Equal(l.Multiaddr()) {
		t.Errorf("local multiaddr %s, want the listener's %s", c.LocalMultiaddr(), l.Multiaddr())
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("payload after the header: %q, %v", buf, err)
	}
	c.Close()

	// The silent one is dropped at the header timeout, never accepted.
	if !closedByServer(silent, 5*time.Second) {
		t.Error("a balancer connection without a header was not closed")
	}
	// A balancer connection that skips the header is dropped too.
	bare := dialWith(t, l, nil, "\x13/multistream/1.0.0\n")
	if !closedByServer(bare, 5*time.Second) {
		t.Error("a balancer connection without a header was served")
	}
	if c, err := acceptWithin(t, l, 200*time.Millisecond); err == nil {
		t.Fatalf("accepted %s, which sent no header", c.RemoteAddr())
	}
	testkit.Eventually(t, 5*time.Second, testkit.Say("no header reads left pending"), func() bool { return l.pendingHeaders() == 0 })
}

func TestProxyListenerOthers(t *testing.T) {
	// The balancer is elsewhere: 127.0.0.1 is an ordinary client.
	l := listenProxy(t, "127.0.0.2/32", time.Second)

	dialWith(t, l, nil, "hello")
	c, err := acceptWithin(t, l, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ip, _ := manet.ToIP(c.RemoteMultiaddr()); !ip.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("remote %s, want the socket's own", c.RemoteMultiaddr())
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("payload: %q, %v", buf, err)
	}
	c.Close()

	// A header from a client is refused: the first read fails, and the
	// address it claims is never seen.
	dialWith(t, l, proxyHeader("203.0.113.9:4321"), "hello")
	c, err = acceptWithin(t, l, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ip, _ := manet.ToIP(c.RemoteMultiaddr()); !ip.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Errorf("remote %s: a forged header was believed", c.RemoteMultiaddr())
	}
	if _, err := c.Read(buf); !errors.Is(err, proxyproto.ErrSuperfluousProxyHeader) {
		t.Errorf("read after a forged header: %v, want %v", err, proxyproto.ErrSuperfluousProxyHeader)
	}
	c.Close()
}

func TestProxyListenerCloseWithPending(t *testing.T) {
	l := listenProxy(t, "127.0.0.1/32", time.Minute)
	silent := dialWith(t, l, nil, "")
	testkit.Eventually(t, 5*time.Second, testkit.Say("the header read pending"), func() bool { return l.pendingHeaders() == 1 })
	done := make(chan struct{})
	go func() { _ = l.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for a header read")
	}
	if !closedByServer(silent, 5*time.Second) {
		t.Error("the pending connection was left open")
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
}

// headerDialer dials as a balancer would: the PROXY header first, naming
// src as the client.
type headerDialer struct{ src string }

func (d headerDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if d.src != "" {
		if _, err := proxyHeader(d.src).WriteTo(c); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func clientVia(t *testing.T, src string) host.Host {
	t.Helper()
	h, err := libp2p.New(
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport, tcp.WithDialerForAddr(func(ma.Multiaddr) (tcp.ContextDialer, error) {
			return headerDialer{src: src}, nil
		})),
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// The front host with PROXY protocol from loopback (the "balancer"):
// connections carry the header's client address into libp2p, where the
// per-IP limit counts it; a connection from the balancer without a header
// gets nowhere.
func TestFrontProxyProtocol(t *testing.T) {
	front := newFront(t, FrontConfig{
		ListenAddrs:   addrs(t, "/ip4/127.0.0.1/tcp/0"),
		Limits:        Limits{ConnsPerIP: 2},
		ProxyProtocol: &ProxyProtocol{From: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
	})
	remoteOf := func(h host.Host) string {
		cs := front.Network().ConnsToPeer(h.ID())
		if len(cs) == 0 {
			return ""
		}
		ip, _ := manet.ToIP(cs[0].RemoteMultiaddr())
		return ip.String()
	}
	for i, src := range []string{"203.0.113.9:1001", "203.0.113.9:1002", "203.0.113.10:1001"} {
		c := clientVia(t, src)
		if err := connect(c, front); err != nil {
			t.Fatalf("client %d as %s: %v", i, src, err)
		}
		if got, want := remoteOf(c), netip.MustParseAddrPort(src).Addr().String(); got != want {
			t.Errorf("client %d: front sees %s, want %s", i, got, want)
		}
	}
	// Third from 203.0.113.9: over its limit of 2, though loopback (where
	// the bytes come from) is unlimited.
	if err := connect(clientVia(t, "203.0.113.9:1003"), front); err == nil {
		t.Error("a third connection from 203.0.113.9 was admitted with --max-conns-per-ip 2")
	}
	if err := connectWithin(clientVia(t, ""), front, 3*time.Second); err == nil {
		t.Error("a connection from the balancer without a header was admitted")
	}
}

// headerForwarder is a one-line balancer: every connection to it is
// forwarded to target after a PROXY header naming src.
func headerForwarder(t *testing.T, target, src string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := headerDialer{src: src}.DialContext(context.Background(), "tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return l.Addr().String()
}

// The same over WebSocket: the header comes before the HTTP upgrade.
func TestFrontProxyProtocolWebSocket(t *testing.T) {
	front := newFront(t, FrontConfig{
		ListenAddrs:   addrs(t, "/ip4/127.0.0.1/tcp/0/ws"),
		ProxyProtocol: &ProxyProtocol{From: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
	})
	target, err := manet.ToNetAddr(front.Addrs()[0].Decapsulate(ma.StringCast("/ws")))
	if err != nil {
		t.Fatal(err)
	}
	fwd := netip.MustParseAddrPort(headerForwarder(t, target.String(), "203.0.113.44:5555"))
	c, err := libp2p.New(libp2p.NoListenAddrs, libp2p.Transport(websocket.New),
		libp2p.ResourceManager(&network.NullResourceManager{}), libp2p.DisableRelay(), libp2p.DisableMetrics())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/ws", fwd.Port()))
	if err := c.Connect(ctx, peer.AddrInfo{ID: front.ID(), Addrs: []ma.Multiaddr{a}}); err != nil {
		t.Fatal(err)
	}
	cs := front.Network().ConnsToPeer(c.ID())
	if len(cs) != 1 {
		t.Fatalf("%d connections from the client", len(cs))
	}
	if got := cs[0].RemoteMultiaddr().String(); got != "/ip4/203.0.113.44/tcp/5555/ws" {
		t.Errorf("front sees the WebSocket client at %s, want the header's 203.0.113.44:5555", got)
	}
}
