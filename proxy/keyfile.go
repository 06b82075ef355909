package proxy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// LoadOrCreateKey returns the private key stored at path, creating an Ed25519
// key there (mode 0600) when the file does not exist. A file that exists but
// cannot be read or parsed is an error naming the file: it may hold the only
// copy of an identity that clients have hard-coded, so it is never replaced.
func LoadOrCreateKey(path string) (key crypto.PrivKey, created bool, err error) {
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		key, err := crypto.UnmarshalPrivateKey(data)
		if err != nil {
			return nil, false, fmt.Errorf("key file %s: not a libp2p private key: %w", path, err)
		}
		if err := CheckKey(key); err != nil {
			return nil, false, fmt.Errorf("key file %s is damaged: %w", path, err)
		}
		return key, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, fmt.Errorf("key file %s: %w", path, err)
	}

	key, _, err = crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, false, fmt.Errorf("generate key for %s: %w", path, err)
	}
	if err := WriteKeyFile(path, key); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// CheckKey reports a private key that cannot prove its own identity: its
// signatures do not verify under its public key. libp2p's decoder does not
// check that the public half stored in an Ed25519 key belongs to its seed,
// so a damaged file can decode into such a key, with a peer ID of its
// public half: the host would start and then fail every handshake.
func CheckKey(key crypto.PrivKey) error {
	msg := []byte("kitsune key check")
	sig, err := key.Sign(msg)
	if err != nil {
		return fmt.Errorf("the key cannot sign: %w", err)
	}
	if ok, err := key.GetPublic().Verify(msg, sig); err != nil || !ok {
		return errors.New("its private and public halves do not belong together")
	}
	return nil
}

// WriteKeyFile stores key at path with mode 0600. It refuses to replace an
// existing file: the key is written to a temporary file and hard-linked into
// place, so a concurrent writer or a crash never leaves a half-written key
// under the real name.
func WriteKeyFile(path string, key crypto.PrivKey) error {
	data, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key for %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("key file %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("key file %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("key file %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("key file %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("key file %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("key file %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("key file %s already exists; refusing to overwrite it", path)
		}
		return fmt.Errorf("key file %s: %w", path, err)
	}
	return nil
}

// BackKeyPath is where the back host's key lives: beside the front key, so
// one folder holds both identities and operators can find the back host's
// peer ID for their Kubo nodes' Peering.Peers and allowlists.
func BackKeyPath(frontKeyPath string) string {
	return frontKeyPath + ".back"
}
