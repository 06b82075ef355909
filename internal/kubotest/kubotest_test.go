package kubotest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/core/coreiface/options"
	"github.com/multiformats/go-multihash"
)

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// rawCID names a block nobody has, so wanting it keeps a want open for as
// long as the test likes.
func rawCID(t *testing.T, data []byte) cid.Cid {
	t.Helper()
	c, err := cid.Prefix{Version: 1, Codec: cid.Raw, MhType: multihash.SHA2_256, MhLength: -1}.Sum(data)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// eventually polls cond until it holds; Bitswap state changes arrive
// asynchronously, so a single look would be a race.
func eventually(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBinaryMissingFails(t *testing.T) {
	for _, b := range []struct {
		env  string
		find func(testing.TB) string
	}{{BinaryEnv, Binary}, {CompatBinaryEnv, CompatBinary}} {
		t.Setenv(b.env, filepath.Join(t.TempDir(), "no-such-ipfs"))
		rec := &recordT{TB: t}
		func() {
			defer func() { _ = recover() }()
			b.find(rec)
		}()
		if len(rec.msgs) != 1 || !strings.Contains(rec.msgs[0], "make kubo") || !strings.Contains(rec.msgs[0], b.env) {
			t.Fatalf("%s: want one failure telling the user to run `make kubo` or set %s, got %q", b.env, b.env, rec.msgs)
		}
	}
}

// The compatibility binary really is the older release: a compat subset
// run on the newest Kubo by mistake would prove nothing.
func TestCompatBinaryIsTheOlderRelease(t *testing.T) {
	for _, b := range []struct {
		bin     string
		version string
	}{{Binary(t), Version}, {CompatBinary(t), CompatVersion}} {
		out, err := exec.Command(b.bin, "version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s version: %v: %s", b.bin, err, out)
		}
		if want := "ipfs version " + strings.TrimPrefix(b.version, "v"); strings.TrimSpace(string(out)) != want {
			t.Fatalf("%s reports %q, want %q", b.bin, strings.TrimSpace(string(out)), want)
		}
		t.Logf("%s: %s", b.bin, strings.TrimSpace(string(out)))
	}
}

func TestModuleRoot(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "internal", "kubotest", "doc.go")); err != nil {
		t.Fatalf("module root %s does not contain this package: %v", root, err)
	}
}

func TestBuildTreeRejects(t *testing.T) {
	for _, tree := range []map[string][]byte{
		{"a/../b": nil},
		{"/abs": nil},
		{"a//b": nil},
		{"a": nil, "a/b": nil},
	} {
		if _, err := buildTree(tree); err == nil {
			t.Errorf("buildTree(%v) accepted an invalid tree", slices.Collect(maps.Keys(tree)))
		}
	}
}

func TestTwoNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	started := time.Now()
	a := Start(t, Options{
		WebSocket: true,
		Config:    map[string]any{"Internal.Bitswap.MaxOutstandingBytesPerPeer": 1 << 20},
	})
	b := Start(t, Options{})
	t.Logf("two nodes ready in %v (%s)", time.Since(started), a.AgentVersion)

	if a.ID == b.ID {
		t.Fatal("both nodes have the same peer ID")
	}
	if want := "kubo/" + strings.TrimPrefix(Version, "v"); a.AgentVersion != want && !strings.HasPrefix(a.AgentVersion, want+"/") {
		t.Errorf("agent version %q, want %s", a.AgentVersion, want)
	}
	if !strings.HasPrefix(a.APIURL, "http://127.0.0.1:") {
		t.Errorf("API URL %q is not on loopback", a.APIURL)
	}
	for _, addr := range append(slices.Clone(a.SwarmAddrs), b.SwarmAddrs...) {
		if !strings.HasPrefix(addr.String(), "/ip4/127.0.0.1/") {
			t.Errorf("swarm address %s is not on loopback", addr)
		}
	}
	for _, tr := range []string{"tcp", "quic-v1", "ws"} {
		if len(a.AddrInfoFor(tr).Addrs) == 0 {
			t.Errorf("node A has no %s listen address in %v", tr, a.SwarmAddrs)
		}
	}
	if ws := b.AddrInfoFor("ws").Addrs; len(ws) != 0 {
		t.Errorf("node B listens on ws %v without Options.WebSocket", ws)
	}

	var got struct{ Value json.Number }
	if err := a.API.Request("config", "Internal.Bitswap.MaxOutstandingBytesPerPeer").Exec(ctx, &got); err != nil {
		t.Fatalf("reading back Options.Config: %v", err)
	}
	if got.Value != "1048576" {
		t.Errorf("Options.Config not applied: MaxOutstandingBytesPerPeer = %q", got.Value)
	}

	file := randomBytes(t, 1<<20)
	fileCID, err := a.AddBytes(ctx, file)
	if err != nil {
		t.Fatal(err)
	}
	if fileCID.Version() != 0 {
		t.Errorf("AddBytes gave %s, want a CIDv0 as plain `ipfs add` does", fileCID)
	}
	tree := map[string][]byte{
		"README":          []byte("top\n"),
		"a/one.txt":       []byte("one\n"),
		"a/b/two.txt":     []byte("two\n"),
		"a/b/c/three.bin": randomBytes(t, 300<<10), // more than one chunk
		"empty":           {},
	}
	dirCID, err := a.AddDir(ctx, tree)
	if err != nil {
		t.Fatal(err)
	}

	// The ws-only dial proves the WebSocket listener carries Bitswap, and
	// everything below runs over it.
	if err := b.Connect(ctx, a.AddrInfoFor("ws")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{a, b} {
		other := a
		if n == a {
			other = b
		}
		eventually(t, "peers to see each other", func() (bool, error) {
			peers, err := n.Peers(ctx)
			return slices.Contains(peers, other.ID), err
		})
	}

	has, err := b.HasBlock(ctx, fileCID)
	if err != nil {
		t.Fatal(err)
	}
	if has {
		t.Fatal("B has the file's root block before fetching it")
	}
	// HasBlock must not have made B go and fetch it.
	time.Sleep(200 * time.Millisecond)
	if has, err := b.HasBlock(ctx, fileCID); err != nil || has {
		t.Fatalf("HasBlock fetched the block: has=%v err=%v", has, err)
	}

	catStart := time.Now()
	gotFile, err := b.Cat(ctx, fileCID.String())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gotFile, file) {
		t.Fatalf("B read %d bytes that differ from the %d A added", len(gotFile), len(file))
	}
	t.Logf("B fetched 1 MiB over ws in %v", time.Since(catStart))
	if has, err := b.HasBlock(ctx, fileCID); err != nil || !has {
		t.Fatalf("after cat, HasBlock = %v, %v; want true", has, err)
	}

	sub, err := b.Cat(ctx, "/ipfs/"+dirCID.String()+"/a/b/two.txt")
	if err != nil {
		t.Fatal(err)
	}
	if string(sub) != "two\n" {
		t.Fatalf("cat of a path inside the directory gave %q", sub)
	}
	gotTree, err := b.ReadDir(ctx, dirCID)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(gotTree, tree, bytes.Equal) {
		t.Fatalf("ReadDir gave %v, want %v", slices.Sorted(maps.Keys(gotTree)), slices.Sorted(maps.Keys(tree)))
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := b.Get(ctx, dirCID, out); err != nil {
		t.Fatal(err)
	}
	for name, want := range tree {
		got, err := os.ReadFile(filepath.Join(out, filepath.FromSlash(name)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("Get wrote %s with different bytes", name)
		}
	}
	if err := b.Get(ctx, dirCID, out); err == nil {
		t.Error("Get overwrote an existing directory")
	}

	t.Run("wantlist", func(t *testing.T) {
		missing := randomBytes(t, 1024)
		want := rawCID(t, missing)
		fetched := make(chan error, 1)
		go func() {
			data, err := b.Cat(ctx, want.String())
			if err == nil && !bytes.Equal(data, missing) {
				err = errors.New("fetched bytes differ")
			}
			fetched <- err
		}()
		eventually(t, "B's own wantlist to hold the block", func() (bool, error) {
			wl, err := b.OwnWantlist(ctx)
			return slices.Contains(wl, want), err
		})
		eventually(t, "A's ledger for B to hold B's want", func() (bool, error) {
			wl, err := a.Wantlist(ctx, b.ID)
			return slices.Contains(wl, want), err
		})
		if wl, err := b.Wantlist(ctx, a.ID); err != nil || slices.Contains(wl, want) {
			t.Errorf("B thinks A wants the block: %v, %v", wl, err)
		}
		// A kept the want after its DONT_HAVE, so adding the block now
		// pushes it to B without B asking again.
		if _, err := a.API.Block().Put(ctx, bytes.NewReader(missing), options.Block.CidCodec("raw")); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-fetched:
			if err != nil {
				t.Fatalf("B's fetch of the late block: %v", err)
			}
		case <-ctx.Done():
			t.Fatal("B never got the block A added after B asked")
		}
		eventually(t, "B's wantlist to drop the fetched block", func() (bool, error) {
			wl, err := b.OwnWantlist(ctx)
			return !slices.Contains(wl, want), err
		})
	})

	t.Run("pause", func(t *testing.T) {
		a.Pause()
		short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
		_, err := a.Peers(short)
		cancelShort()
		if err == nil {
			t.Error("a paused node answered its API")
		}
		a.Resume()
		var id struct{ ID string }
		if err := a.API.Request("id").Exec(ctx, &id); err != nil {
			t.Fatalf("API after resume: %v", err)
		}
		if id.ID != a.ID.String() {
			t.Fatalf("ID after resume %s, want %s", id.ID, a.ID)
		}
	})

	t.Run("restart", func(t *testing.T) {
		oldID, oldAPI := a.ID, a.APIURL
		restartStart := time.Now()
		a.Restart(t)
		t.Logf("restart took %v", time.Since(restartStart))
		var id struct{ ID string }
		if err := a.API.Request("id").Exec(ctx, &id); err != nil {
			t.Fatal(err)
		}
		if id.ID != oldID.String() {
			t.Fatalf("peer ID changed across restart: %s -> %s", oldID, id.ID)
		}
		if a.APIURL == oldAPI {
			t.Logf("API kept its port %s across restart", oldAPI)
		}
		if has, err := a.HasBlock(ctx, fileCID); err != nil || !has {
			t.Fatalf("after restart A has the file: %v, %v", has, err)
		}

		// A killed daemon must come back too: the stale api file and repo
		// lock are the usual ways that goes wrong.
		a.Kill()
		a.Kill()
		a.Restart(t)
		if err := b.Connect(ctx, a.AddrInfo()); err != nil {
			t.Fatal(err)
		}
		again, err := b.Cat(ctx, "/ipfs/"+dirCID.String()+"/a/b/c/three.bin")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, tree["a/b/c/three.bin"]) {
			t.Fatal("bytes differ after A's restart")
		}
		if err := b.Disconnect(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		eventually(t, "B to drop A after Disconnect", func() (bool, error) {
			peers, err := b.Peers(ctx)
			return !slices.Contains(peers, a.ID), err
		})
	})

	stopStart := time.Now()
	a.Stop()
	a.Stop()
	t.Logf("graceful stop took %v", time.Since(stopStart))
	if _, err := os.Stat(filepath.Join(a.Dir, "api")); err == nil {
		t.Error("api file left behind after a graceful stop")
	}
}

