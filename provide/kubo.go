package provide

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/ipfs/go-cid"
)

// KuboPins lists a Kubo node's recursive pins over its RPC API
// (`pin/ls --type=recursive --stream`, one JSON object per line), reading
// no more than max of them.
type KuboPins struct {
	// Client makes the calls; http.DefaultClient when nil.
	Client *http.Client
}

// Pins implements PinLister.
func (k KuboPins) Pins(ctx context.Context, nodeURL string, max int) ([]cid.Cid, error) {
	c := k.Client
	if c == nil {
		c = http.DefaultClient
	}
	u := strings.TrimRight(nodeURL, "/") + "/api/v0/pin/ls?type=recursive&stream=true"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return nil, fmt.Errorf("pin/ls on %s: %w", nodeURL, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("pin/ls on %s: %w", nodeURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("pin/ls on %s: %s: %.200q", nodeURL, resp.Status, body)
	}
	dec := json.NewDecoder(resp.Body)
	var out []cid.Cid
	for len(out) < max {
		var line struct{ Cid string }
		if err := dec.Decode(&line); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("pin/ls on %s: %w", nodeURL, err)
		}
		c, err := cid.Decode(line.Cid)
		if err != nil {
			return nil, fmt.Errorf("pin/ls on %s: %q: %w", nodeURL, line.Cid, err)
		}
		out = append(out, c)
	}
	// An error mid-stream arrives in the X-Stream-Error trailer, readable
	// once the body is drained; a listing cut at max is not drained, and
	// is what was asked for.
	if len(out) < max {
		if e := resp.Trailer.Get("X-Stream-Error"); e != "" {
			return nil, fmt.Errorf("pin/ls on %s: %s", nodeURL, e)
		}
	}
	return out, nil
}
