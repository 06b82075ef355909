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
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	bsclient "github.com/ipfs/boxo/bitswap/client"
	"github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/ipfs/boxo/blockstore"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/ipfs/kubo/core/coreiface/options"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	libp2pwebrtc "github.com/libp2p/go-libp2p/p2p/transport/webrtc"
	"github.com/libp2p/go-libp2p/p2p/transport/websocket"
	webtransport "github.com/libp2p/go-libp2p/p2p/transport/webtransport"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/zap/zaptest"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/proxy"
)

// ---- helpers for the front door tests ----

// startFront is startKitsune that also returns what Kitsune printed.
func startFront(t *testing.T, nodes []*kubotest.Node, opts ...func(*runCmd)) (*kitsune, string) {
	t.Helper()
	c := defaultRunCmd(t)
	c.Downstream = nil
	for _, n := range nodes {
		c.Downstream = append(c.Downstream, n.APIAddr.String())
	}
	c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	c.WS = []string{"/ip4/127.0.0.1/tcp/0"}
	c.Key = filepath.Join(t.TempDir(), "kitsune.key")
	for _, o := range opts {
		o(c)
	}
	cfg, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	k, err := start(context.Background(), cfg, &out, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopKitsune(t, k) })
	eventually(t, 30*time.Second, "every downstream node joined", func() bool {
		return k.pool.ConnectedCount() == len(nodes)
	})
	return k, out.String()
}

func stopKitsune(t *testing.T, k *kitsune) {
	t.Helper()
	k.stop()
	select {
	case <-k.done:
	case <-time.After(10 * time.Second):
		t.Error("kitsune did not stop within 10s")
	}
}

// listenAddr is Kitsune's listen address for one transport (proxy.TCP,
// proxy.WSS, proxy.WebRTCDirect, ...), with /p2p/.
func (k *kitsune) listenAddr(t *testing.T, transport string) peer.AddrInfo {
	t.Helper()
	for _, a := range proxy.ListenAddrs(k.front) {
		var bare ma.Multiaddr // without /certhash and /p2p, as a listen address
		for _, c := range a {
			if c.Code() != ma.P_CERTHASH && c.Code() != ma.P_P2P {
				bare = append(bare, c)
			}
		}
		if tr, err := proxy.TransportOf(bare); err == nil && tr == transport {
			ai, err := peer.AddrInfoFromP2pAddr(a)
			if err != nil {
				t.Fatal(err)
			}
			return *ai
		}
	}
	t.Fatalf("kitsune has no %s address among %v", transport, proxy.ListenAddrs(k.front))
	return peer.AddrInfo{}
}

// goClient is a Go libp2p host with only the given transport, and a boxo
// Bitswap client on it: the stack a non-Kubo client brings.
type goClient struct {
	host.Host
	bs *bsclient.Client
}

