// Package geoiptest writes small MaxMind-format country databases for
// tests, with github.com/maxmind/mmdbwriter, in the layout GeoLite2
// Country uses (country.iso_code).
package geoiptest

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/maxmind/mmdbwriter"
	"github.com/maxmind/mmdbwriter/mmdbtype"
)

// Write writes a country database mapping each CIDR prefix to an ISO
// country code to path, through a temporary file and a rename so a
// reader polling path never sees half a file.
func Write(t testing.TB, path string, countries map[string]string) {
	t.Helper()
	tree, err := mmdbwriter.New(mmdbwriter.Options{
		DatabaseType: "Kitsune-Test-Country",
		Description:  map[string]string{"en": "test database"},
		RecordSize:   24,
		BuildEpoch:   time.Now().Unix(),
		// The documentation ranges tests use are reserved networks, which
		// mmdbwriter leaves out by default.
		IncludeReservedNetworks: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	for prefix, code := range countries {
		_, n, err := net.ParseCIDR(prefix)
		if err != nil {
			t.Fatal(err)
		}
		rec := mmdbtype.Map{"country": mmdbtype.Map{"iso_code": mmdbtype.String(code)}}
		if err := tree.Insert(n, rec); err != nil {
			t.Fatalf("inserting %s: %v", prefix, err)
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".mmdb-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tree.WriteTo(tmp); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
}
