package httpfront

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// KuboRouting finds a Kubo node's /routing/v1 from its RPC API: the
// node's configured Addresses.Gateway (`config Addresses.Gateway`), which
// must name a fixed TCP port (Kubo does not tell over RPC which port a
// /tcp/0 gateway got). An unspecified host (0.0.0.0, ::) is replaced by
// the RPC URL's host. Answers are remembered for TTL, for at most
// MaxEntries nodes.
type KuboRouting struct {
	// Client makes the calls; http.DefaultClient when nil.
	Client *http.Client
	// TTL is how long an answer is remembered (1m when zero): a node
	// restarted with another gateway port is found again after it.
	TTL time.Duration
	// MaxEntries bounds the remembered answers (1024 when zero); past it
	// the oldest are dropped.
	MaxEntries int
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	mu    sync.Mutex
	cache map[string]routingEntry
}

type routingEntry struct {
	url     string
	expires time.Time
}

// RoutingURL implements RoutingLocator.
func (k *KuboRouting) RoutingURL(ctx context.Context, rpcURL string) (string, error) {
	now := k.now()
	k.mu.Lock()
	e, ok := k.cache[rpcURL]
	k.mu.Unlock()
	if ok && now.Before(e.expires) {
		return e.url, nil
	}
	u, err := k.ask(ctx, rpcURL)
	if err != nil {
		return "", err
	}
	k.remember(rpcURL, u, now)
	return u, nil
}

// Len is the number of remembered answers, fresh or not yet swept.
func (k *KuboRouting) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.cache)
}

func (k *KuboRouting) now() time.Time {
	if k.Now != nil {
		return k.Now()
	}
	return time.Now()
}

func (k *KuboRouting) remember(rpcURL, u string, now time.Time) {
	ttl, max := k.TTL, k.MaxEntries
	if ttl <= 0 {
		ttl = time.Minute
	}
	if max <= 0 {
		max = 1024
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cache == nil {
		k.cache = make(map[string]routingEntry)
	}
	for key, e := range k.cache {
		if !now.Before(e.expires) {
			delete(k.cache, key)
		}
	}
	for len(k.cache) >= max {
		// Drop the entry closest to expiry; the fleet is small, so a scan
		// is cheap and happens only when the cache is full.
		oldest := ""
		for key, e := range k.cache {
			if oldest == "" || e.expires.Before(k.cache[oldest].expires) {
				oldest = key
			}
		}
		delete(k.cache, oldest)
	}
	k.cache[rpcURL] = routingEntry{url: u, expires: now.Add(ttl)}
}

func (k *KuboRouting) ask(ctx context.Context, rpcURL string) (string, error) {
	c := k.Client
	if c == nil {
		c = http.DefaultClient
	}
	base, err := url.Parse(rpcURL)
	if err != nil {
		return "", fmt.Errorf("routing API of %s: %w", rpcURL, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		strings.TrimRight(rpcURL, "/")+"/api/v0/config?arg=Addresses.Gateway", nil)
	if err != nil {
		return "", fmt.Errorf("routing API of %s: %w", rpcURL, err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", fmt.Errorf("routing API of %s: %w", rpcURL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxKuboAnswer))
	if err != nil {
		return "", fmt.Errorf("routing API of %s: %w", rpcURL, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("routing API of %s: config Addresses.Gateway: %s: %.200q", rpcURL, resp.Status, body)
	}
	var out struct{ Value json.RawMessage }
	if err := json.Unmarshal(body, &out); err != nil {
		return "", fmt.Errorf("routing API of %s: unreadable config answer %.100q", rpcURL, body)
	}
	u, err := gatewayURL(out.Value, base.Hostname())
	if err != nil {
		return "", fmt.Errorf("routing API of %s: %w", rpcURL, err)
	}
	return u, nil
}

// gatewayURL picks the first usable TCP address of a Kubo
// Addresses.Gateway value (a string or a list of strings).
func gatewayURL(raw json.RawMessage, rpcHost string) (string, error) {
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		var one string
		if err := json.Unmarshal(raw, &one); err != nil {
			return "", fmt.Errorf("Addresses.Gateway is neither a string nor a list: %.100q", raw)
		}
		list = []string{one}
	}
	var why []error
	for _, s := range list {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			why = append(why, fmt.Errorf("%q: %w", s, err))
			continue
		}
		na, err := manet.ToNetAddr(a)
		if err != nil {
			why = append(why, fmt.Errorf("%q is not a TCP address: %w", s, err))
			continue
		}
		tcp, ok := na.(*net.TCPAddr)
		if !ok {
			why = append(why, fmt.Errorf("%q is not a TCP address", s))
			continue
		}
		if tcp.Port == 0 {
			why = append(why, fmt.Errorf("%q has no fixed port: give the gateway one so Kitsune can reach its /routing/v1", s))
			continue
		}
		host := tcp.IP.String()
		if tcp.IP.IsUnspecified() {
			host = rpcHost
		}
		if ip := net.ParseIP(rpcHost); tcp.IP.IsLoopback() && (ip == nil || !ip.IsLoopback()) && rpcHost != "localhost" {
			// The node's own loopback, not Kitsune's.
			why = append(why, fmt.Errorf("%q listens on the node's loopback only, and Kitsune reaches the node at %s: listen on an address Kitsune can reach", s, rpcHost))
			continue
		}
		return "http://" + net.JoinHostPort(host, fmt.Sprint(tcp.Port)), nil
	}
	if len(why) == 0 {
		return "", errors.New("the node has no gateway (Addresses.Gateway is empty), so no /routing/v1")
	}
	return "", errors.Join(why...)
}
