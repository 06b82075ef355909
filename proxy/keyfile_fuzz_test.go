package proxy

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// FuzzLoadKeyFile: whatever bytes sit in the key file, LoadOrCreateKey
// never panics, never creates or changes the file, and either returns an
// error naming the file or a key that signs what its public key verifies
// and that a peer ID derives from: Kitsune starts with a working identity
// or not at all.
func FuzzLoadKeyFile(f *testing.F) {
	path := filepath.Join(f.TempDir(), "kitsune.key") // one per worker process
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		key, created, err := LoadOrCreateKey(path)
		after, rerr := os.ReadFile(path)
		if rerr != nil || !bytes.Equal(after, data) {
			t.Fatalf("the key file changed (%v)", rerr)
		}
		if created {
			t.Fatal("a key was created over an existing file")
		}
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		checkKeyWorks(t, key)
	})
}

// A key file whose Ed25519 public half was damaged decodes (libp2p does not
// compare it with the seed), and named a peer ID whose handshakes all fail.
// It is refused, naming the file, and left as it is.
func TestDamagedEd25519KeyIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kitsune.key")
	if _, _, err := LoadOrCreateKey(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)-1] ^= 0x01 // the last byte of the public half
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := crypto.UnmarshalPrivateKey(data); err != nil {
		t.Fatalf("libp2p now refuses the damaged key itself (%v): this test needs a new damage", err)
	}
	_, _, err = LoadOrCreateKey(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("want an error naming %s as damaged, got %v", path, err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, data) {
		t.Fatal("the damaged key file was changed")
	}
}

// checkKeyWorks fails t unless key signs, verifies and names a peer.
func checkKeyWorks(t *testing.T, key crypto.PrivKey) {
	t.Helper()
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatalf("accepted a key without a peer ID: %v", err)
	}
	msg := []byte("kitsune handshake")
	sig, err := key.Sign(msg)
	if err != nil {
		t.Fatalf("accepted a key that cannot sign (%s): %v", id, err)
	}
	if ok, err := key.GetPublic().Verify(msg, sig); !ok || err != nil {
		t.Fatalf("accepted a key whose signatures do not verify (%s): %v", id, err)
	}
	if !id.MatchesPrivateKey(key) {
		t.Fatalf("peer ID %s does not match its key", id)
	}
}

func writeSeeds(t *testing.T, target string, seeds map[string][]byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range seeds {
		sum := sha256.Sum256([]byte(name))
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%s-%x", name, sum[:4])), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
