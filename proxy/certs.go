package proxy

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// certRecheck bounds how often a handshake looks at the certificate files.
const certRecheck = time.Second

// LoadTLS returns a server TLS config for the secure WebSocket listeners,
// serving the PEM certificate chain and key in certFile and keyFile. The
// files are read now, so a bad pair stops Kitsune at start with an error
// naming them, and read again when they change: a certificate renewed in
// place (certbot, an ACME sidecar) is served without a restart. A renewal
// that cannot be loaded leaves the previous certificate in service.
func LoadTLS(certFile, keyFile string) (*tls.Config, error) {
	return loadTLS(certFile, keyFile, certRecheck)
}

// loadTLS is LoadTLS with the recheck interval as a parameter, so tests
// can see a renewal at once.
func loadTLS(certFile, keyFile string, recheck time.Duration) (*tls.Config, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, recheck: recheck}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.get,
	}, nil
}

type certReloader struct {
	certFile, keyFile string
	recheck           time.Duration

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]time.Time // modification times of certFile and keyFile
	checked time.Time
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) >= r.recheck {
		r.checked = time.Now()
		if st, err := r.stat(); err == nil && st != r.stamp {
			_ = r.reloadLocked()
		}
	}
	return r.cert, nil
}

func (r *certReloader) stat() ([2]time.Time, error) {
	var st [2]time.Time
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return st, err
		}
		st[i] = fi.ModTime()
	}
	return st, nil
}

func (r *certReloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reloadLocked()
}

func (r *certReloader) reloadLocked() error {
	st, err := r.stat()
	if err != nil {
		return fmt.Errorf("TLS certificate: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate %s with key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert, r.stamp, r.checked = &cert, st, time.Now()
	return nil
}