func newGoClient(t *testing.T, opts ...libp2p.Option) *goClient {
	t.Helper()
	h, err := libp2p.New(append([]libp2p.Option{
		libp2p.NoListenAddrs,
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	net := bsnet.NewFromIpfsHost(h)
	bs := bsclient.New(context.Background(), net, nil,
		blockstore.NewBlockstore(dssync.MutexWrap(datastore.NewMapDatastore())))
	net.Start(bs)
	t.Cleanup(func() {
		net.Stop()
		_ = bs.Close()
		_ = h.Close()
	})
	return &goClient{Host: h, bs: bs}
}

// fetch connects to ai and gets one block through it, checking its bytes
// against the node that holds it.
func (c *goClient) fetch(t *testing.T, ai peer.AddrInfo, id cid.Cid, holder *kubotest.Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Connect(ctx, ai); err != nil {
		t.Fatalf("connect to %v: %v", ai.Addrs, err)
	}
	blk, err := c.bs.GetBlock(ctx, id)
	if err != nil {
		t.Fatalf("get %s over %v: %v", id, ai.Addrs, err)
	}
	r, err := holder.API.Block().Get(ctx, path.FromCid(id))
	if err != nil {
		t.Fatal(err)
	}
	want, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(blk.RawData(), want) {
		t.Fatalf("block %s differs from the node's", id)
	}
	for _, p := range c.Network().Peers() {
		if p != ai.ID {
			t.Fatalf("client is connected to %s, not only to Kitsune", p)
		}
	}
}

// selfSignedCert writes a certificate for 127.0.0.1 and its key, and
// returns a pool that trusts it, as a browser would after the operator
// installed it.
func selfSignedCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kitsune test"},
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
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// freeUDPPort finds a loopback UDP port to pin a listener to across a
// restart.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func writeSwarmKey(t *testing.T, file string) {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("/key/swarm/psk/1.0.0/\n/base16/\n"+hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ---- tests ----

// Browsers reach Kitsune over wss (with a certificate they trust),
// WebTransport and WebRTC-direct (no CA certificate: certhash addresses).
// A Go libp2p client with only that one transport fetches a block over
// each; after a restart with the same key the WebRTC-direct address,
// certhash included, is what it was, and a client holding the old address
// still gets in.
func TestBrowserTransportsFetchThroughKitsune(t *testing.T) {
	node := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	var ids []cid.Cid
	for i := range 4 {
		id, err := node.AddBytes(ctx, randomBytes(t, 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	certFile, keyFile, roots := selfSignedCert(t)
	keyPath := filepath.Join(t.TempDir(), "kitsune.key")
	rtcPort := freeUDPPort(t)
	opts := func(c *runCmd) {
		c.Key = keyPath
		c.WS = []string{"/ip4/127.0.0.1/tcp/0/tls/ws"}
		c.TLSCert, c.TLSKey = certFile, keyFile
		c.WebTransport = []string{"/ip4/127.0.0.1/udp/0"}
		c.WebRTCDirect = []string{fmt.Sprintf("/ip4/127.0.0.1/udp/%d", rtcPort)}
	}
	k, out := startFront(t, []*kubotest.Node{node}, opts)
	for _, want := range []string{"/tls/ws/p2p/", "/webtransport/certhash/", "/webrtc-direct/certhash/"} {
		if !strings.Contains(out, want) {
			t.Errorf("startup output lacks a %s address:\n%s", want, out)
		}
	}

	t.Run("wss", func(t *testing.T) {
		start := time.Now()
		c := newGoClient(t, libp2p.Transport(websocket.New, websocket.WithTLSClientConfig(&tls.Config{RootCAs: roots})))
		c.fetch(t, k.listenAddr(t, proxy.WSS), ids[0], node)
		t.Logf("wss fetch in %v", time.Since(start))

		// Without the certificate in its roots the client is refused,
		// so the fetch above did go through TLS.
		untrusting := newGoClient(t, libp2p.Transport(websocket.New, websocket.WithTLSClientConfig(&tls.Config{RootCAs: x509.NewCertPool()})))
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := untrusting.Connect(cctx, k.listenAddr(t, proxy.WSS)); err == nil {
			t.Fatal("a client that does not trust the certificate connected over wss")
		}
	})
	t.Run("webtransport", func(t *testing.T) {
		start := time.Now()
		c := newGoClient(t, libp2p.Transport(webtransport.New))
		c.fetch(t, k.listenAddr(t, proxy.WebTransport), ids[1], node)
		t.Logf("webtransport fetch in %v", time.Since(start))
	})
	rtc := k.listenAddr(t, proxy.WebRTCDirect)
	t.Run("webrtc-direct", func(t *testing.T) {
		start := time.Now()
		c := newGoClient(t, libp2p.Transport(libp2pwebrtc.New))
		c.fetch(t, rtc, ids[2], node)
		t.Logf("webrtc-direct fetch in %v", time.Since(start))
	})
	if t.Failed() {
		return
	}

	t.Run("webrtc-direct address survives a restart", func(t *testing.T) {
		stopKitsune(t, k)
		k2, _ := startFront(t, []*kubotest.Node{node}, opts)
		again := k2.listenAddr(t, proxy.WebRTCDirect)
		if !again.Addrs[0].Equal(rtc.Addrs[0]) || again.ID != rtc.ID {
			t.Fatalf("WebRTC-direct address changed across a restart:\n before %s/p2p/%s\n after  %s/p2p/%s", rtc.Addrs[0], rtc.ID, again.Addrs[0], again.ID)
		}
		// A browser that kept the old address dials it as is.
		c := newGoClient(t, libp2p.Transport(libp2pwebrtc.New))
		c.fetch(t, rtc, ids[3], node)
	})
}

// Two Kubo nodes in a private network (one swarm.key) fetch content from
// public downstream nodes through Kitsune, over TCP and WebSocket; a Kubo
// node without the key cannot connect; the downstream nodes never see the
// private peers and the private peers see only Kitsune.
func TestPrivateSwarmBridge(t *testing.T) {
	swarmKey := filepath.Join(t.TempDir(), "swarm.key")
	writeSwarmKey(t, swarmKey)
	private := func() *kubotest.Node {
		// A private Kubo node runs TCP and WebSocket only; QUIC would
		// only log a failed listener.
		n := kubotest.Start(t, kubotest.Options{Config: map[string]any{
			"Addresses.Swarm": []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws"},
		}})
		data, err := os.ReadFile(swarmKey)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.Dir, "swarm.key"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		n.Restart(t) // Kubo reads swarm.key at start
		return n
	}
	down := kubotest.Start(t, kubotest.Options{})
	p1, p2 := private(), private()
	ctx := testCtx(t, 2*time.Minute)

	file1, file2 := randomBytes(t, 300<<10), randomBytes(t, 50<<10)
	cid1, err := down.AddBytes(ctx, file1)
	if err != nil {
		t.Fatal(err)
	}
	cid2, err := down.AddBytes(ctx, file2)
	if err != nil {
		t.Fatal(err)
	}

	k, out := startFront(t, []*kubotest.Node{down}, func(c *runCmd) { c.PSKFile = swarmKey })
	// Kitsune prints the fingerprint Kubo prints, so an operator can see
	// both hold one key.
	kuboOut, err := os.ReadFile(filepath.Join(p1.Dir, "daemon.stdout"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`Swarm key fingerprint: ([0-9a-f]+)`).FindSubmatch(kuboOut)
	if m == nil {
		t.Fatalf("the private Kubo node did not report a private network:\n%s", kuboOut)
	}
	if want := fmt.Sprintf("Upstream side: private network (swarm key fingerprint %s)", m[1]); !strings.Contains(out, want) {
		t.Fatalf("startup output lacks %q:\n%s", want, out)
	}
	if !strings.Contains(out, "Downstream side: public") {
		t.Fatalf("startup output does not say the downstream side is public:\n%s", out)
	}

	if err := p1.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatalf("private node over tcp: %v", err)
	}
	if err := p2.Connect(ctx, k.info(t, "ws")); err != nil {
		t.Fatalf("private node over ws: %v", err)
	}
	got1, err := p1.Cat(ctx, cid1.String())
	if err != nil || !bytes.Equal(got1, file1) {
		t.Fatalf("p1 cat through kitsune: %d bytes, %v", len(got1), err)
	}
	got2, err := p2.Cat(ctx, cid2.String())
	if err != nil || !bytes.Equal(got2, file2) {
		t.Fatalf("p2 cat through kitsune: %d bytes, %v", len(got2), err)
	}

	// A public Kubo node, without the key, cannot complete a connection.
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err = down.Connect(cctx, k.info(t, "tcp"))
	if err == nil {
		t.Fatal("a Kubo node without the swarm key connected to Kitsune's private side")
	}
	t.Logf("Kubo node without the key: %v", err)
	if len(k.front.Network().ConnsToPeer(down.ID)) != 0 {
		t.Fatal("Kitsune's front host holds a connection from the Kubo node without the key")
	}

	downPeers, err := down.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range downPeers {
		if p != k.back.ID() {
			t.Errorf("downstream node is connected to %s, not only to the back host", p)
		}
	}
	for _, n := range []*kubotest.Node{p1, p2} {
		peers, err := n.Peers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(peers, []peer.ID{k.front.ID()}) {
			t.Errorf("private node %s is connected to %v, want only Kitsune", n.ID, peers)
		}
	}
	// Neither side learns the other's addresses: the downstream node's
	// peerstore has never heard of the private peers.
	known, err := down.API.Swarm().KnownAddrs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*kubotest.Node{p1, p2} {
		if _, ok := known[n.ID]; ok {
			t.Errorf("the downstream node knows addresses of private peer %s", n.ID)
		}
	}
}

// Importing a Kubo node's identity (from its config, and an RSA key from
// `ipfs key export`) makes Kitsune answer under that peer ID: a client
// dialling /p2p/<the node's ID> completes the handshake with Kitsune and
// fetches through it.
func TestImportedIdentity(t *testing.T) {
	old := kubotest.Start(t, kubotest.Options{})
	down := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	id1, err := down.AddBytes(ctx, randomBytes(t, 2000))
	if err != nil {
		t.Fatal(err)
	}
	id2, err := down.AddBytes(ctx, randomBytes(t, 3000))
	if err != nil {
		t.Fatal(err)
	}

	// An RSA key, as the js-ipfs era preload nodes had, exported by Kubo.
	rsaKey, err := old.API.Key().Generate(ctx, "preload", options.Key.Type(options.RSAKey), options.Key.Size(2048))
	if err != nil {
		t.Fatal(err)
	}
	exported := filepath.Join(t.TempDir(), "preload.key")
	cmd := exec.Command(kubotest.Binary(t), "key", "export", "preload", "-o", exported)
	cmd.Env = append(os.Environ(), "IPFS_PATH="+old.Dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ipfs key export: %v\n%s", err, out)
	}
	old.Stop() // the node Kitsune replaces

	dir := t.TempDir()
	for _, tc := range []struct {
		name, from string
		want       peer.ID
		block      cid.Cid
	}{
		{"kubo config", old.Dir, old.ID, id1},
		{"ipfs key export (RSA)", exported, rsaKey.ID(), id2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keyFile := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".key")
			var out bytes.Buffer
			if err := (&keyImportCmd{From: tc.from, Key: keyFile, out: &out}).Run(); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), tc.want.String()) {
				t.Fatalf("import output does not name %s: %s", tc.want, out.String())
			}
			k, _ := startFront(t, []*kubotest.Node{down}, func(c *runCmd) { c.Key = keyFile })
			if k.front.ID() != tc.want {
				t.Fatalf("Kitsune runs as %s, want %s", k.front.ID(), tc.want)
			}
			// The client dials the old node's peer ID at Kitsune's
			// address: the handshake proves Kitsune holds that key.
			ai := k.listenAddr(t, proxy.TCP)
			ai.ID = tc.want
			newGoClient(t, libp2p.Transport(tcp.NewTCPTransport)).fetch(t, ai, tc.block, down)
		})
	}
}

// With a per-IP limit, the client beyond it is refused while the clients
// within it and clients from other addresses keep working. go-libp2p
// exempts loopback from per-IP limits, so the test names 127.0.0.2 with
// --conn-limit and dials from there.
func TestPerIPConnectionLimit(t *testing.T) {
	down := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	var ids []cid.Cid
	for i := range 3 {
		id, err := down.AddBytes(ctx, randomBytes(t, 500+i))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	k, _ := startFront(t, []*kubotest.Node{down}, func(c *runCmd) { c.ConnLimit = []string{"127.0.0.2=2"} })
	ai := k.listenAddr(t, proxy.TCP)

	from := func(ip string) *goClient {
		local := &net.TCPAddr{IP: net.ParseIP(ip)}
		return newGoClient(t, libp2p.Transport(tcp.NewTCPTransport, tcp.WithDialerForAddr(func(ma.Multiaddr) (tcp.ContextDialer, error) {
			return &net.Dialer{LocalAddr: local}, nil
		})))
	}
	connect := func(c *goClient) error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return c.Connect(cctx, ai)
	}
	a, b, over := from("127.0.0.2"), from("127.0.0.2"), from("127.0.0.2")
	if err := connect(a); err != nil {
		t.Fatalf("first client from 127.0.0.2: %v", err)
	}
	if err := connect(b); err != nil {
		t.Fatalf("second client from 127.0.0.2: %v", err)
	}
	err := connect(over)
	if err == nil {
		t.Fatal("a third client from 127.0.0.2 connected past --conn-limit 127.0.0.2=2")
	}
	t.Logf("third client refused: %v", err)

	// The clients within the limit, and everyone else, keep working.
	a.fetch(t, ai, ids[0], down)
	from("127.0.0.1").fetch(t, ai, ids[1], down)

	// A slot frees when a client leaves.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "Kitsune to drop the closed connection", func() bool {
		return len(k.front.Network().ConnsToPeer(a.ID())) == 0
	})
	from("127.0.0.2").fetch(t, ai, ids[2], down)
}

