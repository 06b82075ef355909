package downstream

import (
	"fmt"
	"net"
	"net/url"
	"strings"

	ma "github.com/multiformats/go-multiaddr"
)

// APIURL turns a downstream RPC address into a base URL. Operators give
// either a multiaddr, as the original Kitsune took (/ip4/10.0.1.42/tcp/5001,
// /dns4/kubo-0/tcp/5001, optionally ending in /http or /https), or a plain
// http(s)://host:port URL.
func APIURL(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", fmt.Errorf("empty downstream address")
	}
	if strings.HasPrefix(addr, "/") {
		return multiaddrURL(addr)
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("downstream address %q: %w", addr, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("downstream address %q: want a multiaddr or an http(s):// URL", addr)
	}
	if u.Host == "" || u.Port() == "" {
		return "", fmt.Errorf("downstream address %q: URL needs a host and a port", addr)
	}
	if u.Path != "" && u.Path != "/" {
		return "", fmt.Errorf("downstream address %q: URL must not have a path", addr)
	}
	return u.Scheme + "://" + u.Host, nil
}

func multiaddrURL(addr string) (string, error) {
	m, err := ma.NewMultiaddr(addr)
	if err != nil {
		return "", fmt.Errorf("downstream address %q: %w", addr, err)
	}
	scheme := "http"
	if rest, last := ma.SplitLast(m); last != nil {
		switch last.Protocol().Code {
		case ma.P_HTTPS:
			scheme, m = "https", rest
		case ma.P_HTTP:
			m = rest
		}
	}
	bad := fmt.Errorf("downstream address %q: want /ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>[/http|/https]", addr)
	if len(m) != 2 || m[1].Protocol().Code != ma.P_TCP {
		return "", bad
	}
	switch m[0].Protocol().Code {
	case ma.P_IP4, ma.P_IP6, ma.P_DNS, ma.P_DNS4, ma.P_DNS6:
	default:
		return "", bad
	}
	host, port := m[0].Value(), m[1].Value()
	return scheme + "://" + net.JoinHostPort(host, port), nil
}
