//go:build seedgen

// The seed corpus writers run only with -tags seedgen, so a normal test
// run never skips them: go test -tags seedgen -run TestWrite ./bitswap/
package bitswap

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteFuzzSeeds rewrites testdata/fuzz/FuzzRelayMessages from
// fuzzSeeds (go test -tags seedgen).
func TestWriteFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzRelayMessages")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range fuzzSeeds(t) {
		body := fmt.Sprintf("go test fuzz v1\nbyte(%q)\n[]byte(%q)\n[]byte(%q)\n", rune(s.ctl), s.a, s.b)
		sum := sha256.Sum256([]byte(s.name))
		name := fmt.Sprintf("seed-%x", sum[:8])
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
