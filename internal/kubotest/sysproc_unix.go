//go:build unix && !linux

package kubotest

import (
	"syscall"
	"time"
)

// daemonSysProcAttr puts the daemon in its own process group so signals reach
// all of it. Only Linux can also tie the daemon's life to the test binary's.
func daemonSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// waitStopped cannot see thread states without procfs, so it gives the
// SIGSTOP a moment to land on every thread.
func waitStopped(pid int, timeout time.Duration) {
	time.Sleep(min(timeout, 100*time.Millisecond))
}
