package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/libp2p/go-libp2p/core/crypto"
	pb "github.com/libp2p/go-libp2p/core/crypto/pb"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/proxy"
)

// keyCmd groups the key file commands. Taking over an existing node's
// identity is how Kitsune replaces a preload node that clients have
// hard-coded: same peer ID, new machine behind it.
type keyCmd struct {
	Import keyImportCmd `cmd:"" help:"Copy an existing node's private key into a Kitsune key file, so Kitsune answers under that node's peer ID."`
	Show   keyShowCmd   `cmd:"" help:"Print the peer ID of a key file (Kitsune's, a Kubo config or an 'ipfs key export' file)."`
}

type keyImportCmd struct {
	From string `arg:"" type:"path" placeholder:"SOURCE" help:"A Kubo config file (its Identity.PrivKey is read), a Kubo repository folder (its config), or a file written by 'ipfs key export' (libp2p protobuf or --format=pem-pkcs8-cleartext)."`
	Key  string `short:"k" env:"KITSUNE_KEY" default:"kitsune.key" type:"path" help:"Kitsune key file to write (mode 0600). An existing file is never overwritten."`

	out io.Writer `kong:"-"`
}

type keyShowCmd struct {
	File string `arg:"" optional:"" type:"path" placeholder:"FILE" help:"Key file to read; any SOURCE 'key import' takes. Default: the -k file."`
	Key  string `short:"k" env:"KITSUNE_KEY" default:"kitsune.key" type:"path" help:"Kitsune key file, read when no FILE is given."`

	out io.Writer `kong:"-"`
}

func (c *keyImportCmd) Run() error {
	out := c.out
	if out == nil {
		out = os.Stdout
	}
	key, kind, err := readPrivateKey(c.From)
	if err != nil {
		return usageError{err}
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return usageError{fmt.Errorf("%s: %w", c.From, err)}
	}
	if _, err := os.Stat(c.Key); err == nil {
		// WriteKeyFile refuses too; saying so before anything else keeps
		// the message about the identity that would have been lost.
		return usageError{fmt.Errorf("key file %s already exists; refusing to overwrite it (it may be the only copy of an identity clients use): move it away or give -k another path", c.Key)}
	}
	if err := proxy.WriteKeyFile(c.Key, key); err != nil {
		return err
	}
	fmt.Fprintf(out, "Imported the %s key of peer %s from %s (%s) into %s\n", keyTypeName(key), id, c.From, kind, c.Key)
	fmt.Fprintln(out, "Stop the node it came from before Kitsune takes over: two hosts under one peer ID confuse every peer that meets both.")
	return nil
}

func (c *keyShowCmd) Run() error {
	out := c.out
	if out == nil {
		out = os.Stdout
	}
	file := c.File
	if file == "" {
		file = c.Key
	}
	key, _, err := readPrivateKey(file)
	if err != nil {
		return usageError{err}
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return usageError{fmt.Errorf("%s: %w", file, err)}
	}
	fmt.Fprintln(out, id)
	return nil
}

// readPrivateKey reads a private key from any form a Kubo operator has one
// in, and says which form it found. A key that cannot prove its identity
// (a damaged file) is an error.
func readPrivateKey(path string) (crypto.PrivKey, string, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, "config")
	}
	key, kind, err := decodePrivateKey(path)
	if err != nil {
		return nil, "", err
	}
	if err := proxy.CheckKey(key); err != nil {
		return nil, "", fmt.Errorf("%s: the %s key is damaged: %w", path, kind, err)
	}
	return key, kind, nil
}

func decodePrivateKey(path string) (crypto.PrivKey, string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	trimmed := bytes.TrimSpace(data)
	switch {
	case bytes.HasPrefix(trimmed, []byte("{")):
		key, err := kuboConfigKey(trimmed)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", path, err)
		}
		return key, "Kubo config Identity.PrivKey", nil
	case bytes.HasPrefix(trimmed, []byte("-----BEGIN")):
		key, err := pemKey(trimmed)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", path, err)
		}
		return key, "PEM", nil
	}
	key, err := crypto.UnmarshalPrivateKey(data)
	if err != nil {
		return nil, "", fmt.Errorf("%s: not a Kubo config, an 'ipfs key export' file or a PEM private key: %w", path, err)
	}
	return key, "libp2p protobuf", nil
}

func kuboConfigKey(data []byte) (crypto.PrivKey, error) {
	var cfg struct {
		Identity struct {
			PeerID  string
			PrivKey string
		}
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("not a Kubo config: %w", err)
	}
	if cfg.Identity.PrivKey == "" {
		return nil, errors.New("no Identity.PrivKey in this Kubo config")
	}
	raw, err := base64.StdEncoding.DecodeString(cfg.Identity.PrivKey)
	if err != nil {
		return nil, fmt.Errorf("Identity.PrivKey is not base64: %w", err)
	}
	key, err := crypto.UnmarshalPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("Identity.PrivKey: %w", err)
	}
	// A config whose PeerID does not match its key has been edited by
	// hand; importing it would take over some other identity than the
	// one the operator sees in the file.
	if cfg.Identity.PeerID != "" {
		id, err := peer.IDFromPrivateKey(key)
		if err != nil {
			return nil, err
		}
		if id.String() != cfg.Identity.PeerID {
			return nil, fmt.Errorf("Identity.PrivKey belongs to %s, but Identity.PeerID says %s", id, cfg.Identity.PeerID)
		}
	}
	return key, nil
}

func pemKey(data []byte) (crypto.PrivKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var std any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		std, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		std, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		std, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		if strings.Contains(block.Type, "ENCRYPTED") {
			return nil, errors.New("the PEM key is encrypted; export it with --format=pem-pkcs8-cleartext")
		}
		return nil, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, err
	}
	if k, ok := std.(ed25519.PrivateKey); ok {
		std = &k // crypto.KeyPairFromStdKey wants a pointer
	}
	key, _, err := crypto.KeyPairFromStdKey(std)
	if err != nil {
		return nil, err
	}
	return key, nil
}

func keyTypeName(k crypto.PrivKey) string {
	switch k.Type() {
	case pb.KeyType_RSA:
		return "RSA"
	case pb.KeyType_Ed25519:
		return "Ed25519"
	case pb.KeyType_Secp256k1:
		return "secp256k1"
	case pb.KeyType_ECDSA:
		return "ECDSA"
	}
	return k.Type().String()
}
