package netns

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/stream"
	"github.com/rs/zerolog"
)

// Delay is what a Proxy adds to each direction of every connection.
type Delay struct {
	// OneWay is added to each direction: an RTT of 40 ms is OneWay 20 ms.
	OneWay time.Duration
	// Jitter varies each chunk's delay by up to ± Jitter. Chunks keep
	// their order (a TCP stream cannot reorder).
	Jitter time.Duration
}

// Proxy is a userspace TCP proxy adding delay and jitter, built on
// toxiproxy's toxic chains: toxiproxy's own listener and dialer work in
// the process's namespace only, so this type accepts and dials inside the
// namespaces it is given and hands both sockets to toxiproxy's links.
type Proxy struct {
	l     net.Listener
	proxy *toxiproxy.Proxy
	srv   *toxiproxy.ApiServer

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
	wg    sync.WaitGroup
	done  chan struct{}
}

// dialTimeout bounds the proxy's dial to its upstream.
const dialTimeout = 10 * time.Second

// NewProxy listens on listen ("198.51.100.1:0") inside lns and forwards
// each connection to upstream, dialled inside uns, with d added. It is
// closed, with its connections, by t.Cleanup.
func NewProxy(t testing.TB, lns *NS, listen string, uns *NS, upstream string, d Delay) *Proxy {
	t.Helper()
	l, err := lns.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("netns: proxy listening on %s in %s: %v", listen, lns.Name, err)
	}
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	tp := toxiproxy.NewProxy(srv, "netns", l.Addr().String(), upstream)
	for _, dir := range []string{"upstream", "downstream"} {
		spec := map[string]any{
			"name": "delay_" + dir, "type": "latency", "stream": dir, "toxicity": 1.0,
			"attributes": map[string]int64{"latency": d.OneWay.Milliseconds(), "jitter": d.Jitter.Milliseconds()},
		}
		raw, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tp.Toxics.AddToxicJson(strings.NewReader(string(raw))); err != nil {
			l.Close()
			t.Fatalf("netns: proxy toxic %s: %v", raw, err)
		}
	}
	p := &Proxy{l: l, proxy: tp, srv: srv, conns: map[*trackedConn]struct{}{}, done: make(chan struct{})}
	p.wg.Add(1)
	go p.serve(uns, upstream)
	t.Cleanup(p.Close)
	return p
}

// Addr is the address the proxy listens on, inside its namespace.
func (p *Proxy) Addr() *net.TCPAddr { return p.l.Addr().(*net.TCPAddr) }

func (p *Proxy) serve(uns *NS, upstream string) {
	defer p.wg.Done()
	for n := 0; ; n++ {
		client, err := p.l.Accept()
		if err != nil {
			return // closed
		}
		ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
		up, err := uns.DialContext(ctx, "tcp", upstream)
		cancel()
		if err != nil {
			client.Close()
			continue
		}
		c, u := &trackedConn{Conn: client, p: p}, &trackedConn{Conn: up, p: p}
		if !p.track(c, u) {
			return
		}
		name := fmt.Sprintf("conn%d", n)
		// Upstream is client → server, downstream server → client, as
		// toxiproxy names them; each link closes its writer when done,
		// which forgets it.
		p.proxy.Toxics.StartLink(p.srv, name+"up", c, u, stream.Upstream)
		p.proxy.Toxics.StartLink(p.srv, name+"down", u, c, stream.Downstream)
	}
}

// trackedConn forgets itself on Close, so the proxy's table holds only
// open connections.
type trackedConn struct {
	net.Conn
	p *Proxy
}

func (c *trackedConn) Close() error {
	c.p.mu.Lock()
	delete(c.p.conns, c)
	c.p.mu.Unlock()
	return c.Conn.Close()
}

// Conns is how many proxied sockets (two per connection) are open.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// track remembers the pair for Close; false if the proxy is closing.
func (p *Proxy) track(cs ...*trackedConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		for _, c := range cs {
			c.Conn.Close()
		}
		return false
	default:
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

// Close stops accepting and closes every proxied connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	select {
	case <-p.done:
		p.mu.Unlock()
		return
	default:
	}
	close(p.done)
	_ = p.l.Close()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c.Conn)
	}
	clear(p.conns)
	p.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	p.wg.Wait()
}
