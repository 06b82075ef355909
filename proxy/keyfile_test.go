package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestLoadOrCreateKeyPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "kitsune.key")
	k1, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("first load: created=%v err=%v", created, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	k2, created, err := LoadOrCreateKey(path)
	if err != nil || created {
		t.Fatalf("second load: created=%v err=%v", created, err)
	}
	id1, _ := peer.IDFromPrivateKey(k1)
	id2, _ := peer.IDFromPrivateKey(k2)
	if id1 != id2 {
		t.Fatalf("peer ID changed across loads: %s != %s", id1, id2)
	}
	if k1.Type() != 1 { // pb.KeyType_Ed25519
		t.Fatalf("new key type %v, want Ed25519", k1.Type())
	}
}

func TestCorruptKeyFileIsNeverOverwritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kitsune.key")
	garbage := []byte("not a key at all")
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadOrCreateKey(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("want an error naming %s, got %v", path, err)
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(after) != string(garbage) {
		t.Fatal("corrupt key file was modified")
	}
}

func TestUnreadableKeyFileIsAnError(t *testing.T) {
	// A directory where the key should be cannot be read as a file.
	path := filepath.Join(t.TempDir(), "kitsune.key")
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("want an error naming %s, got %v", path, err)
	}
}

func TestWriteKeyFileRefusesToOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kitsune.key")
	k, _, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if err := WriteKeyFile(path, k); err == nil {
		t.Fatal("WriteKeyFile replaced an existing file")
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Fatal("existing key file changed")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temporary files left behind: %v", entries)
	}
}
