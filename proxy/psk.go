package proxy

import (
	"crypto/sha3"
	"fmt"
	"os"

	"github.com/libp2p/go-libp2p/core/pnet"
	"golang.org/x/crypto/salsa20"
)

// LoadPSK reads a pre-shared key in the swarm.key format Kubo uses for
// private networks:
//
//	/key/swarm/psk/1.0.0/
//	/base16/
//	<64 hex digits>
func LoadPSK(path string) (pnet.PSK, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("swarm key %s: %w", path, err)
	}
	defer f.Close()
	psk, err := pnet.DecodeV1PSK(f)
	if err != nil {
		return nil, fmt.Errorf("swarm key %s: not a /key/swarm/psk/1.0.0/ key: %w", path, err)
	}
	return psk, nil
}

// PSKFingerprint is the fingerprint Kubo prints at start ("Swarm key
// fingerprint: ..."), so an operator can check that Kitsune and the nodes
// hold the same key without printing the key itself. Kubo's own words: the
// key is run through Salsa20 first so it is never fed to a hash function,
// then Shake-128 shortens it to 16 bytes.
func PSKFingerprint(psk pnet.PSK) []byte {
	var key [32]byte
	copy(key[:], psk)
	enc := make([]byte, 64)
	salsa20.XORKeyStream(enc, make([]byte, 64), []byte("finprint"), &key)
	return sha3.SumSHAKE128(enc, 16)
}