// Bad front-door flags are usage errors that say what to change.
func TestFrontFlagErrors(t *testing.T) {
	dir := t.TempDir()
	swarmKey := filepath.Join(dir, "swarm.key")
	writeSwarmKey(t, swarmKey)
	certFile, keyFile, _ := selfSignedCert(t)
	for _, tc := range []struct {
		name string
		set  func(*runCmd)
		want string
	}{
		{"quic with psk", func(c *runCmd) {
			c.PSKFile = swarmKey
			c.Listen = []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
		}, "/ip4/127.0.0.1/udp/0/quic-v1 cannot run on a private network"},
		{"webtransport with psk", func(c *runCmd) {
			c.PSKFile = swarmKey
			c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
			c.WebTransport = []string{"/ip4/127.0.0.1/udp/0"}
		}, "webtransport cannot run on a private network"},
		{"webrtc-direct with psk", func(c *runCmd) {
			c.PSKFile = swarmKey
			c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
			c.WebRTCDirect = []string{"/ip4/127.0.0.1/udp/0"}
		}, "webrtc-direct cannot run on a private network"},
		{"unreadable psk", func(c *runCmd) { c.PSKFile = filepath.Join(dir, "nope") }, "--psk-file: swarm key " + filepath.Join(dir, "nope")},
		{"not a psk", func(c *runCmd) { c.DownstreamPSKFile = certFile }, "--downstream-psk-file: swarm key"},
		{"wss without cert", func(c *runCmd) { c.WS = []string{"/ip4/127.0.0.1/tcp/0/wss"} }, "give --tls-cert and --tls-key"},
		{"cert without wss", func(c *runCmd) { c.TLSCert, c.TLSKey = certFile, keyFile }, "but nothing uses it"},
		{"cert without key", func(c *runCmd) { c.TLSCert = certFile }, "--tls-cert needs --tls-key"},
		{"mismatched cert and key", func(c *runCmd) {
			c.TLSCert, c.TLSKey = certFile, certFile
			c.WS = []string{"/ip4/127.0.0.1/tcp/0/tls/ws"}
		}, "--tls-cert/--tls-key"},
		{"webtransport given a tcp address", func(c *runCmd) { c.WebTransport = []string{"/ip4/127.0.0.1/tcp/1"} }, "--webtransport"},
		{"announce with p2p", func(c *runCmd) {
			c.Announce = []string{"/dns4/example.org/tcp/443/wss/p2p/12D3KooWQYzRKxgERZrTQMnDoHh7ME7qkuYuJDfDjgLX8FZtuR8b"}
		}, "leave out /p2p/"},
		{"bad announce", func(c *runCmd) { c.Announce = []string{"example.org:443"} }, `--announce "example.org:443"`},
		{"bad conn limit", func(c *runCmd) { c.ConnLimit = []string{"10.0.0.0/8"} }, "PREFIX=N"},
		{"bad conn limit count", func(c *runCmd) { c.ConnLimit = []string{"10.0.0.0/8=many"} }, "not a connection count"},
		{"zero per-ip", func(c *runCmd) { c.MaxConnsPerIP = 0 }, "--max-conns-per-ip must be positive"},
		{"relay without duration", func(c *runCmd) { c.Relay, c.RelayDuration = true, 0 }, "--relay-duration must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := defaultRunCmd(t)
			tc.set(c)
			_, err := c.config()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}

	// And the good forms parse.
	c := defaultRunCmd(t)
	c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	c.PSKFile, c.DownstreamPSKFile = swarmKey, swarmKey
	c.ConnLimit = []string{"10.0.0.5=4096", "2001:db8::/48=100"}
	c.Announce = []string{"/dns4/preload.example.org/tcp/443/wss"}
	c.Relay = true
	cfg, err := c.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Front.Front.PSK == nil || cfg.Front.BackPSK == nil || len(cfg.Front.Front.Limits.Networks) != 2 || cfg.Front.Front.Relay == nil {
		t.Fatalf("config: %+v", cfg.Front)
	}
}
