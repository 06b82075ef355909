package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// writeCert writes a self-signed certificate for 127.0.0.1 (serial
// distinguishes renewals) and its key to certFile and keyFile, replacing
// them as a renewal would, and returns the certificate.
func writeCert(t *testing.T, certFile, keyFile string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "kitsune preload test"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// Key first, then certificate, each through a rename: a reader never
	// sees half a file.
	for _, f := range []struct {
		name string
		blk  *pem.Block
	}{{keyFile, &pem.Block{Type: "PRIVATE KEY", Bytes: kder}}, {certFile, &pem.Block{Type: "CERTIFICATE", Bytes: der}}} {
		tmp := f.name + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(f.blk), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.name); err != nil {
			t.Fatal(err)
		}
	}
	return cert
}

// httpsClient trusts only cert and opens a new connection per request, so
// each request sees the certificate served at that moment.
func httpsClient(cert *x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			DisableKeepAlives: true,
			ForceAttemptHTTP2: true,
		},
	}
}

// How an operator turns HTTPS on for the preload port, and the half
// configurations refused with an error saying what is missing.
func TestPreloadHTTPSFlags(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, 1)
	base := func(c *runCmd) {
		c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		c.WS = nil
	}
	withCert := func(c *runCmd) { c.TLSCert, c.TLSKey = certFile, keyFile }
	for _, tc := range []struct {
		name    string
		mod     []func(*runCmd)
		preload string
		https   bool
		addr    string
		err     string // substring; "" for success
	}{
		{"https", []func(*runCmd){withCert}, "/ip4/127.0.0.1/tcp/5443/https", true, "127.0.0.1:5443", ""},
		{"tls/http", []func(*runCmd){withCert}, "/ip4/0.0.0.0/tcp/443/tls/http", true, "0.0.0.0:443", ""},
		{"http multiaddr", nil, "/ip4/127.0.0.1/tcp/5002/http", false, "127.0.0.1:5002", ""},
		{"plain port", nil, "5002", false, ":5002", ""},
		{"https without a certificate", nil, "/ip4/127.0.0.1/tcp/5443/https", false, "", "give --tls-cert and --tls-key"},
		{"certificate without a key", []func(*runCmd){func(c *runCmd) { c.TLSCert = certFile }}, "/ip4/127.0.0.1/tcp/5443/https", false, "", "--tls-cert needs --tls-key"},
		{"certificate used by nothing", []func(*runCmd){withCert}, "5002", false, "", "HTTPS preload port"},
		{"https over udp", []func(*runCmd){withCert}, "/ip4/127.0.0.1/udp/5443/https", false, "", "TCP multiaddr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := defaultRunCmd(t)
			base(c)
			for _, m := range tc.mod {
				m(c)
			}
			c.Preload = tc.preload
			cfg, err := c.config()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Preload.Addr != tc.addr || cfg.Preload.HTTPS != tc.https || (cfg.Preload.TLS != nil) != tc.https {
				t.Fatalf("got addr %q https %v tls %v; want %q %v", cfg.Preload.Addr, cfg.Preload.HTTPS, cfg.Preload.TLS != nil, tc.addr, tc.https)
			}
		})
	}
}

// The preload port serves HTTPS from --tls-cert to a real TLS client,
// refuses plain HTTP, and serves a certificate renewed in place without a
// restart.
func TestPreloadHTTPSAndCertificateReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := writeCert(t, certFile, keyFile, 1)
	c := defaultRunCmd(t)
	c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	c.WS = nil
	c.Key = filepath.Join(t.TempDir(), "kitsune.key")
	c.Admin = ""
	c.Preload = "/ip4/127.0.0.1/tcp/0/https"
	c.TLSCert, c.TLSKey = certFile, keyFile
	cfg, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	k, err := start(context.Background(), cfg, &out, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.stop(); <-k.done })
	u := k.preload.URL()
	if !strings.HasPrefix(u, "https://127.0.0.1:") || !strings.Contains(out.String(), u) {
		t.Fatalf("preload URL %q, startup output:\n%s", u, out.String())
	}
	refs := "/api/v0/refs?r=true&arg=QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"

	// The refs handler answers over TLS (503: no node behind it here),
	// on HTTP/2 as browsers use it.
	resp, err := httpsClient(first).Post(u+refs, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.TLS == nil || resp.ProtoMajor != 2 {
		t.Fatalf("HTTPS refs call: status %d, TLS %v, %s; want 503 over TLS on HTTP/2", resp.StatusCode, resp.TLS != nil, resp.Proto)
	}
	// Plain HTTP on the HTTPS port gets no refs answer.
	if resp, err := http.Post("http://"+strings.TrimPrefix(u, "https://")+refs, "", nil); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain HTTP on the HTTPS port: %d, want 400 (Go's answer to HTTP on a TLS port)", resp.StatusCode)
		}
	}

	// Renewed in place: new connections get the new certificate, and a
	// client that trusts only the old one is refused.
	second := writeCert(t, certFile, keyFile, 2)
	eventually(t, 10*time.Second, "the renewed certificate to be served", func() bool {
		resp, err := httpsClient(second).Post(u+refs, "", nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.TLS != nil && resp.TLS.PeerCertificates[0].SerialNumber.Int64() == 2
	})
	if resp, err := httpsClient(first).Post(u+refs, "", nil); err == nil {
		resp.Body.Close()
		t.Fatal("a client trusting only the old certificate still got through after the renewal")
	}
}
