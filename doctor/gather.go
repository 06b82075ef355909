package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// maxBody bounds what is read of one RPC answer (a config is a few KiB).
const maxBody = 4 << 20

// Gather asks the node at apiURL (http://host:port) what Check needs:
// version, identity and addresses, config, a TCP dial of each swarm
// address, and a probe of its gateway. It only reads: every RPC call is
// a query. timeout bounds each request and dial.
func Gather(ctx context.Context, apiURL string, timeout time.Duration) Facts {
	f := Facts{URL: apiURL}
	g := gatherer{base: strings.TrimRight(apiURL, "/"), timeout: timeout,
		client: &http.Client{Timeout: timeout, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}}

	var ver struct{ Version string }
	local, err := g.rpc(ctx, "version", &ver)
	if err != nil {
		f.RPCErr = err.Error()
		return f
	}
	f.Version, f.LocalIP = ver.Version, local

	var id struct {
		ID        string
		Addresses []string
	}
	if _, err := g.rpc(ctx, "id", &id); err != nil {
		f.RPCErr = err.Error()
		return f
	}
	f.PeerID = id.ID
	for _, a := range id.Addresses {
		// Kubo lists a bare /p2p/<id> when Addresses.NoAnnounce hides
		// every address: nothing to dial.
		if m, err := ma.NewMultiaddr(a); err == nil {
			if t, _ := peer.SplitAddr(m); len(t) > 0 {
				f.Addrs = append(f.Addrs, a)
			}
		}
	}
	f.Dials, f.LocalIP = dialSwarm(ctx, f.Addrs, timeout, f.LocalIP)
	var listen struct{ Strings []string }
	if _, err := g.rpc(ctx, "swarm/addrs/listen", &listen); err == nil {
		f.Listen = listen.Strings
	}

	var cfg Config
	if _, err := g.rpc(ctx, "config/show", &cfg); err != nil {
		f.ConfigErr = err.Error()
	} else {
		f.Config = &cfg
		f.Gateway, f.GatewayErr = g.probeGateway(ctx, cfg.Addresses.Gateway)
	}
	return f
}

type gatherer struct {
	base    string
	timeout time.Duration
	client  *http.Client
}

// rpc POSTs one read-only RPC command and decodes its JSON answer. It
// returns the local IP of the connection: the address the node sees us at.
func (g gatherer) rpc(ctx context.Context, cmd string, v any) (string, error) {
	var local string
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if a, ok := i.Conn.LocalAddr().(*net.TCPAddr); ok {
			local = a.IP.String()
		}
	}}
	ctx, cancel := context.WithTimeout(httptrace.WithClientTrace(ctx, trace), g.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.base+"/api/v0/"+cmd, nil)
	if err != nil {
		return "", err
	}
	resp, err := g.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return "", fmt.Errorf("/api/v0/%s: %w", cmd, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("/api/v0/%s: %s: %s", cmd, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return "", fmt.Errorf("/api/v0/%s: %w", cmd, err)
	}
	return local, nil
}

// dialSwarm opens (and closes) a TCP connection to each TCP swarm address,
// as the back host would (Kitsune prefers TCP to its fleet). The local IP
// of a successful dial replaces the RPC connection's.
func dialSwarm(ctx context.Context, addrs []string, timeout time.Duration, local string) ([]Dial, string) {
	var out []Dial
	for _, s := range addrs {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}
		m, _ = peer.SplitAddr(m)
		if m == nil || len(m) < 2 || m[1].Protocol().Code != ma.P_TCP {
			continue // QUIC, WebTransport, circuits: not what Kitsune dials first
		}
		if _, err := m.ValueForProtocol(ma.P_CIRCUIT); err == nil {
			continue
		}
		_, hostport, err := manet.DialArgs(ma.Multiaddr(m[:2]))
		if err != nil {
			continue
		}
		d := Dial{Addr: ma.Multiaddr(m).String()}
		dctx, cancel := context.WithTimeout(ctx, timeout)
		var nd net.Dialer
		c, err := nd.DialContext(dctx, "tcp", hostport)
		cancel()
		if err != nil {
			d.Err = shortErr(err)
		} else {
			if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
				local = a.IP.String()
			}
			c.Close()
		}
		out = append(out, d)
	}
	return out, local
}

// probeGateway fetches the empty identity block (bafkqaaa, which needs no
// network) from the node's first gateway address, on the RPC API's host
// when the gateway listens on all interfaces.
func (g gatherer) probeGateway(ctx context.Context, addrs Strings) (string, string) {
	if len(addrs) == 0 {
		return "", ""
	}
	m, err := ma.NewMultiaddr(addrs[0])
	if err != nil {
		return addrs[0], "unreadable Addresses.Gateway: " + err.Error()
	}
	_, hostport, err := manet.DialArgs(m)
	if err != nil {
		return addrs[0], err.Error()
	}
	host, port, _ := net.SplitHostPort(hostport)
	if port == "0" {
		return addrs[0], "Addresses.Gateway has port 0, a random port each start, so nothing can be pointed at it"
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if u, err := url.Parse(g.base); err == nil {
			host = u.Hostname()
		}
	}
	gw := "http://" + net.JoinHostPort(host, port)
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, gw+"/ipfs/bafkqaaa", nil)
	if err != nil {
		return gw, err.Error()
	}
	req.Header.Set("Accept", "application/vnd.ipld.raw")
	resp, err := g.client.Do(req)
	if err != nil {
		return gw, shortErr(err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return gw, resp.Status
	}
	return gw, ""
}

// shortErr drops Go's "dial tcp 1.2.3.4:5->": the address is in the row.
func shortErr(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}
