package bench

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat: USER_HZ,
// which Linux fixes at 100 for everything it reports to user space.
const userHZ = 100

// procUsage is what /proc says about one process.
type procUsage struct {
	CPUSeconds float64 // utime + stime
	RSS        int64   // VmRSS, bytes
	PeakRSS    int64   // VmHWM, bytes
}

func readUsage(pid int) (procUsage, error) {
	var u procUsage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// The command name may hold spaces and parentheses: fields are
	// counted from the last ')'. utime and stime are fields 14 and 15,
	// i.e. the 12th and 13th after the state (field 3).
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return u, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return u, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	u.CPUSeconds = float64(ut+st) / userHZ

	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		fs := strings.Fields(v) // "12345 kB"
		if len(fs) != 2 || fs[1] != "kB" {
			return u, fmt.Errorf("/proc/%d/status: %s: %q", pid, k, v)
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return u, err
		}
		if k == "VmRSS" {
			u.RSS = n << 10
		} else {
			u.PeakRSS = n << 10
		}
	}
	if u.RSS == 0 || u.PeakRSS == 0 {
		return u, fmt.Errorf("/proc/%d/status: no VmRSS/VmHWM", pid)
	}
	return u, nil
}

// kuboPID finds the `ipfs daemon` serving the repository dir: kubotest
// keeps the process to itself, and the benchmark wants its RSS and CPU.
func kuboPID(bin, dir string) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	want := "IPFS_PATH=" + dir
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if len(args) < 2 || args[1] != "daemon" || filepath.Base(args[0]) != filepath.Base(bin) {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		// The last IPFS_PATH wins, as it would for the daemon's getenv.
		found := ""
		for kv := range strings.SplitSeq(string(env), "\x00") {
			if strings.HasPrefix(kv, "IPFS_PATH=") {
				found = kv
			}
		}
		if found == want {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no ipfs daemon running on %s", dir)
}
