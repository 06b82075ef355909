package kubotest

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	modulePath = "github.com/kitsune-lb/kitsune"

	// BinaryEnv overrides where the Kubo binary is looked up, for running
	// the tests against a Kubo built elsewhere.
	BinaryEnv = "KITSUNE_KUBO_BIN"
	// CompatBinaryEnv overrides where the older Kubo of the compatibility
	// subset is looked up.
	CompatBinaryEnv = "KITSUNE_KUBO_COMPAT_BIN"

	// Version is the Kubo release the tests run by default, CompatVersion
	// the older one a compatibility subset runs fleet and client on. They
	// match KUBO_VER and KUBO_COMPAT_VER in the Makefile, which builds them
	// to .cache/bin/ipfs-<version>.
	Version       = "v0.43.1"
	CompatVersion = "v0.41.0"
)

// Binary returns the path of the Kubo binary: $KITSUNE_KUBO_BIN if set, else
// <module root>/.cache/bin/ipfs-<Version>. A missing binary fails the test
// rather than skipping it, so a machine without Kubo cannot report a green
// run that never exercised Kubo.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := findBinary(BinaryEnv, Version)
	if err != nil {
		t.Fatalf("kubotest: %v", err)
	}
	return bin
}

// CompatBinary returns the older Kubo of the compatibility subset:
// $KITSUNE_KUBO_COMPAT_BIN if set, else .cache/bin/ipfs-<CompatVersion>.
// Like Binary, a missing binary fails the test.
func CompatBinary(t testing.TB) string {
	t.Helper()
	bin, err := findBinary(CompatBinaryEnv, CompatVersion)
	if err != nil {
		t.Fatalf("kubotest: %v", err)
	}
	return bin
}

func findBinary(env, version string) (string, error) {
	bin := os.Getenv(env)
	if bin == "" {
		root, err := moduleRoot()
		if err != nil {
			return "", fmt.Errorf("locating the Kubo binary: %w (set %s to a Kubo %s binary)", err, env, version)
		}
		bin = filepath.Join(root, ".cache", "bin", "ipfs-"+version)
	}
	fi, err := os.Stat(bin)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("the Kubo binary %s does not exist: run `make kubo` at the repository root to build it (or set %s)", bin, env)
	case err != nil:
		return "", fmt.Errorf("the Kubo binary: %w", err)
	case fi.IsDir() || fi.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("the Kubo binary %s is not an executable file: run `make kubo` to rebuild it (or set %s)", bin, env)
	}
	return bin, nil
}

// moduleRoot walks up from the working directory because `go test` runs each
// package in its own directory, at any depth below the root.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		mod, err := modulePathOf(filepath.Join(dir, "go.mod"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		if mod == modulePath {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod declaring module %s above the working directory", modulePath)
		}
		dir = parent
	}
}

func modulePathOf(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "//"); i >= 0 {
			line = line[:i]
		}
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "module")
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '\t') {
			continue
		}
		return strings.Trim(strings.TrimSpace(rest), `"`), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading %s: %w", gomod, err)
	}
	return "", nil
}
