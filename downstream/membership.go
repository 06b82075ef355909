package downstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// ReadMembersFile reads downstream addresses from a file: one address per
// line (multiaddr or URL), blank lines and #-comments ignored. Every line
// is validated, so a typo is reported with its line number instead of
// silently shrinking the fleet.
func ReadMembersFile(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("downstream file: %w", err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		s := sc.Text()
		if i := strings.IndexByte(s, '#'); i >= 0 {
			s = s[:i]
		}
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if _, err := APIURL(s); err != nil {
			return nil, fmt.Errorf("downstream file %s line %d: %w", path, line, err)
		}
		out = append(out, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("downstream file %s: %w", path, err)
	}
	return out, nil
}

// DNSSource turns one DNS name into fleet members: every A and AAAA record
// is a node, the way a Kubernetes headless Service lists its pods.
type DNSSource struct {
	// Name is host:port; Scheme is "http" or "https".
	Name     string
	Scheme   string
	Interval time.Duration
	Resolver *net.Resolver
}

// ParseDNSName checks a --downstream-dns value (host:port).
func ParseDNSName(s string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(s)
	if err != nil || host == "" || port == "" {
		return "", "", fmt.Errorf("downstream DNS name %q: want host:port", s)
	}
	return host, port, nil
}

// Resolve returns the node addresses the name stands for now.
func (d DNSSource) Resolve(ctx context.Context) ([]string, error) {
	host, port, err := ParseDNSName(d.Name)
	if err != nil {
		return nil, err
	}
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	scheme := d.Scheme
	if scheme == "" {
		scheme = "http"
	}
	// One lookup per family: a combined lookup returns what it got when
	// only one family fails, and that partial answer would drop the other
	// family's nodes from the fleet.
	var out []string
	for _, family := range []string{"ip4", "ip6"} {
		ips, err := r.LookupNetIP(ctx, family, host)
		if err != nil {
			var dnsErr *net.DNSError
			if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
				// An authoritative "no such name" (or no records of this
				// family): none here, rather than unreachable.
				continue
			}
			return nil, fmt.Errorf("resolve %s (%s): %w", host, family, err)
		}
		for _, ip := range ips {
			out = append(out, scheme+"://"+net.JoinHostPort(ip.Unmap().String(), port))
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Watch re-resolves the name every Interval and updates the pool's "dns"
// members. A failed lookup keeps the previous members: a DNS hiccup must
// not empty the fleet.
func (d DNSSource) Watch(ctx context.Context, p *Pool, log *zap.Logger) {
	interval := d.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	var last []string
	first := true
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		addrs, err := d.Resolve(cctx)
		cancel()
		switch {
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			log.Warn("downstream DNS lookup failed; keeping the current members", zap.String("name", d.Name), zap.Error(err))
		case first || !slices.Equal(addrs, last):
			if err := p.SetMembers("dns:"+d.Name, addrs); err != nil {
				log.Warn("downstream DNS answer rejected", zap.String("name", d.Name), zap.Error(err))
			} else {
				last, first = addrs, false
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}
