package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/zap"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
	"github.com/kitsune-lb/kitsune/proxy"
)

// ledgerWatch polls what an upstream Kubo node holds in its ledger for one
// peer (`ipfs bitswap wantlist --peer`): every want Kitsune's front host
// ever had open there, and what is open now.
type ledgerWatch struct {
	mu   sync.Mutex
	seen map[cid.Cid]time.Time // first time each CID was seen
	now  map[cid.Cid]bool
	stop chan struct{}
	done chan struct{}
}

func watchLedger(t *testing.T, n *kubotest.Node, p peer.ID) *ledgerWatch {
	w := &ledgerWatch{seen: make(map[cid.Cid]time.Time), now: make(map[cid.Cid]bool), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			cs, err := n.Wantlist(ctx, p)
			cancel()
			if err == nil {
				w.mu.Lock()
				clear(w.now)
				for _, c := range cs {
					if _, ok := w.seen[c]; !ok {
						w.seen[c] = time.Now()
					}
					w.now[c] = true
				}
				w.mu.Unlock()
			}
			select {
			case <-w.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(w.close)
	return w
}

func (w *ledgerWatch) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *ledgerWatch) ever(c cid.Cid) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.seen[c]
	return at, ok
}

func (w *ledgerWatch) open(c cid.Cid) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.now[c]
}

