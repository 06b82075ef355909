package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/libp2p/go-libp2p"
	libp2pwebrtc "github.com/libp2p/go-libp2p/p2p/transport/webrtc"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/kitsune-lb/kitsune/internal/heliatest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/proxy"
)

// browserHeliaDir is the npm project of the browser page: pinned Helia,
// js-libp2p transports and esbuild.
func browserHeliaDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(heliatest.Root(t), "testdata", "helia-browser")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "esbuild", "package.json")); err != nil {
		t.Fatalf("the browser Helia bundle's packages are not installed: run `make helia-browser` (npm ci --prefix testdata/helia-browser): %v", err)
	}
	return dir
}

// buildBrowserBundle bundles testdata/helia-browser/page.js with esbuild
// (on the Node 22 of testdata/helia) into a fresh folder with index.html.
func buildBrowserBundle(t *testing.T) string {
	t.Helper()
	dir := browserHeliaDir(t)
	out := t.TempDir()
	cmd := exec.Command(heliatest.Node(t), filepath.Join(dir, "build.mjs"), out)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("esbuild: %v\n%s", err, b)
	}
	return out
}

// browserFetchResult is what window.kitsuneFetch resolves to.
type browserFetchResult struct {
	OK         bool   `json:"ok"`
	Bytes      int64  `json:"bytes"`
	SHA256     string `json:"sha256"`
	MS         int64  `json:"ms"`
	RemoteAddr string `json:"remoteAddr"`
	UserAgent  string `json:"userAgent"`
	Error      string `json:"error"`
}

// fullListenAddr is Kitsune's listen address for transport with its
// /certhash components and /p2p, as a browser dials it.
func (k *kitsune) fullListenAddr(t *testing.T, transport string) string {
	t.Helper()
	for _, a := range proxy.ListenAddrs(k.front) {
		var bare ma.Multiaddr
		for _, c := range a {
			if c.Code() != ma.P_CERTHASH && c.Code() != ma.P_P2P {
				bare = append(bare, c)
			}
		}
		if tr, err := proxy.TransportOf(bare); err == nil && tr == transport {
			return a.String()
		}
	}
	t.Fatalf("kitsune has no %s address among %v", transport, proxy.ListenAddrs(k.front))
	return ""
}

