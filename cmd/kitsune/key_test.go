package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/proxy"
)

func peerIDOf(t *testing.T, k crypto.PrivKey) peer.ID {
	t.Helper()
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// kuboConfig writes a config file shaped like Kubo's for key.
func writeKuboConfig(t *testing.T, dir string, key crypto.PrivKey, peerID string) string {
	t.Helper()
	raw, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{
		"Identity":  map[string]any{"PeerID": peerID, "PrivKey": base64.StdEncoding.EncodeToString(raw)},
		"Addresses": map[string]any{"Swarm": []string{"/ip4/0.0.0.0/tcp/4001"}},
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "config")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

func writeKeySource(t *testing.T, file string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// Every form an operator holds a node's key in imports to the same peer
// ID, RSA included, and the result is a key file Kitsune runs with.
func TestKeyImportFormats(t *testing.T) {
	dir := t.TempDir()
	rsaStd, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, _, err := crypto.KeyPairFromStdKey(rsaStd)
	if err != nil {
		t.Fatal(err)
	}
	_, edStd, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edKey, _, err := crypto.KeyPairFromStdKey(&edStd)
	if err != nil {
		t.Fatal(err)
	}
	protobuf := func(k crypto.PrivKey) []byte {
		b, err := crypto.MarshalPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	pkcs8 := func(k any) []byte {
		b, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: b})
	}

	for _, tc := range []struct {
		name, from string
		key        crypto.PrivKey
		kind       string
	}{
		{"kubo config file, RSA", writeKuboConfig(t, filepath.Join(dir, "repo-rsa"), rsaKey, peerIDOf(t, rsaKey).String()), rsaKey, "RSA"},
		{"kubo repository folder, Ed25519", filepath.Dir(writeKuboConfig(t, filepath.Join(dir, "repo-ed"), edKey, peerIDOf(t, edKey).String())), edKey, "Ed25519"},
		{"ipfs key export, RSA", writeKeySource(t, filepath.Join(dir, "rsa.key"), protobuf(rsaKey)), rsaKey, "RSA"},
		{"ipfs key export, Ed25519", writeKeySource(t, filepath.Join(dir, "ed.key"), protobuf(edKey)), edKey, "Ed25519"},
		{"pem-pkcs8-cleartext, RSA", writeKeySource(t, filepath.Join(dir, "rsa.pem"), pkcs8(rsaStd)), rsaKey, "RSA"},
		{"pem-pkcs8-cleartext, Ed25519", writeKeySource(t, filepath.Join(dir, "ed.pem"), pkcs8(edStd)), edKey, "Ed25519"},
		{"PKCS#1 PEM, RSA", writeKeySource(t, filepath.Join(dir, "rsa1.pem"), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaStd)})), rsaKey, "RSA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := peerIDOf(t, tc.key)
			keyFile := filepath.Join(t.TempDir(), "kitsune.key")
			var out bytes.Buffer
			if err := (&keyImportCmd{From: tc.from, Key: keyFile, out: &out}).Run(); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), want.String()) || !strings.Contains(out.String(), tc.kind) {
				t.Errorf("import output %q does not name %s and %s", out.String(), want, tc.kind)
			}
			st, err := os.Stat(keyFile)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
			}
			// What Kitsune itself loads at start.
			loaded, created, err := proxy.LoadOrCreateKey(keyFile)
			if err != nil || created {
				t.Fatalf("load imported key: created=%v err=%v", created, err)
			}
			if !loaded.Equals(tc.key) {
				t.Fatal("imported key differs from the source")
			}
			out.Reset()
			if err := (&keyShowCmd{Key: keyFile, out: &out}).Run(); err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(out.String()) != want.String() {
				t.Errorf("key show printed %q, want %s", out.String(), want)
			}
			out.Reset()
			if err := (&keyShowCmd{File: tc.from, Key: "unused", out: &out}).Run(); err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(out.String()) != want.String() {
				t.Errorf("key show of the source printed %q, want %s", out.String(), want)
			}
		})
	}
}

// An existing key file may hold the only copy of an identity: import
// never replaces it.
func TestKeyImportRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	src, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	from := writeKeySource(t, filepath.Join(dir, "src.key"), marshalKeyForTest(t, src))
	keyFile := filepath.Join(dir, "kitsune.key")
	before := []byte("whatever was there")
	writeKeySource(t, keyFile, before)
	err := (&keyImportCmd{From: from, Key: keyFile, out: &bytes.Buffer{}}).Run()
	var ue usageError
	if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("got %v, want a usage error refusing to overwrite", err)
	}
	after, _ := os.ReadFile(keyFile)
	if !bytes.Equal(after, before) {
		t.Fatal("the existing key file was changed")
	}
}

func TestKeyImportBadInput(t *testing.T) {
	dir := t.TempDir()
	a, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	b, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	for name, tc := range map[string]struct{ from, want string }{
		"garbage":               {writeKeySource(t, filepath.Join(dir, "garbage"), []byte("hello")), "not a Kubo config"},
		"missing":               {filepath.Join(dir, "missing"), "missing"},
		"config without key":    {writeKeySource(t, filepath.Join(dir, "nokey.json"), []byte(`{"Identity":{"PeerID":"x"}}`)), "no Identity.PrivKey"},
		"config with wrong ID":  {writeKuboConfig(t, filepath.Join(dir, "wrong"), a, peerIDOf(t, b).String()), "Identity.PeerID says " + peerIDOf(t, b).String()},
		"encrypted PEM":         {writeKeySource(t, filepath.Join(dir, "enc.pem"), pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}})), "encrypted"},
		"a certificate, no key": {writeKeySource(t, filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})), "not a private key"},
	} {
		t.Run(name, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "kitsune.key")
			err := (&keyImportCmd{From: tc.from, Key: keyFile, out: &bytes.Buffer{}}).Run()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if _, err := os.Stat(keyFile); err == nil {
				t.Fatal("a key file was written from bad input")
			}
		})
	}
}

// `kitsune key ...` reaches the key commands; anything else still runs
// the proxy.
func TestKeyCommandLine(t *testing.T) {
	var c cli
	parser, err := kong.New(&c, kong.Exit(func(int) { t.Fatal("kong tried to exit") }))
	if err != nil {
		t.Fatal(err)
	}
	args := withDefaultCommand([]string{"key", "import", "/some/config", "-k", "/tmp/k.key"}, parser.Model.Children)
	kctx, err := parser.Parse(args)
	if err != nil {
		t.Fatal(err)
	}
	if kctx.Command() != "key import <from>" || c.Key.Import.From != "/some/config" || c.Key.Import.Key != "/tmp/k.key" {
		t.Fatalf("parsed %q: %+v", kctx.Command(), c.Key.Import)
	}
	if got := withDefaultCommand([]string{"-d", "http://127.0.0.1:5001"}, parser.Model.Children); got[0] != "run" {
		t.Fatalf("default command lost: %v", got)
	}
}

func marshalKeyForTest(t *testing.T, k crypto.PrivKey) []byte {
	t.Helper()
	b, err := crypto.MarshalPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
