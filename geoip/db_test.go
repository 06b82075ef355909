package geoip

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kitsune-lb/kitsune/internal/geoiptest"
)

func TestCountryLookup(t *testing.T) {
	path := filepath.Join(t.TempDir(), "country.mmdb")
	geoiptest.Write(t, path, map[string]string{
		"198.51.100.0/25":   "DE",
		"198.51.100.128/25": "JP",
		"203.0.113.0/24":    "BR",
		"2001:db8::/32":     "NZ",
		"192.0.2.0/24":      "bad", // not a two-letter code: never a label
	})
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ ip, want string }{
		{"198.51.100.1", "DE"},
		{"198.51.100.127", "DE"},
		{"198.51.100.200", "JP"},
		{"203.0.113.9", "BR"},
		{"::ffff:203.0.113.9", "BR"},
		{"2001:db8::1", "NZ"},
		{"192.0.2.1", Unknown},
		{"10.0.0.1", Unknown},
		{"127.0.0.1", Unknown},
	} {
		if got := db.Country(netip.MustParseAddr(tc.ip)); got != tc.want {
			t.Errorf("Country(%s) = %q, want %q", tc.ip, got, tc.want)
		}
	}
	if got := db.Country(netip.Addr{}); got != Unknown {
		t.Errorf("Country(invalid) = %q", got)
	}
	if i := db.Info(); i.DatabaseType != "Kitsune-Test-Country" || i.BuildTime.IsZero() || i.Path != path {
		t.Errorf("Info = %+v", i)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.mmdb")
	if err := os.WriteFile(garbage, []byte("not a database at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.mmdb"), "no such file"},
		{garbage, "not a MaxMind (mmdb) database"},
		{dir, "is a directory"},
	} {
		_, err := Open(tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%s) = %v, want an error with %q", tc.path, err, tc.want)
		}
	}
}

// A replaced file is picked up; a bad replacement keeps the previous
// database and says why; a good one after it is picked up again.
func TestReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "country.mmdb")
	ip := netip.MustParseAddr("198.51.100.7")
	geoiptest.Write(t, path, map[string]string{"198.51.100.0/24": "DE"})
	db, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := db.Check(); ok || err != nil {
		t.Fatalf("Check on an unchanged file = %v, %v", ok, err)
	}

	geoiptest.Write(t, path, map[string]string{"198.51.100.0/24": "FR"})
	bump(t, path, 1)
	if ok, err := db.Check(); !ok || err != nil {
		t.Fatalf("Check after a replacement = %v, %v", ok, err)
	}
	if got := db.Country(ip); got != "FR" {
		t.Fatalf("after reload: %s", got)
	}

	if err := os.WriteFile(path, []byte("truncated"), 0o600); err != nil {
		t.Fatal(err)
	}
	bump(t, path, 2)
	if ok, err := db.Check(); ok || err == nil {
		t.Fatalf("Check of a corrupt file = %v, %v", ok, err)
	}
	if got := db.Country(ip); got != "FR" {
		t.Fatalf("a corrupt replacement changed the answer to %s", got)
	}
	if i := db.Info(); !strings.Contains(i.LastError, "not a MaxMind") {
		t.Fatalf("Info.LastError = %q", i.LastError)
	}
	// Refused once, not re-read on every check.
	if ok, err := db.Check(); ok || err != nil {
		t.Fatalf("second Check of the same corrupt file = %v, %v", ok, err)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Check(); err == nil || db.Country(ip) != "FR" {
		t.Fatalf("a removed file: err %v, country %s", err, db.Country(ip))
	}

	geoiptest.Write(t, path, map[string]string{"198.51.100.0/24": "JP"})
	bump(t, path, 3)
	if ok, err := db.Check(); !ok || err != nil {
		t.Fatalf("Check after a good replacement = %v, %v", ok, err)
	}
	if got, i := db.Country(ip), db.Info(); got != "JP" || i.LastError != "" {
		t.Fatalf("after the good replacement: %s, %+v", got, i)
	}
}

// bump gives the file a modification time of its own, so a replacement
// within the file system's timestamp granularity still counts as new.
func bump(t *testing.T, path string, n int) {
	mt := time.Now().Add(time.Duration(n) * time.Hour)
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}
