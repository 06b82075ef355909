package preload

import (
	"net/http"
	"net/netip"
	"strings"
)

// ClientIP is clientIP for the other HTTP fronts (httpfront), so every
// port reads X-Forwarded-For the same way.
func ClientIP(r *http.Request, trusted []netip.Prefix) netip.Addr { return clientIP(r, trusted) }

// clientIP returns the caller's address: the connection's remote IP, or,
// when that is a trusted proxy, the first X-Forwarded-For hop from the
// right that is not itself a trusted proxy. Hops are read from the right
// because each proxy appends the address it saw; everything left of the
// first untrusted hop was written by the client and proves nothing. A hop
// that does not parse stops the walk at the last trusted hop.
func clientIP(r *http.Request, trusted []netip.Prefix) netip.Addr {
	ip := parseHop(r.RemoteAddr)
	if !ip.IsValid() || !isTrusted(ip, trusted) {
		return ip
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a := parseHop(hops[i])
		if !a.IsValid() {
			break
		}
		ip = a
		if !isTrusted(a, trusted) {
			break
		}
	}
	return ip
}

// parseHop reads "1.2.3.4", "1.2.3.4:5678", "::1" or "[::1]:5678".
func parseHop(s string) netip.Addr {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return netip.Addr{}
		}
		a = ap.Addr()
	}
	return a.Unmap().WithZone("")
}

func isTrusted(ip netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}