// dagPutJSON stores a dag-json node on n.
func dagPutJSON(t *testing.T, ctx context.Context, n *kubotest.Node, doc string) cid.Cid {
	t.Helper()
	var out struct {
		Cid struct {
			Root string `json:"/"`
		}
	}
	err := n.API.Request("dag/put").Option("store-codec", "dag-json").Option("input-codec", "dag-json").
		FileBody(strings.NewReader(doc)).Exec(ctx, &out)
	if err != nil {
		t.Fatal(err)
	}
	c, err := cid.Decode(out.Cid.Root)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func putRaw(t *testing.T, ctx context.Context, n *kubotest.Node, data []byte) cid.Cid {
	t.Helper()
	st, err := n.API.Block().Put(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return st.Path().RootCid()
}

// tryBlock asks n for c, allowing it d to fetch it; it reports whether n
// got it.
func tryBlock(ctx context.Context, n *kubotest.Node, c cid.Cid, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	r, err := n.API.Block().Get(ctx, path.FromCid(c))
	if err != nil {
		return false
	}
	_, err = io.Copy(io.Discard, r)
	return err == nil
}

// Reverse sessions, seen from the upstream peer's side: its ledger for
// Kitsune's front host (`ipfs bitswap wantlist --peer`) only ever holds
// CIDs of the DAG a preload call authorised. A fleet node's want for
// anything else (a block the upstream peer holds outside that DAG, before
// or during the session) never reaches it, and a CID the session
// authorised but nobody fetched is not asked for once the session has
// expired.
//
// The DAG (dag-json): root → {a: a 16 MiB file, b: mid}; mid → {c: mid2};
// mid2 → {d: leaf}. refs with max-depth=2 fetches root, the file's blocks
// (its root at depth 1, its chunks at depth 2), mid and mid2; mid2's
// arrival authorises leaf (depth 3), which the walk never fetches. The
// file's chunks queue in the upstream node's ledger while it serves them:
// they show that the watch sees the session's wants.
func TestReverseWantsOnlyForTheAuthorisedDAG(t *testing.T) {
	down := kubotest.Start(t, kubotest.Options{})
	origin := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	secret := putRaw(t, ctx, origin, randomBytes(t, 2048))
	leaf := putRaw(t, ctx, origin, randomBytes(t, 2048))
	file, err := origin.AddBytes(ctx, randomBytes(t, 16<<20))
	if err != nil {
		t.Fatal(err)
	}
	chunks := refsOf(t, ctx, origin, file)
	mid2 := dagPutJSON(t, ctx, origin, fmt.Sprintf(`{"d":{"/":%q}}`, leaf))
	mid := dagPutJSON(t, ctx, origin, fmt.Sprintf(`{"c":{"/":%q}}`, mid2))
	root := dagPutJSON(t, ctx, origin, fmt.Sprintf(`{"a":{"/":%q},"b":{"/":%q}}`, file, mid))
	inDAG := map[cid.Cid]bool{root: true, file: true, mid: true, mid2: true, leaf: true}
	for _, c := range chunks {
		inDAG[c] = true
	}

	k := startPreloadKitsune(t, down)
	if err := origin.Connect(ctx, k.info(t, "tcp")); err != nil {
		t.Fatal(err)
	}
	w := watchLedger(t, origin, k.front.ID())

	// No session: the fleet node cannot get the secret through Kitsune.
	if tryBlock(ctx, down, secret, 2*time.Second) {
		t.Fatal("the fleet node fetched an upstream peer's block with no preload call")
	}
	// The preload call; meanwhile the fleet node also asks for the secret.
	stolen := make(chan bool, 1)
	go func() {
		time.Sleep(200 * time.Millisecond)
		stolen <- tryBlock(ctx, down, secret, 2*time.Second)
	}()
	refs := reverseRefs(t, k, root.String()+"&max-depth=2")
	if len(refs) < len(chunks)+3 {
		t.Fatalf("%d refs for a DAG of %d blocks to depth 2", len(refs), len(chunks)+4)
	}
	if <-stolen {
		t.Fatal("the fleet node fetched a block outside the preloaded DAG during the session")
	}
	holdsAll(t, down, []string{root.String(), mid2.String(), chunks[len(chunks)-1].String()})
	if ok, err := down.HasBlock(ctx, leaf); err != nil || ok {
		t.Fatalf("the walk fetched leaf (%v): the test needs it authorised but not fetched", err)
	}
	waitReverseEmpty(t, k)
	expired := time.Now()

	// After expiry, a CID the session authorised but nobody fetched.
	if tryBlock(ctx, down, leaf, 2*time.Second) {
		t.Fatal("the fleet node fetched an authorised block after its session expired")
	}
	w.close()
	var fromFile int
	for c, at := range w.seen {
		if !inDAG[c] {
			t.Fatalf("the upstream ledger held %s, outside the preloaded DAG", c)
		}
		if at.After(expired) {
			t.Fatalf("a want for %s reached the upstream peer %v after the session expired", c, at.Sub(expired))
		}
		if c != root && c != mid && c != mid2 && c != leaf {
			fromFile++
		}
	}
	t.Logf("the upstream ledger held %d CIDs from Kitsune, %d of them the file's, all in the DAG", len(w.seen), fromFile)
	if fromFile == 0 {
		t.Fatal("the watch never saw the session's wants in the upstream ledger: it could not have seen a stray one either")
	}
}

// tryBlockLocal reports whether n holds c itself.
func tryBlockLocal(ctx context.Context, t *testing.T, n *kubotest.Node, c cid.Cid) bool {
	t.Helper()
	eventuallyOK := false
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ok, err := n.HasBlock(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			eventuallyOK = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return eventuallyOK
}

// A key file Kitsune cannot use stops it before anything listens, with an
// error naming the file, and the file is left as it was: it may be the
// only copy of an identity clients have hard-coded. The back host's key
// file is held to the same rule.
func TestBadKeyFilesStopKitsune(t *testing.T) {
	good, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := crypto.MarshalPrivateKey(good)
	if err != nil {
		t.Fatal(err)
	}
	damaged := bytes.Clone(raw)
	damaged[len(damaged)-1] ^= 0x01 // the Ed25519 public half
	pub, err := crypto.MarshalPublicKey(good.GetPublic())
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"empty":             {},
		"truncated":         raw[:len(raw)/2],
		"damaged":           damaged,
		"public key":        pub,
		"PEM, not protobuf": []byte("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"),
	}
	for name, data := range cases {
		for _, which := range []string{"front", "back"} {
			t.Run(name+"/"+which, func(t *testing.T) {
				dir := t.TempDir()
				front := filepath.Join(dir, "kitsune.key")
				bad := front
				if which == "back" {
					if err := os.WriteFile(front, raw, 0o600); err != nil {
						t.Fatal(err)
					}
					bad = proxy.BackKeyPath(front)
				}
				if err := os.WriteFile(bad, data, 0o600); err != nil {
					t.Fatal(err)
				}
				c := defaultRunCmd(t)
				c.Key = front
				c.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
				c.WS = nil
				c.Admin = "off"
				cfg, err := c.config()
				if err != nil {
					t.Fatal(err)
				}
				k, err := start(context.Background(), cfg, io.Discard, zap.NewNop())
				if err == nil {
					k.stop()
					<-k.done
					t.Fatalf("Kitsune started with a %s %s key file", name, which)
				}
				if !strings.Contains(err.Error(), bad) {
					t.Fatalf("the error does not name %s: %v", bad, err)
				}
				if after, _ := os.ReadFile(bad); !bytes.Equal(after, data) {
					t.Fatal("the bad key file was changed")
				}
			})
		}
	}
}
