package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kitsune-lb/kitsune/internal/geoiptest"
)

// A missing or corrupt --geoip-db stops Kitsune at start with an error
// naming the flag and the file; a good one is opened.
func TestGeoIPFlagConfig(t *testing.T) {
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt.mmdb")
	if err := os.WriteFile(corrupt, []byte("GeoLite2 but not really"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.mmdb")
	geoiptest.Write(t, good, map[string]string{"203.0.113.0/24": "BR"})
	for _, tc := range []struct {
		path string
		want []string // in the error; none means it must open
	}{
		{filepath.Join(dir, "missing.mmdb"), []string{"--geoip-db", "missing.mmdb", "no such file"}},
		{corrupt, []string{"--geoip-db", "corrupt.mmdb", "not a MaxMind (mmdb) database"}},
		{good, nil},
	} {
		c := defaultRunCmd(t)
		c.GeoIPDB = tc.path
		cfg, err := c.config()
		if tc.want == nil {
			if err != nil || cfg.GeoIP == nil {
				t.Errorf("%s: %v", tc.path, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: accepted", tc.path)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.path, err, w)
			}
		}
	}
}
