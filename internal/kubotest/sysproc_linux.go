package kubotest

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// daemonSysProcAttr puts the daemon in its own process group, so signals
// reach all of it and a Ctrl-C meant for `go test` does not race our own
// shutdown, and asks the kernel to kill it if the test binary dies without
// running its cleanups. Pdeathsig fires when the forking OS thread exits;
// the Go runtime does not retire threads unless a goroutine exits while
// locked to one, which this package never does.
func daemonSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// waitStopped returns once every thread of pid is stopped (or after timeout).
// kill(SIGSTOP) returns before the threads have taken the signal, and a
// thread already running can still answer an API call in that window, which
// makes "paused" a lie for a few milliseconds.
func waitStopped(pid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && !allThreadsStopped(pid) {
		time.Sleep(time.Millisecond)
	}
}

func allThreadsStopped(pid int) bool {
	tasks, err := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "stat"))
	if err != nil || len(tasks) == 0 {
		return true // gone, or no procfs: nothing to wait for
	}
	for _, task := range tasks {
		stat, err := os.ReadFile(task)
		if err != nil {
			continue // the thread exited meanwhile
		}
		// The state follows the command name, which may itself hold ") ".
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 || i+2 >= len(stat) {
			continue
		}
		if state := stat[i+2]; state != 'T' && state != 't' && state != 'Z' && state != 'X' {
			return false
		}
	}
	return true
}
