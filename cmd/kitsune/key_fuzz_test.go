package main

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/proxy"
)

// FuzzReadPrivateKey: whatever a file handed to `kitsune key import` or
// `kitsune key show` holds (a Kubo config, a PEM file, an `ipfs key
// export` file, or anything else), reading it never panics or changes it,
// and either fails with an error naming the file or yields a key that
// proves its identity, which `key import` then writes as a key file that
// Kitsune loads, and `key show` reads, under the same peer ID.
func FuzzReadPrivateKey(f *testing.F) {
	dir := f.TempDir() // one per worker process
	src, dst := filepath.Join(dir, "source"), filepath.Join(dir, "kitsune.key")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if err := os.WriteFile(src, data, 0o600); err != nil {
			t.Fatal(err)
		}
		key, kind, err := readPrivateKey(src)
		if after, _ := os.ReadFile(src); !bytes.Equal(after, data) {
			t.Fatal("reading the key changed the file")
		}
		if err != nil {
			if !strings.Contains(err.Error(), src) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if kind == "" {
			t.Fatal("no kind named for an accepted key")
		}
		if err := proxy.CheckKey(key); err != nil {
			t.Fatalf("accepted a %s key that fails its own check: %v", kind, err)
		}
		id, err := peer.IDFromPrivateKey(key)
		if err != nil {
			t.Fatalf("accepted a %s key without a peer ID: %v", kind, err)
		}
		if err := proxy.WriteKeyFile(dst, key); err != nil {
			t.Fatalf("cannot write the imported %s key: %v", kind, err)
		}
		loaded, created, err := proxy.LoadOrCreateKey(dst)
		if err != nil || created {
			t.Fatalf("Kitsune cannot load the key file imported from a %s key: created=%v %v", kind, created, err)
		}
		if got, _ := peer.IDFromPrivateKey(loaded); got != id {
			t.Fatalf("imported as %s, runs as %s", id, got)
		}
		shown, _, err := readPrivateKey(dst)
		if err != nil {
			t.Fatalf("key show cannot read the imported key file: %v", err)
		}
		if got, _ := peer.IDFromPrivateKey(shown); got != id {
			t.Fatalf("imported as %s, shown as %s", id, got)
		}
	})
}

// A Kubo config whose Ed25519 key has a damaged public half is refused by
// key import with a clear error, rather than imported as an identity whose
// handshakes all fail.
func TestKeyImportRefusesDamagedKey(t *testing.T) {
	dir := t.TempDir()
	ed, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	raw, _ := crypto.MarshalPrivateKey(ed)
	raw[len(raw)-1] ^= 0x01
	damaged, err := crypto.UnmarshalPrivateKey(raw)
	if err != nil {
		t.Fatalf("libp2p refuses the damaged key itself (%v): this test needs a new damage", err)
	}
	id, _ := peer.IDFromPrivateKey(damaged)
	file := writeKuboConfig(t, filepath.Join(dir, "repo"), damaged, id.String())
	out := filepath.Join(dir, "kitsune.key")
	err = (&keyImportCmd{From: file, Key: out, out: new(bytes.Buffer)}).Run()
	if err == nil || !strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), file) {
		t.Fatalf("import of a damaged key: %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatal("a key file was written from a damaged key")
	}
}
