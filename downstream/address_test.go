package downstream

import "testing"

func TestAPIURL(t *testing.T) {
	good := map[string]string{
		"/ip4/10.0.1.42/tcp/5001":            "http://10.0.1.42:5001",
		"/ip6/::1/tcp/5001":                  "http://[::1]:5001",
		"/dns4/kubo-0.kubo/tcp/5001":         "http://kubo-0.kubo:5001",
		"/ip4/127.0.0.1/tcp/5001/http":       "http://127.0.0.1:5001",
		"/dns/api.example.org/tcp/443/https": "https://api.example.org:443",
		"http://127.0.0.1:5001":              "http://127.0.0.1:5001",
		"https://kubo.example.org:8443/":     "https://kubo.example.org:8443",
		" http://[::1]:5001 ":                "http://[::1]:5001",
	}
	for in, want := range good {
		got, err := APIURL(in)
		if err != nil || got != want {
			t.Errorf("APIURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	bad := []string{
		"", "/ip4/10.0.1.42", "/ip4/10.0.1.42/udp/5001", "/ip4/1.2.3.4/tcp/5001/ws",
		"ftp://host:21", "http://host", "http://host:5001/api/v0", "not an address", "/garbage",
	}
	for _, in := range bad {
		if got, err := APIURL(in); err == nil {
			t.Errorf("APIURL(%q) = %q, want an error", in, got)
		}
	}
}
