package preload

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Server timeouts against slow or idle clients. Writes are bounded per
// request by the Handler (Timeout plus a little), since a refs answer
// streams for as long as the node walks.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 32 << 10
)

// Timeouts bound what a slow or idle client can hold on the preload port.
// A zero field keeps the default.
type Timeouts struct {
	// ReadHeader is how long a client has to send its request headers
	// (10s): a client trickling them (slowloris) is cut off after it.
	ReadHeader time.Duration
	// Read bounds reading the whole request, body included (30s).
	Read time.Duration
	// Idle is how long a kept-alive connection may wait for its next
	// request (2m).
	Idle time.Duration
}

func (t Timeouts) orDefaults() Timeouts {
	if t.ReadHeader <= 0 {
		t.ReadHeader = readHeaderTimeout
	}
	if t.Read <= 0 {
		t.Read = readTimeout
	}
	if t.Idle <= 0 {
		t.Idle = idleTimeout
	}
	return t
}

// Server serves a Handler on one TCP listener, over HTTP or HTTPS.
type Server struct {
	srv  *http.Server
	ln   net.Listener
	tls  bool
	stop context.CancelCauseFunc
	done chan struct{}
}

// Listen listens on addr (host:port; port 0 picks one) and serves h until
// Close, with the default Timeouts.
func Listen(addr string, h http.Handler, log *zap.Logger) (*Server, error) {
	return ListenTimeouts(addr, h, log, Timeouts{})
}

// ListenTimeouts is Listen with other timeouts against slow clients.
func ListenTimeouts(addr string, h http.Handler, log *zap.Logger, t Timeouts) (*Server, error) {
	return ListenTLS(addr, h, log, t, nil)
}

// ListenTLS is ListenTimeouts serving HTTPS with tlsConf (HTTP/1.1 and
// HTTP/2), or HTTP when tlsConf is nil. js-ipfs's own preload addresses
// are HTTPS (/dns4/node0.preload.ipfs.io/https), so an operator taking
// one over needs no TLS terminator in front. tlsConf should pick its
// certificate per handshake (GetCertificate), as proxy.LoadTLS's does, so
// a renewed certificate is served without a restart.
func ListenTLS(addr string, h http.Handler, log *zap.Logger, t Timeouts, tlsConf *tls.Config) (*Server, error) {
	t = t.orDefaults()
	if log == nil {
		log = zap.NewNop()
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	base, stop := context.WithCancelCause(context.Background())
	s := &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: t.ReadHeader,
			ReadTimeout:       t.Read,
			IdleTimeout:       t.Idle,
			MaxHeaderBytes:    maxHeaderBytes,
			BaseContext:       func(net.Listener) context.Context { return base },
			ErrorLog:          zap.NewStdLog(log.WithOptions(zap.IncreaseLevel(zap.WarnLevel))),
		},
		ln:   ln,
		tls:  tlsConf != nil,
		stop: stop,
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		var err error
		if tlsConf != nil {
			// ServeTLS clones the config and adds HTTP/2 to it.
			s.srv.TLSConfig = tlsConf
			err = s.srv.ServeTLS(ln, "", "")
		} else {
			err = s.srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("preload server stopped", zap.Error(err))
		}
	}()
	return s, nil
}

// Addr is the address listened on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// URL is the server's base URL, e.g. http://127.0.0.1:5002 or
// https://127.0.0.1:443; "" for a nil Server.
func (s *Server) URL() string {
	if s == nil {
		return ""
	}
	if s.tls {
		return "https://" + s.ln.Addr().String()
	}
	return "http://" + s.ln.Addr().String()
}

// Close stops listening and ends running calls: each sends what it has,
// then an X-Stream-Error saying Kitsune is shutting down. It waits for
// them until ctx ends, then cuts the remaining connections. A nil Server
// is a no-op.
func (s *Server) Close(ctx context.Context) error {
	if s == nil {
		return nil
	}
	s.stop(ErrShutdown)
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = s.srv.Close()
	}
	<-s.done
	return err
}
