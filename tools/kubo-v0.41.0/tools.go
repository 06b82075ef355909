//go:build tools

// Package kubo pins Kubo v0.41.0, the older release a compatibility subset
// of the tests runs fleet and client on (KITSUNE_KUBO_COMPAT_BIN). The
// Makefile builds github.com/ipfs/kubo/cmd/ipfs from this module because the
// module proxy here does not list versions, so `go install pkg@version` fails.
package kubo

import _ "github.com/ipfs/kubo/cmd/ipfs"
