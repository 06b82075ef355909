//go:build seedgen

// The seed corpus writers run only with -tags seedgen, so a normal test
// run never skips them: go test -tags seedgen -run TestWrite ./proxy/
package proxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// TestWriteKeyFuzzSeeds rewrites testdata/fuzz/FuzzLoadKeyFile (go test -tags
// seedgen): a key of each type libp2p knows, and
// the broken files an operator could end up with.
func TestWriteKeyFuzzSeeds(t *testing.T) {
	seeds := map[string][]byte{"empty": nil, "text": []byte("not a key\n")}
	ed, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	secp, _, _ := crypto.GenerateSecp256k1Key(rand.Reader)
	ecStd, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec, _, _ := crypto.ECDSAKeyPairFromKey(ecStd)
	rsaStd, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaKey, _, _ := crypto.KeyPairFromStdKey(rsaStd)
	for name, k := range map[string]crypto.PrivKey{"ed25519": ed, "secp256k1": secp, "ecdsa": ec, "rsa2048": rsaKey} {
		raw, err := crypto.MarshalPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		seeds[name] = raw
		seeds[name+"-truncated"] = raw[:len(raw)/2]
		seeds[name+"-trailing-newline"] = append(bytes.Clone(raw), '\n')
		pub, _ := crypto.MarshalPublicKey(k.GetPublic())
		seeds[name+"-public-key"] = pub
	}
	writeSeeds(t, "FuzzLoadKeyFile", seeds)
}
