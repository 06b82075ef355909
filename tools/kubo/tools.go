//go:build tools

// Package kubo pins the Kubo version that tests and `make run` use. The
// Makefile builds github.com/ipfs/kubo/cmd/ipfs from this module because the
// module proxy here does not list versions, so `go install pkg@version` fails.
package kubo

import _ "github.com/ipfs/kubo/cmd/ipfs"