func TestBadConfigFailsFast(t *testing.T) {
	// A bad option must surface as an error naming the problem, not as a
	// 60 s readiness timeout; this runs the failing start in a fake T so
	// the outer test can inspect the message.
	rec := &recordT{TB: t}
	started := time.Now()
	func() {
		defer func() { _ = recover() }()
		Start(rec, Options{Config: map[string]any{"Routing.Type": "no-such-routing"}})
	}()
	if len(rec.msgs) == 0 {
		t.Fatal("Start accepted an invalid Routing.Type")
	}
	msg := rec.msgs[0]
	if took := time.Since(started); took > 30*time.Second {
		t.Errorf("failure took %v; the daemon's exit should end the wait", took)
	}
	if !strings.Contains(msg, "no-such-routing") {
		t.Errorf("failure message does not show the daemon's complaint:\n%s", msg)
	}
	t.Logf("bad config failed in %v:\n%s", time.Since(started), msg)
}

// recordT records Fatalf and Errorf instead of failing the real test, and
// stops the caller of Fatalf with a panic the way FailNow would stop its
// goroutine.
type recordT struct {
	testing.TB
	msgs []string
}

func (r *recordT) Fatalf(format string, args ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
	panic(r)
}

func (r *recordT) Errorf(format string, args ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}

// Skipf is recorded as a failure: a missing Kubo must never turn into a
// skipped, and so silently green, test.
func (r *recordT) Skipf(format string, args ...any) {
	r.msgs = append(r.msgs, "skipped: "+fmt.Sprintf(format, args...))
	panic(r)
}

func (r *recordT) Skip(args ...any) { r.Skipf("%s", fmt.Sprint(args...)) }

func (r *recordT) SkipNow() { r.Skipf("SkipNow") }

func (r *recordT) Helper() {}

func TestCrashIsReported(t *testing.T) {
	rec := &recordT{TB: t}
	// Registered first so it runs last, after Start's cleanup has spoken.
	t.Cleanup(func() {
		if len(rec.msgs) != 1 || !strings.Contains(rec.msgs[0], "exited on its own") {
			t.Errorf("a daemon that died by itself was not reported: %q", rec.msgs)
		}
	})
	n := Start(rec, Options{})
	d := n.current()
	if err := syscall.Kill(d.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.done
}
