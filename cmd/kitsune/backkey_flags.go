package main

import "github.com/kitsune-lb/kitsune/proxy"

// backKeyFlags place the back host's identity, the one the Kubo fleet
// sees. Replicas share the front key but each needs its own back key: the
// fleet opens its reply streams to a peer ID over whichever connection to
// it looks best, so replicas sharing one back identity would get each
// other's blocks and reverse-session wants.
type backKeyFlags struct {
	BackKey string `name:"back-key" env:"KITSUNE_BACK_KEY" type:"path" placeholder:"FILE" help:"Key file of the back host (the identity the Kubo fleet sees); created if missing, never overwritten. Default: the --key file with .back appended. Replicas sharing --key need one each (docs/deploy.md)."`
}

func (f *backKeyFlags) path(frontKey string) string {
	if f.BackKey != "" {
		return f.BackKey
	}
	return proxy.BackKeyPath(frontKey)
}
