package bench

import (
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The CPU clock resolves what /proc's 10 ms ticks cannot: a few
// milliseconds spun on this thread show up, and no more than the process
// spent by the wall clock on two cores.
func TestProcessCPUResolvesMilliseconds(t *testing.T) {
	pid := os.Getpid()
	before, err := processCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	spin(t, 3*time.Millisecond)
	after, err := processCPU(pid)
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start).Seconds()
	if d := after - before; d < 0.003 || d > 8*wall+0.01 {
		t.Fatalf("CPU clock moved %.6f s over a 3 ms spin (%.6f s of wall time)", d, wall)
	}
}

// spin burns d of one OS thread's CPU time. The goroutine is locked to
// its thread: the scheduler may otherwise move it mid-spin to a thread
// whose clock is further on, and the spin ends early (CI saw one end
// after 1.5 ms of wall time).
func spin(t *testing.T, d time.Duration) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		t.Fatal(err)
	}
	end := ts.Nano() + d.Nanoseconds()
	for ts.Nano() < end {
		if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
			t.Fatal(err)
		}
	}
}

// A process that has been reaped has no clock: an error, not a zero.
func TestProcessCPUOfAGoneProcess(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if cpu, err := processCPU(cmd.Process.Pid); err == nil {
		t.Fatalf("reaped process %d: %v s, no error", cmd.Process.Pid, cpu)
	}
}
