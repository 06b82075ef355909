//go:build seedgen

// The seed corpus writers run only with -tags seedgen, so a normal test
// run never skips them: go test -tags seedgen -run TestWrite ./cmd/kitsune/
package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// TestWriteKeyImportFuzzSeeds rewrites testdata/fuzz/FuzzReadPrivateKey
// (go test -tags seedgen): every form key import takes, and
// near misses of each.
func TestWriteKeyImportFuzzSeeds(t *testing.T) {
	ed, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	rsaStd, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaKey, _, _ := crypto.KeyPairFromStdKey(rsaStd)
	_, edStd, _ := ed25519.GenerateKey(rand.Reader)
	ecStd, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	config := func(k crypto.PrivKey, peerID string) []byte {
		raw, _ := crypto.MarshalPrivateKey(k)
		if peerID == "" {
			id, _ := peer.IDFromPrivateKey(k)
			peerID = id.String()
		}
		b, _ := json.MarshalIndent(map[string]any{"Identity": map[string]any{"PeerID": peerID, "PrivKey": base64.StdEncoding.EncodeToString(raw)}}, "", "  ")
		return b
	}
	pemOf := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	pkcs8 := func(k any) []byte { der, _ := x509.MarshalPKCS8PrivateKey(k); return der }
	ecDER, _ := x509.MarshalECPrivateKey(ecStd)
	edRaw, _ := crypto.MarshalPrivateKey(ed)
	otherID, _ := peer.IDFromPrivateKey(rsaKey)

	seeds := map[string][]byte{
		"kubo-config-ed25519":    config(ed, ""),
		"kubo-config-rsa":        config(rsaKey, ""),
		"kubo-config-wrong-id":   config(ed, otherID.String()),
		"kubo-config-no-key":     []byte(`{"Identity":{"PeerID":"12D3KooW"}}`),
		"kubo-config-not-base64": []byte(`{"Identity":{"PrivKey":"***"}}`),
		"pem-pkcs8-ed25519":      pemOf("PRIVATE KEY", pkcs8(edStd)),
		"pem-pkcs8-rsa":          pemOf("PRIVATE KEY", pkcs8(rsaStd)),
		"pem-pkcs1-rsa":          pemOf("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaStd)),
		"pem-ec":                 pemOf("EC PRIVATE KEY", ecDER),
		"pem-encrypted":          pemOf("ENCRYPTED PRIVATE KEY", []byte("x")),
		"pem-certificate":        pemOf("CERTIFICATE", []byte("x")),
		"protobuf-ed25519":       edRaw,
		"protobuf-truncated":     edRaw[:20],
		"empty":                  nil,
		"whitespace-then-brace":  []byte(" \n{"),
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzReadPrivateKey")
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
