package httpfront

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/ipfs/go-cid"
)

// KuboChecker asks a Kubo node over its RPC API whether it holds a block,
// with `block/stat --offline`: the node looks in its own blockstore and
// never asks the network, so the answer costs one local lookup.
type KuboChecker struct {
	// Client makes the calls; a keep-alive client when nil. The context
	// passed to Has bounds each call.
	Client *http.Client
}

// maxKuboAnswer bounds what is read of a block/stat answer; a real one is
// under 200 bytes.
const maxKuboAnswer = 16 << 10

// Has implements Checker. A node that answers that the block is not found
// locally gives (false, nil); any other failure is an error.
func (k KuboChecker) Has(ctx context.Context, nodeURL string, c cid.Cid) (bool, error) {
	client := k.Client
	if client == nil {
		client = http.DefaultClient
	}
	u := strings.TrimRight(nodeURL, "/") + "/api/v0/block/stat?" + url.Values{"arg": {c.String()}, "offline": {"true"}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return false, fmt.Errorf("block/stat on %s: %w", nodeURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, fmt.Errorf("block/stat on %s: %w", nodeURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxKuboAnswer))
	if err != nil {
		return false, fmt.Errorf("block/stat on %s: %w", nodeURL, err)
	}
	if resp.StatusCode == http.StatusOK {
		var st struct{ Key string }
		if err := json.Unmarshal(body, &st); err != nil || st.Key == "" {
			return false, fmt.Errorf("block/stat on %s: unreadable answer %.100q", nodeURL, body)
		}
		return true, nil
	}
	var e struct{ Message string }
	_ = json.Unmarshal(body, &e)
	// Kubo 0.41 answers 500 "block was not found locally (offline):
	// ipld: could not find <cid>" for a block it does not hold.
	if m := strings.ToLower(e.Message); strings.Contains(m, "not found") || strings.Contains(m, "could not find") {
		return false, nil
	}
	return false, fmt.Errorf("block/stat on %s: %s: %.200q", nodeURL, resp.Status, body)
}
