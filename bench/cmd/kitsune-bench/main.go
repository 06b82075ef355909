// Command kitsune-bench runs Kitsune's benchmarks (see package bench) and
// writes bench/results/results.{json,md} and ratios.png. `make bench`
// builds Kitsune and Kubo first and runs it from the repository root.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"

	"github.com/kitsune-lb/kitsune/bench"
)

func main() {
	bench.MaybeRunForwarder() // this binary is also the floor forwarder

	def := bench.DefaultConfig()
	var (
		kitsune   = flag.String("kitsune", "bin/kitsune", "Kitsune binary to benchmark (the Kubo binary comes from $KITSUNE_KUBO_BIN or .cache/bin/ipfs)")
		out       = flag.String("out", "bench/results", "directory for results.json, results.md and ratios.png; empty writes nothing")
		scenarios = flag.String("scenarios", "1,2,3,4,5,6", "comma-separated scenarios to run (5: the WAN link, needs root for network namespaces; 6: hot content)")
		smoke     = flag.Bool("smoke", false, "tiny sizes and one run of each: checks the harness in seconds")
		runs12    = flag.Int("runs12", def.Runs12, "runs of scenarios 1, 2 and 5")
		runs34    = flag.Int("runs34", def.Runs34, "runs of scenarios 3 and 4")
		fileMiB   = flag.Int("file-mib", def.FileSize/(1<<20), "scenario 1: file size in MiB")
		blocks    = flag.Int("blocks", def.Blocks, "scenario 2: number of 1 KiB blocks")
		clients   = flag.Int("clients", def.Clients, "scenario 3: concurrent clients")
		conns     = flag.Int("conns", def.IdleConns, "scenario 4: idle connections")
		wanMiB    = flag.Int("wan-mib", def.WANFileSize/(1<<20), "scenario 5: file size in MiB")
		hotMiB    = flag.Int("hot-mib", def.HotFileSize/(1<<20), "scenario 6: size in MiB of the file every client fetches")
		kuboOut   = flag.Int("kubo-outstanding-bytes", def.KuboOutstandingBytes, "every Kubo node's Internal.Bitswap.MaxOutstandingBytesPerPeer; 0 leaves Kubo's default (1 MiB)")
		kflags    = flag.String("kitsune-flags", "", "extra flags for Kitsune, space-separated")
		command   = flag.String("command", "", "how this run was started, for the report (default: the command line)")
		profile   = flag.String("profile", "", "instead of benchmarking, record Kitsune's CPU profiles under scenario 1's (and the floor's under the same load), 2's (with a 3 s execution trace), 3's and 6's loads and its heap with scenario 4's idle connections (those of them -scenarios names) into this directory (needs Kitsune's --admin)")
		profSecs  = flag.Int("profile-seconds", 20, "length of each CPU profile")
		selfProf  = flag.String("cpuprofile", "", "write this process's own CPU profile (the in-process clients', mostly) to this file")
	)
	flag.Parse()
	if *selfProf != "" {
		f, err := os.Create(*selfProf)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "kitsune-bench: -cpuprofile:", err)
			os.Exit(2)
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}

	cfg := def
	if *smoke {
		cfg = bench.SmokeConfig()
	} else {
		cfg.Runs12, cfg.Runs34 = *runs12, *runs34
		cfg.FileSize, cfg.Blocks, cfg.Clients, cfg.IdleConns = *fileMiB<<20, *blocks, *clients, *conns
		cfg.WANFileSize = *wanMiB << 20
		cfg.HotFileSize = *hotMiB << 20
	}
	cfg.KuboOutstandingBytes = *kuboOut
	cfg.KitsuneBin = *kitsune
	cfg.KitsuneFlags = strings.Fields(*kflags)
	cfg.Log = os.Stderr
	cfg.Revision = revision()
	for _, s := range strings.Split(*scenarios, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 6 {
			fmt.Fprintf(os.Stderr, "kitsune-bench: -scenarios: %q is not 1-6\n", s)
			os.Exit(2)
		}
		cfg.Scenarios = append(cfg.Scenarios, n)
	}
	if _, err := os.Stat(cfg.KitsuneBin); err != nil {
		fmt.Fprintf(os.Stderr, "kitsune-bench: %v (run `make build`, or give -kitsune)\n", err)
		os.Exit(2)
	}
	if *command == "" {
		*command = strings.Join(os.Args, " ")
	}

	tb, err := bench.NewTB(os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kitsune-bench:", err)
		os.Exit(1)
	}
	// Ctrl-C: stop the daemons and remove the temp dirs. (The processes
	// would die with us anyway: they carry a parent-death signal.)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		fmt.Fprintln(os.Stderr, "kitsune-bench: interrupted, cleaning up")
		tb.Close()
		os.Exit(130)
	}()

	if *profile != "" {
		err := guard(func() error { return bench.Profile(tb, cfg, *profile, *profSecs) })
		tb.Close()
		if err != nil {
			fmt.Fprintln(os.Stderr, "kitsune-bench:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "wrote profiles to %s; read them with `go tool pprof -top FILE`\n", *profile)
		return
	}

	var res *bench.Results
	err = guard(func() (err error) { res, err = bench.Run(tb, cfg); return err })
	tb.Close()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kitsune-bench:", err)
		os.Exit(1)
	}
	res.Command = *command
	fmt.Print(res.Markdown(1))
	if *out != "" {
		if err := res.WriteFiles(*out); err != nil {
			fmt.Fprintln(os.Stderr, "kitsune-bench:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stderr, "wrote %s/results.json, results.md, ratios.png\n", *out)
	}
}

// guard turns a TB.Fatal (from kubotest) into an error.
func guard(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			fe, ok := r.(bench.FatalError)
			if !ok {
				panic(r)
			}
			err = errors.New(fe.Msg)
		}
	}()
	return f()
}

// revision names the Kitsune source the binary was built from, as far as
// git knows: the commit, and whether the work tree had changes.
func revision() string {
	rev, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(rev))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		s += " + uncommitted changes"
	}
	return s
}
