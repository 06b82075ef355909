package testkit

import (
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// SlowLink is a userspace TCP proxy on loopback in front of target
// ("127.0.0.1:4001") whose direction towards the client carries at most
// rate bytes a second: a slow downlink, for a client that must cope with
// one. Its sockets' buffers are kept to linkBuffer, as a link's queue,
// rather than loopback's megabytes, which would hold many seconds of data
// at a slow rate. It returns the proxy's address; the proxy and its
// connections are closed by t.Cleanup. (The kernel has no netem here, and
// tbf needs a namespace; this needs neither.)
func SlowLink(t testing.TB, target string, rate int) *net.TCPAddr {
	t.Helper()
	if rate <= 0 {
		t.Fatalf("testkit: SlowLink rate %d", rate)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = make(map[net.Conn]struct{})
	)
	track := func(cs ...net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range cs {
			conns[c] = struct{}{}
		}
	}
	forget := func(cs ...net.Conn) {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range cs {
			_ = c.Close()
			delete(conns, c)
		}
	}
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed
			}
			d := net.Dialer{Timeout: 10 * time.Second, Control: smallBuffers}
			s, err := d.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetWriteBuffer(linkBuffer)
			}
			track(c, s)
			wg.Add(2)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(s, c)
				forget(c, s)
			}()
			go func() {
				defer wg.Done()
				defer forget(c, s)
				pace(c, s, rate)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr)
}

// linkBuffer is the socket buffer size on the slow side of a SlowLink.
const linkBuffer = 16 << 10

// smallBuffers sets the receive buffer of the proxy's socket towards the
// target before it connects, so the TCP window the target sees is small
// from the start.
func smallBuffers(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, linkBuffer)
	})
	if err != nil {
		return err
	}
	return serr
}

// pace copies from src to dst at most rate bytes a second, in small
// chunks so the pace is smooth.
func pace(dst io.Writer, src io.Reader, rate int) {
	buf := make([]byte, 2048)
	next := time.Now()
	for {
		n, err := src.Read(buf)
		if n > 0 {
			next = next.Add(time.Duration(n) * time.Second / time.Duration(rate))
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			} else {
				next = time.Now()
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