// Helia bundled for the browser runs in headless Chromium and fetches a
// 6 MiB file the fleet holds through Kitsune over each browser transport:
// WebSockets, WebTransport and WebRTC-direct (both with /certhash, no CA).
// The page checks the sha256. For comparison the same file is fetched by
// stock js-ipfs and Helia in Node (ws) and a Kubo client (tcp) through the
// same Kitsune.
func TestHeliaInChromium(t *testing.T) {
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("this test needs Chromium at %s (apt-get install chromium; .ci/run installs it): %v", chromium, err)
	}
	bundle := buildBrowserBundle(t)
	a, b := kubotest.Start(t, kubotest.Options{}), kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 6*time.Minute)
	file := randomBytes(t, 6<<20)
	sum := sha256.Sum256(file)
	fc := addEverywhere(t, ctx, file, a, b)
	rtcPort := freeUDPPort(t)
	k := startKitsune(t, []*kubotest.Node{a, b}, func(c *runCmd) {
		c.Preload = "127.0.0.1:0" // js-ipfs preloads what it fetches, too
		c.WebTransport = []string{"/ip4/127.0.0.1/udp/0"}
		c.WebRTCDirect = []string{fmt.Sprintf("/ip4/127.0.0.1/udp/%d", rtcPort)}
	})

	// The page, from a loopback origin: a secure context, as WebTransport
	// and crypto.subtle require.
	srv := httptest.NewServer(http.FileServer(http.Dir(bundle)))
	t.Cleanup(srv.Close)

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox, // Chromium runs as root only without its sandbox
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-dev-shm-usage", true),
		// WebRTC to a loopback address: without both, Chromium never sends
		// a STUN packet to Kitsune.
		chromedp.Flag("allow-loopback-in-peer-connection", true),
		chromedp.Flag("disable-features", "WebRtcHideLocalIpsWithMdns"),
		chromedp.UserDataDir(t.TempDir()),
	)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()

	var mu sync.Mutex
	var console []string
	messages := chromedp.Console(bctx)
	go func() {
		for msg, err := range messages {
			if err != nil {
				return
			}
			mu.Lock()
			if len(console) < 200 {
				console = append(console, fmt.Sprintf("%s %s", msg.Type, msg))
			}
			mu.Unlock()
		}
	}()
	consoleText := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(console, "\n")
	}
	if err := chromedp.Do(bctx,
		chromedp.Navigate(srv.URL+"/index.html"),
		chromedp.Poll[chromedp.Void](`window.kitsuneReady === true`, chromedp.WithPollingTimeout(60*time.Second)),
	); err != nil {
		t.Fatalf("loading the page: %v\nconsole:\n%s", err, consoleText())
	}

	timings := map[string]time.Duration{}
	for _, tc := range []struct{ name, transport, marker string }{
		{"ws", proxy.WS, "/ws/"},
		{"webtransport", proxy.WebTransport, "/webtransport/"},
		{"webrtc-direct", proxy.WebRTCDirect, "/webrtc-direct/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := k.fullListenAddr(t, tc.transport)
			expr := fmt.Sprintf("window.kitsuneFetch(%q, %q)", addr, fc.String())
			res, err := chromedp.Run(bctx, chromedp.Evaluate[browserFetchResult](expr, chromedp.EvalAwaitPromise))
			if err != nil {
				t.Fatalf("kitsuneFetch over %s: %v\nconsole:\n%s", tc.name, err, consoleText())
			}
			if !res.OK {
				t.Fatalf("Helia in Chromium over %s (%s): %s\nconsole:\n%s", tc.name, addr, res.Error, consoleText())
			}
			if res.Bytes != int64(len(file)) || res.SHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("over %s: %d bytes, sha256 %s; want %d, %x", tc.name, res.Bytes, res.SHA256, len(file), sum)
			}
			if !strings.Contains(res.RemoteAddr+"/", tc.marker) {
				t.Fatalf("the page's connection went over %s, not %s", res.RemoteAddr, tc.name)
			}
			timings["Chromium "+tc.name] = time.Duration(res.MS) * time.Millisecond
			t.Logf("Helia in %s over %s: %d MiB in %d ms", res.UserAgent, tc.name, len(file)>>20, res.MS)
		})
	}

	// The same file: stock js-ipfs and Helia in Node over ws, a Kubo
	// client over tcp.
	pre, err := url.Parse(k.preload.URL())
	if err != nil {
		t.Fatal(err)
	}
	js := startJSIPFS(t, map[string]any{
		"bootstrap": k.addr(t, "ws").String(),
		"preload":   fmt.Sprintf("/ip4/%s/tcp/%s/http", pre.Hostname(), pre.Port()),
		"cat":       fc.String(),
	})
	js.next(t, "connected", 60*time.Second)
	cat := js.next(t, "cat", 2*time.Minute)
	if cat.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("js-ipfs: %d bytes, sha256 %s", cat.Bytes, cat.SHA256)
	}
	timings["js-ipfs ws"] = time.Duration(cat.MS) * time.Millisecond

	r, err := heliatest.Fetch(ctx, t, k.addr(t, "ws").String(), fc.String())
	if err != nil || !r.OK || r.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("Helia in Node: %+v %v", r, err)
	}
	timings["Node ws"] = time.Duration(r.MS) * time.Millisecond
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got, err := client.Cat(ctx, fc.String())
	if err != nil || sha256.Sum256(got) != sum {
		t.Fatalf("Kubo client: %d bytes, %v", len(got), err)
	}
	timings["Kubo tcp"] = time.Since(start)
	t.Logf("same %d MiB file through Kitsune: %v", len(file)>>20, timings)
}

// go-libp2p's second WebRTC-direct handshake (v2: the client's ICE
// password travels in the server ufrag, no SDP munging, for browsers once
// Chromium stops allowing munging) works against Kitsune's listener, as
// v1 does. js-libp2p (@libp2p/webrtc 6.0.33) still dials v1.
func TestWebRTCDirectHandshakeVersions(t *testing.T) {
	node := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	id, err := node.AddBytes(ctx, randomBytes(t, 4000))
	if err != nil {
		t.Fatal(err)
	}
	rtcPort := freeUDPPort(t)
	k, _ := startFront(t, []*kubotest.Node{node}, func(c *runCmd) {
		c.WebRTCDirect = []string{fmt.Sprintf("/ip4/127.0.0.1/udp/%d", rtcPort)}
	})
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			c := newGoClient(t, libp2p.Transport(libp2pwebrtc.New, libp2pwebrtc.WithDialerVersion(v)))
			c.fetch(t, k.listenAddr(t, proxy.WebRTCDirect), id, node)
		})
	}
}
