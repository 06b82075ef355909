package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/internal/heliatest"
	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/proxy"
)

// jsIPFSEvent is one line of testdata/jsipfs/run.mjs's output.
type jsIPFSEvent struct {
	Event string `json:"event"`
	Error string `json:"error"`
	// connected
	ID    string `json:"id"`
	Agent string `json:"agent"`
	Peers []struct {
		Peer, Addr, Muxer string
	} `json:"peers"`
	// cat
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
	MS     int64  `json:"ms"`
	// added
	Kind string   `json:"kind"`
	CID  string   `json:"cid"`
	Refs []string `json:"refs"`
}

// jsIPFS is a running stock js-ipfs node (run.mjs).
type jsIPFS struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	events chan jsIPFSEvent
	stderr *bytes.Buffer
}

// startJSIPFS runs testdata/jsipfs/run.mjs on the Node 22 the Helia tests
// install, with args as its JSON argument and env added to its
// environment. It fails the test, with the command to fix it, when the npm
// packages are missing.
func startJSIPFS(t *testing.T, args map[string]any, env ...string) *jsIPFS {
	t.Helper()
	node := heliatest.Node(t)
	dir := filepath.Join(heliatest.Root(t), "testdata", "jsipfs")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "ipfs-core", "package.json")); err != nil {
		t.Fatalf("js-ipfs is not installed: run `make jsipfs` (npm ci --prefix testdata/jsipfs): %v", err)
	}
	args["repo"] = filepath.Join(t.TempDir(), "jsipfs-repo")
	raw, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, filepath.Join(dir, "run.mjs"), string(raw))
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	js := &jsIPFS{cmd: cmd, events: make(chan jsIPFSEvent, 16), stderr: &bytes.Buffer{}}
	cmd.Stderr = js.stderr
	if js.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(js.events)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			if !bytes.HasPrefix(sc.Bytes(), []byte("{")) {
				continue // js-ipfs's own progress lines ("generating Ed25519 keypair...")
			}
			var e jsIPFSEvent
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = jsIPFSEvent{Event: "error", Error: "unparsable line: " + sc.Text()}
			}
			js.events <- e
		}
	}()
	t.Cleanup(func() {
		_ = js.stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return js
}

// next returns the next event, failing on an error event, on the end of
// the output, or after d.
func (js *jsIPFS) next(t *testing.T, want string, d time.Duration) jsIPFSEvent {
	t.Helper()
	select {
	case e, ok := <-js.events:
		if !ok {
			t.Fatalf("js-ipfs exited while waiting for %q; stderr:\n%s", want, lastChars(js.stderr.String(), 3000))
		}
		if e.Event != want {
			t.Fatalf("js-ipfs: got %q (%s), want %q; stderr:\n%s", e.Event, e.Error, want, lastChars(js.stderr.String(), 3000))
		}
		return e
	case <-time.After(d):
		t.Fatalf("js-ipfs: no %q within %v; stderr:\n%s", want, d, lastChars(js.stderr.String(), 3000))
	}
	return jsIPFSEvent{}
}

func lastChars(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// The last js-ipfs release, as deployed apps ship it (its own muxer list,
// which is mplex only; only Bootstrap and preload pointed at Kitsune),
// connects over /ws and then /tcp, fetches a file the fleet holds, adds a
// file and a directory, and its own preload calls (HTTPS, as js-ipfs's
// default preload addresses are, served by Kitsune from --tls-cert) make
// the fleet pull every block from it through Kitsune. Once js-ipfs is
// stopped, a Kubo client fetches both through Kitsune.
func TestStockJSIPFS(t *testing.T) {
	a, b := kubotest.Start(t, kubotest.Options{}), kubotest.Start(t, kubotest.Options{})
	client := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 6*time.Minute)
	shared := randomBytes(t, 6<<20)
	sharedCID := addEverywhere(t, ctx, shared, a, b)
	sharedSum := sha256.Sum256(shared)
	tlsDir := t.TempDir()
	certFile, keyFile := filepath.Join(tlsDir, "cert.pem"), filepath.Join(tlsDir, "key.pem")
	writeCert(t, certFile, keyFile, 1)
	k := startKitsune(t, []*kubotest.Node{a, b}, func(c *runCmd) {
		c.Preload = "/ip4/127.0.0.1/tcp/0/https"
		c.TLSCert, c.TLSKey = certFile, keyFile
		c.PreloadGrace = 2 * time.Second
		c.PreloadTimeout = 2 * time.Minute
	})
	pre, err := url.Parse(k.preload.URL())
	if err != nil {
		t.Fatal(err)
	}
	if pre.Scheme != "https" {
		t.Fatalf("preload URL %s is not HTTPS", pre)
	}
	preloadAddr := fmt.Sprintf("/ip4/%s/tcp/%s/https", pre.Hostname(), pre.Port())

	type added struct {
		file     []byte
		fileCID  string
		tree     map[string][]byte
		dirCID   string
		allRefs  []string
		catMS    int64
		transprt string
	}
	var runs []added
	for _, transport := range []string{"ws", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			r := added{file: randomBytes(t, 6<<20), tree: smallFiles(t, 24), transprt: transport}
			filePath := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(filePath, r.file, 0o644); err != nil {
				t.Fatal(err)
			}
			var dir []map[string]string
			for _, p := range slices.Sorted(maps.Keys(r.tree)) {
				dir = append(dir, map[string]string{"path": p, "content": base64.StdEncoding.EncodeToString(r.tree[p])})
			}
			js := startJSIPFS(t, map[string]any{
				"bootstrap": k.addr(t, transport).String(),
				"preload":   preloadAddr,
				"cat":       sharedCID.String(),
				"file":      filePath,
				"dir":       dir,
			}, "NODE_EXTRA_CA_CERTS="+certFile) // the operator's certificate, trusted as a CA-signed one would be

			// Connected to Kitsune over this transport, on mplex (its only
			// muxer), and to no one else.
			conn := js.next(t, "connected", 60*time.Second)
			if conn.Agent != "js-ipfs/0.18.1" {
				t.Errorf("agent %q, want js-ipfs/0.18.1 (the installed ipfs-core is not the pinned one)", conn.Agent)
			}
			if len(conn.Peers) != 1 || conn.Peers[0].Peer != k.front.ID().String() {
				t.Fatalf("js-ipfs peers %+v, want Kitsune (%s) alone", conn.Peers, k.front.ID())
			}
			if !strings.HasSuffix(conn.Peers[0].Addr, "/"+transport) && !strings.Contains(conn.Peers[0].Addr, "/"+transport+"/") {
				t.Errorf("js-ipfs connected over %s, want %s", conn.Peers[0].Addr, transport)
			}
			jsID, err := peer.Decode(conn.ID)
			if err != nil {
				t.Fatal(err)
			}
			conns := k.front.Network().ConnsToPeer(jsID)
			if len(conns) == 0 {
				t.Fatal("Kitsune has no connection to js-ipfs")
			}
			if m := string(conns[0].ConnState().StreamMultiplexer); m != proxy.MplexID {
				t.Errorf("muxer %s, want %s (js-ipfs offers nothing else)", m, proxy.MplexID)
			}

			// A file the fleet holds, fetched through Kitsune.
			cat := js.next(t, "cat", 2*time.Minute)
			if cat.Bytes != int64(len(shared)) || cat.SHA256 != hex.EncodeToString(sharedSum[:]) {
				t.Fatalf("js-ipfs fetched %d bytes with sha256 %s, want %d and %x", cat.Bytes, cat.SHA256, len(shared), sharedSum)
			}
			r.catMS = cat.MS
			t.Logf("js-ipfs 0.18.1 over %s fetched %d MiB through Kitsune in %d ms", transport, len(shared)>>20, cat.MS)

			f := js.next(t, "added", time.Minute)
			d := js.next(t, "added", time.Minute)
			if f.Kind != "file" || d.Kind != "dir" {
				t.Fatalf("added %s then %s, want file then dir", f.Kind, d.Kind)
			}
			r.fileCID, r.dirCID = f.CID, d.CID
			r.allRefs = slices.Concat(f.Refs, d.Refs)
			js.next(t, "ready", time.Minute)

			// Its own preload calls reach Kitsune and end well...
			eventually(t, 2*time.Minute, "js-ipfs's preload calls for the file and the directory to finish", func() bool {
				done := map[string]bool{}
				for _, c := range k.status(t).Preload.Recent {
					if c.Outcome == "ok" {
						done[c.Root] = true
					}
				}
				return done[r.fileCID] && done[r.dirCID]
			})
			// ...and the fleet holds every block (asked offline).
			eventually(t, time.Minute, "the fleet to hold every block js-ipfs added", func() bool {
				return len(missingFromFleet(t, ctx, r.allRefs, a, b)) == 0
			})

			_ = js.stdin.Close()
			js.next(t, "stopped", 30*time.Second)
			eventually(t, 10*time.Second, "js-ipfs's connection to close", func() bool {
				return len(k.front.Network().ConnsToPeer(jsID)) == 0
			})
			runs = append(runs, r)
		})
	}

	// js-ipfs is gone: a Kubo client gets everything through Kitsune.
	if err := client.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		got, err := client.Cat(ctx, r.fileCID)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, r.file) {
			t.Fatalf("file added over %s: client got %d bytes, not what js-ipfs added", r.transprt, len(got))
		}
		dc, err := cid.Decode(r.dirCID)
		if err != nil {
			t.Fatal(err)
		}
		tree, err := client.ReadDir(ctx, dc)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.EqualFunc(tree, r.tree, bytes.Equal) {
			t.Fatalf("directory added over %s: client got %d files, not the %d js-ipfs added", r.transprt, len(tree), len(r.tree))
		}
	}
	if len(runs) != 2 {
		t.Fatalf("%d of 2 js-ipfs runs completed", len(runs))
	}
}

// missingFromFleet returns the refs no node holds.
func missingFromFleet(t *testing.T, ctx context.Context, refs []string, nodes ...*kubotest.Node) []string {
	t.Helper()
	var missing []string
	for _, s := range refs {
		c, err := cid.Decode(s)
		if err != nil {
			t.Fatal(err)
		}
		held := false
		for _, n := range nodes {
			ok, err := n.HasBlock(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if held = ok; held {
				break
			}
		}
		if !held {
			missing = append(missing, s)
		}
	}
	return missing
}
