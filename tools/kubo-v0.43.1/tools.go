//go:build tools

// Package kubo pins Kubo v0.43.1, the version tests and `make run` use by
// default. Kubo v0.43.1's go.mod replaces go-libp2p with a fork the module
// proxy does not serve; a replace directive in a dependency is ignored, so
// requiring the released go-libp2p v0.51.0 here is what makes it build.
package kubo

import _ "github.com/ipfs/kubo/cmd/ipfs"
