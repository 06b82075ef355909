package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipfs/boxo/blockservice"
	"github.com/ipfs/boxo/blockstore"
	"github.com/ipfs/boxo/ipld/merkledag"
	uio "github.com/ipfs/boxo/ipld/unixfs/io"
	"github.com/ipfs/boxo/routing/http/client"
	"github.com/ipfs/boxo/routing/http/types"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kitsune-lb/kitsune/httpfront"
	"github.com/kitsune-lb/kitsune/internal/cartest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

func gatewayOn(c *runCmd) {
	c.HTTP = "127.0.0.1:0"
	c.Gateway = true
}

func httpGet(t *testing.T, ctx context.Context, method, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", method, url, err)
	}
	return resp, body
}

// unixfsBytes rebuilds a UnixFS file from a CAR's blocks.
func unixfsBytes(t *testing.T, ctx context.Context, got map[cid.Cid][]byte, root cid.Cid) []byte {
	t.Helper()
	bstore := blockstore.NewBlockstore(dssync.MutexWrap(datastore.NewMapDatastore()))
	for c, data := range got {
		b, err := blocks.NewBlockWithCid(data, c)
		if err != nil {
			t.Fatal(err)
		}
		if err := bstore.Put(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	dag := merkledag.NewDAGService(blockservice.New(bstore, nil))
	nd, err := dag.Get(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	r, err := uio.NewDagReader(ctx, nd, dag)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// The trustless gateway of a running Kitsune over real Kubo nodes: a file
// held by one node only comes back as a CAR whose every block checks out
// and whose DAG rebuilds the file; the raw root block, HEAD and the probe
// answer; Kitsune's routing record offers the gateway; content nobody has
// times out, and leaves nothing in the relay.
func TestGatewayE2E(t *testing.T) {
	a := kubotest.Start(t, kubotest.Options{})
	b := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	data := randomBytes(t, 3<<20+777)
	root, err := a.AddBytes(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	k := startKitsune(t, []*kubotest.Node{a, b}, gatewayOn, func(c *runCmd) { c.GatewayTimeout = 3 * time.Second })
	eventually(t, 30*time.Second, "both nodes healthy", func() bool { return k.pool.HealthyCount() == 2 })
	base := k.http.URL()

	resp, car := httpGet(t, ctx, http.MethodGet, base+"/ipfs/"+root.String()+"?format=car")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/vnd.ipld.car") {
		t.Fatalf("car: %d %q %.200s", resp.StatusCode, resp.Header.Get("Content-Type"), car)
	}
	_, got, err := cartest.Read(bytes.NewReader(car), root)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := cartest.Complete(got, root); err != nil {
		t.Fatalf("DAG incomplete after %d blocks: %v", n, err)
	}
	if !bytes.Equal(unixfsBytes(t, ctx, got, root), data) {
		t.Fatal("the CAR's DAG is not the file")
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/ipfs/"+root.String(), nil)
	req.Header.Set("Accept", "application/vnd.ipld.raw")
	rresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(rresp.Body)
	rresp.Body.Close()
	if rresp.StatusCode != 200 || !bytes.Equal(raw, got[root]) {
		t.Fatalf("raw root: %d, %d bytes", rresp.StatusCode, len(raw))
	}
	if resp, body := httpGet(t, ctx, http.MethodHead, base+"/ipfs/"+root.String()+"?format=raw"); resp.StatusCode != 200 || len(body) != 0 {
		t.Errorf("HEAD: %d, %d bytes", resp.StatusCode, len(body))
	}
	if resp, _ := httpGet(t, ctx, http.MethodGet, base+"/ipfs/bafkqaaa?format=raw"); resp.StatusCode != 200 {
		t.Errorf("probe: %d", resp.StatusCode)
	}
	if resp, body := httpGet(t, ctx, http.MethodGet, base+"/ipfs/"+root.String()); resp.StatusCode != http.StatusNotAcceptable {
		t.Errorf("deserialized request: %d %.200s", resp.StatusCode, body)
	}

	// The record names the gateway at the port it listens on.
	rc, err := client.New(base)
	if err != nil {
		t.Fatal(err)
	}
	it, err := rc.FindProviders(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	provs := readIter(t, it)
	if len(provs) != 1 {
		t.Fatalf("%d provider records", len(provs))
	}
	rec, ok := provs[0].(*types.PeerRecord)
	if !ok {
		t.Fatalf("record %T", provs[0])
	}
	if !slices.Contains(rec.Protocols, httpfront.TransportGatewayHTTP) {
		t.Errorf("protocols %v lack %s", rec.Protocols, httpfront.TransportGatewayHTTP)
	}
	wantAddr := ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/http", k.http.Addr().(*net.TCPAddr).Port))
	if !slices.ContainsFunc(rec.Addrs, func(m types.Multiaddr) bool { return m.Equal(wantAddr) }) {
		t.Errorf("addrs %v lack %s", rec.Addrs, wantAddr)
	}

	// Nobody has it: the retrieval timeout ends the wait, and the relay
	// forgets the wants.
	missing := rawBlockCID(t, randomBytes(t, 1000))
	start := time.Now()
	if resp, body := httpGet(t, ctx, http.MethodGet, base+"/ipfs/"+missing.String()+"?format=raw"); resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("missing: %d %.200s", resp.StatusCode, body)
	}
	t.Logf("missing content answered in %v", time.Since(start))
	eventually(t, 40*time.Second, "relay tables empty", func() bool {
		s := k.relay.Stats()
		return s.Local == 0 && s.Wants == 0 && s.Peers == 0
	})
}

// A node killed while a CAR streams: the wants it held move to the other
// node, as a Bitswap client's would, and the CAR arrives whole.
func TestGatewayFailoverMidCAR(t *testing.T) {
	a := kubotest.Start(t, kubotest.Options{})
	b := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	data := randomBytes(t, 24<<20)
	root, err := a.AddBytes(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	if r2, err := b.AddBytes(ctx, data); err != nil || !r2.Equals(root) {
		t.Fatalf("second copy: %v %v", r2, err)
	}
	k := startKitsune(t, []*kubotest.Node{a, b}, gatewayOn)
	eventually(t, 30*time.Second, "both nodes healthy", func() bool { return k.pool.HealthyCount() == 2 })

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, k.http.URL()+"/ipfs/"+root.String()+"?format=car", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var read atomic.Int64
	var buf bytes.Buffer
	done := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			n, err := resp.Body.Read(chunk)
			buf.Write(chunk[:n])
			read.Add(int64(n))
			if err == io.EOF {
				done <- nil
				return
			}
			if err != nil {
				done <- err
				return
			}
		}
	}()
	eventually(t, 60*time.Second, "a quarter of the CAR", func() bool { return read.Load() > 6<<20 })
	before := read.Load()
	a.Kill()
	if err := <-done; err != nil {
		t.Fatalf("CAR stream broke after %d bytes: %v", read.Load(), err)
	}
	t.Logf("killed a at %d bytes of %d; failovers %d", before, read.Load(), k.relay.Counters().Failovers.Load())
	_, got, err := cartest.Read(bytes.NewReader(buf.Bytes()), root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cartest.Complete(got, root); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(unixfsBytes(t, ctx, got, root), data) {
		t.Fatal("the CAR's DAG is not the file")
	}
}

// A Kubo client with HTTPRetrieval and Kitsune's /routing/v1 as its only
// router, and no libp2p transport at all, fetches a file the fleet holds:
// Kitsune's record offers the gateway at a loopback /http address (boxo's
// httpnet takes plain HTTP only at loopback and private IPs), so every
// block comes over HTTP through the relay's local fetches.
func TestKuboHTTPRetrievalThroughGateway(t *testing.T) {
	a := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	data := randomBytes(t, 3<<20+5)
	root, err := a.AddBytes(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	k := startKitsune(t, []*kubotest.Node{a}, gatewayOn)
	eventually(t, 30*time.Second, "node healthy", func() bool { return k.pool.HealthyCount() == 1 })
	client := kubotest.Start(t, kubotest.Options{Config: map[string]any{
		"Routing.Type":                          "delegated",
		"Routing.DelegatedRouters":              []string{k.http.URL()},
		"Ipns.DelegatedPublishers":              []string{},
		"Provide.Enabled":                       false,
		"HTTPRetrieval.Enabled":                 true,
		"Swarm.Transports.Network.TCP":          false,
		"Swarm.Transports.Network.QUIC":         false,
		"Swarm.Transports.Network.Websocket":    false,
		"Swarm.Transports.Network.WebTransport": false,
		"Swarm.Transports.Network.WebRTCDirect": false,
		"Addresses.Swarm":                       []string{},
	}})
	before := k.relay.Counters().LocalBlocks.Load()
	got, err := client.Cat(ctx, "/ipfs/"+root.String())
	if err != nil {
		t.Fatalf("kubo client cat over HTTP retrieval: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("kubo client got %d bytes, not the file", len(got))
	}
	if n := k.relay.Counters().LocalBlocks.Load() - before; n == 0 {
		t.Error("no block came through the gateway")
	}
	if n := k.relay.Counters().BlocksOut.Load(); n != 0 {
		t.Errorf("%d blocks went out over Bitswap to a client without transports", n)
	}
}

// --http on a /tls/http address serves the gateway over HTTPS with HTTP/2,
// and the record names it /tls/http: a Kubo client with HTTPRetrieval and
// no libp2p transport fetches over it, verifying the certificate. It is
// self-signed and handed to the client as its root store (SSL_CERT_FILE),
// standing in for a publicly trusted one.
func TestKuboHTTPRetrievalOverTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	cert := writeCert(t, certFile, keyFile, 1)
	a := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 3*time.Minute)
	data := randomBytes(t, 1<<20+5)
	root, err := a.AddBytes(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	k := startKitsune(t, []*kubotest.Node{a}, gatewayOn, func(c *runCmd) {
		c.HTTP = "/ip4/127.0.0.1/tcp/0/tls/http"
		c.TLSCert, c.TLSKey = certFile, keyFile
	})
	eventually(t, 30*time.Second, "node healthy", func() bool { return k.pool.HealthyCount() == 1 })
	base := k.http.URL()
	if !strings.HasPrefix(base, "https://") {
		t.Fatalf("--http on /tls/http serves %s", base)
	}

	// A Go client trusting the certificate speaks HTTP/2 to it.
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	resp, err := hc.Get(base + "/ipfs/bafkqaaa?format=raw")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" {
		t.Fatalf("probe over TLS: %d %s", resp.StatusCode, resp.Proto)
	}

	// The record's gateway address is /tls/http.
	rc, err := client.New(base, client.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	it, err := rc.FindProviders(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	provs := readIter(t, it)
	if len(provs) != 1 {
		t.Fatalf("%d provider records", len(provs))
	}
	rec := provs[0].(*types.PeerRecord)
	want := ma.StringCast(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d/tls/http", k.http.Addr().(*net.TCPAddr).Port))
	if !slices.ContainsFunc(rec.Addrs, func(m types.Multiaddr) bool { return m.Equal(want) }) {
		t.Fatalf("addrs %v lack %s", rec.Addrs, want)
	}

	client := kubotest.Start(t, kubotest.Options{Config: map[string]any{
		"Routing.Type":                          "delegated",
		"Routing.DelegatedRouters":              []string{base},
		"Ipns.DelegatedPublishers":              []string{},
		"Provide.Enabled":                       false,
		"HTTPRetrieval.Enabled":                 true,
		"Swarm.Transports.Network.TCP":          false,
		"Swarm.Transports.Network.QUIC":         false,
		"Swarm.Transports.Network.Websocket":    false,
		"Swarm.Transports.Network.WebTransport": false,
		"Swarm.Transports.Network.WebRTCDirect": false,
		"Addresses.Swarm":                       []string{},
	}, Env: []string{"SSL_CERT_FILE=" + certFile}})
	got, err := client.Cat(ctx, "/ipfs/"+root.String())
	if err != nil {
		t.Fatalf("kubo client cat over HTTPS retrieval: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("kubo client got %d bytes, not the file", len(got))
	}
	if n := k.relay.Counters().LocalBlocks.Load(); n == 0 {
		t.Error("no block came through the gateway")
	}
}
