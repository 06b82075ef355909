package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipfs/boxo/path"
	"github.com/ipfs/go-cid"
	"github.com/ipfs/kubo/client/rpc"

	"github.com/kitsune-lb/kitsune/internal/kubotest"
)

// The preload port in front of a real Kubo node, called as js-ipfs called
// the preload nodes: POST /api/v0/refs?r=true&arg=<cid>.
func TestPreloadE2E(t *testing.T) {
	const limit = 4 * time.Second
	node := kubotest.Start(t, kubotest.Options{})
	ctx := testCtx(t, 2*time.Minute)
	tree := smallFiles(t, 40)
	tree["big.bin"] = randomBytes(t, 1<<20) // four chunks under one root
	dir, err := node.AddDir(ctx, tree)
	if err != nil {
		t.Fatal(err)
	}
	k := startKitsune(t, []*kubotest.Node{node}, func(c *runCmd) {
		c.Preload = "127.0.0.1:0"
		c.PreloadTimeout = limit
	})
	pre := k.preload.URL()
	if pre == "" {
		t.Fatal("preload port not started")
	}
	refsQuery := "/api/v0/refs?r=true&arg=" + dir.String()

	direct := preloadPost(t, node.APIURL+refsQuery, nil)
	wantRefs := preloadRefs(t, direct)
	if direct.StatusCode != http.StatusOK || len(wantRefs) < len(tree)+4 {
		t.Fatalf("direct refs: %d, %d refs", direct.StatusCode, len(wantRefs))
	}

	t.Run("same refs as the node", func(t *testing.T) {
		resp := preloadPost(t, pre+refsQuery, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if got := preloadRefs(t, resp); !slices.Equal(got, wantRefs) {
			t.Fatalf("through Kitsune %d refs, directly %d; first %v vs %v", len(got), len(wantRefs), preloadHead(got), preloadHead(wantRefs))
		}
		if ct := resp.Header.Get("Content-Type"); ct != direct.Header.Get("Content-Type") {
			t.Fatalf("Content-Type %q, node sent %q", ct, direct.Header.Get("Content-Type"))
		}
		if e := resp.Trailer.Get("X-Stream-Error"); e != "" {
			t.Fatalf("X-Stream-Error %q on a complete call", e)
		}
		if id, ok := (poolChooser{k.pool}).PeerOf(node.APIURL); !ok || id != node.ID {
			t.Fatalf("PeerOf(%s) = %s, %v; want %s", node.APIURL, id, ok, node.ID)
		}
		// The other spellings js-ipfs and Kubo's clients use.
		for _, q := range []string{"recursive=true&arg=/ipfs/" + dir.String(), "r&u&arg=" + dir.String()} {
			if got := preloadRefs(t, preloadPost(t, pre+"/api/v0/refs?"+q, nil)); !slices.Equal(got, wantRefs) {
				t.Fatalf("%s: %d refs, want %d", q, len(got), len(wantRefs))
			}
		}
		// Not recursive: the root's direct links only, as the node says.
		q := "/api/v0/refs?arg=" + dir.String()
		if got, want := preloadRefs(t, preloadPost(t, pre+q, nil)), preloadRefs(t, preloadPost(t, node.APIURL+q, nil)); !slices.Equal(got, want) || len(want) >= len(wantRefs) {
			t.Fatalf("non-recursive: %d refs through Kitsune, %d directly", len(got), len(want))
		}
	})

	t.Run("Kubo's client reads it", func(t *testing.T) {
		api, err := rpc.NewURLApiWithClient(pre, &http.Client{})
		if err != nil {
			t.Fatal(err)
		}
		res, err := api.Request("refs", dir.String()).Option("recursive", true).Send(ctx)
		if err != nil || res.Error != nil {
			t.Fatalf("send: %v %v", err, res.Error)
		}
		defer res.Close()
		var got []string
		dec := json.NewDecoder(res.Output)
		for {
			var r struct{ Ref, Err string }
			if err := dec.Decode(&r); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			got = append(got, r.Ref)
		}
		if !slices.Equal(got, wantRefs) {
			t.Fatalf("Kubo client: %d refs, want %d", len(got), len(wantRefs))
		}
	})

	t.Run("a missing path errs as Kubo reports it", func(t *testing.T) {
		q := "/api/v0/refs?r=true&arg=/ipfs/" + dir.String() + "/no-such-file"
		want := preloadPost(t, node.APIURL+q, nil)
		wantBody, _ := io.ReadAll(want.Body)
		got := preloadPost(t, pre+q, nil)
		gotBody, _ := io.ReadAll(got.Body)
		if want.StatusCode < 400 || !strings.Contains(string(wantBody), "no-such-file") {
			t.Fatalf("the node itself answered %d %s", want.StatusCode, wantBody)
		}
		if got.StatusCode != want.StatusCode || string(gotBody) != string(wantBody) {
			t.Fatalf("through Kitsune %d %s\nthe node says %d %s", got.StatusCode, gotBody, want.StatusCode, wantBody)
		}
		api, _ := rpc.NewURLApiWithClient(pre, &http.Client{})
		res, err := api.Request("refs", "/ipfs/"+dir.String()+"/no-such-file").Option("r", true).Send(ctx)
		if err != nil || res.Error == nil || !strings.Contains(res.Error.Message, "no-such-file") {
			t.Fatalf("Kubo client: err %v, res.Error %v", err, res.Error)
		}
	})

	t.Run("a browser page may call it", func(t *testing.T) {
		browser := map[string]string{
			"Origin":         "https://app.example",
			"Referer":        "https://app.example/upload",
			"Sec-Fetch-Mode": "cors",
			"User-Agent":     "Mozilla/5.0",
		}
		if resp := preloadPost(t, node.APIURL+refsQuery, browser); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("the node itself answered a browser Origin with %d; the test assumes Kubo rejects it", resp.StatusCode)
		}
		resp := preloadPost(t, pre+refsQuery, browser)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != "*" {
			t.Fatalf("through Kitsune: %d, Allow-Origin %q", resp.StatusCode, resp.Header.Get("Access-Control-Allow-Origin"))
		}
		if got := preloadRefs(t, resp); !slices.Equal(got, wantRefs) {
			t.Fatalf("browser call: %d refs, want %d", len(got), len(wantRefs))
		}
		req, _ := http.NewRequest(http.MethodOptions, pre+refsQuery, nil)
		req.Header.Set("Origin", "https://app.example")
		req.Header.Set("Access-Control-Request-Method", "POST")
		pf, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		pf.Body.Close()
		if pf.StatusCode != http.StatusNoContent || !strings.Contains(pf.Header.Get("Access-Control-Allow-Methods"), "POST") {
			t.Fatalf("preflight: %d %v", pf.StatusCode, pf.Header)
		}
	})

	t.Run("nothing else reaches the node", func(t *testing.T) {
		for _, p := range []string{"/api/v0/shutdown", "/api/v0/refs/local", "/api/v0/id", "/api/v0/config/show", "/api/v0/repo/gc"} {
			if resp := preloadPost(t, pre+p, nil); resp.StatusCode != http.StatusNotFound {
				t.Fatalf("%s: %d, want 404", p, resp.StatusCode)
			}
		}
		if resp := preloadPost(t, pre+"/api/v0/refs?r=true&arg=nonsense", nil); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("bad CID: %d", resp.StatusCode)
		}
		if ok, err := node.HasBlock(ctx, dir); err != nil || !ok {
			t.Fatalf("the node is not alive and whole after the calls: %v %v", ok, err)
		}
	})

	// Last, since it removes a block: a DAG the node holds all but one
	// block of. Refs stream out while the node is stuck looking for the
	// last one, and the call ends at --preload-timeout with an
	// X-Stream-Error trailer, which Kubo's client reports.
	t.Run("streams, then ends at the time limit", func(t *testing.T) {
		missing, err := cid.Decode(wantRefs[len(wantRefs)-1])
		if err != nil {
			t.Fatal(err)
		}
		if err := node.API.Pin().Rm(ctx, path.FromCid(dir)); err != nil {
			t.Fatal(err)
		}
		if err := node.API.Block().Rm(ctx, path.FromCid(missing)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		resp := preloadPost(t, pre+refsQuery, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
		br := bufio.NewReader(resp.Body)
		var got []string
		var firstAt time.Duration
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				if got == nil {
					firstAt = time.Since(start)
				}
				got = append(got, preloadDecodeRef(t, line))
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("the call did not end cleanly: %v", err)
			}
		}
		took := time.Since(start)
		if !slices.Equal(got, wantRefs[:len(wantRefs)-1]) {
			t.Fatalf("got %d refs before the stall, want %d", len(got), len(wantRefs)-1)
		}
		if firstAt > limit/2 {
			t.Fatalf("first ref after %v: not streamed", firstAt)
		}
		if took < limit || took > limit+5*time.Second {
			t.Fatalf("call ended after %v with a %v limit", took, limit)
		}
		if e := resp.Trailer.Get("X-Stream-Error"); !strings.Contains(e, limit.String()) {
			t.Fatalf("X-Stream-Error %q, want the %v limit named", e, limit)
		}

		api, _ := rpc.NewURLApiWithClient(pre, &http.Client{})
		res, err := api.Request("refs", dir.String()).Option("recursive", true).Send(ctx)
		if err != nil || res.Error != nil {
			t.Fatalf("send: %v %v", err, res.Error)
		}
		defer res.Close()
		_, err = io.ReadAll(res.Output)
		if err == nil || !strings.Contains(err.Error(), limit.String()) {
			t.Fatalf("Kubo's client saw %v, want the limit's stream error", err)
		}
	})
}

func preloadPost(t *testing.T, u string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// preloadRefs reads a whole refs answer and returns its refs, failing on any
// error line or trailer.
func preloadRefs(t *testing.T, resp *http.Response) []string {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if e := resp.Trailer.Get("X-Stream-Error"); e != "" {
		t.Fatalf("X-Stream-Error: %s", e)
	}
	var refs []string
	for _, l := range strings.SplitAfter(string(body), "\n") {
		if l != "" {
			refs = append(refs, preloadDecodeRef(t, l))
		}
	}
	return refs
}

func preloadDecodeRef(t *testing.T, line string) string {
	t.Helper()
	var r struct{ Ref, Err string }
	if err := json.Unmarshal([]byte(line), &r); err != nil || r.Err != "" || r.Ref == "" {
		t.Fatalf("line %q: %v %q", line, err, r.Err)
	}
	return r.Ref
}

func preloadHead(s []string) []string { return s[:min(3, len(s))] }
