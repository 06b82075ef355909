package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/kitsune-lb/kitsune/doctor"
	"github.com/kitsune-lb/kitsune/downstream"
)

// doctorCmd checks the fleet's Kubo nodes against what Kitsune needs. It
// takes the fleet as run does and only reads from the nodes.
type doctorCmd struct {
	Downstream     []string      `short:"d" env:"KITSUNE_DOWNSTREAM" sep:"," placeholder:"ADDR" help:"Comma-separated RPC API addresses of the Kubo nodes to check, as run takes them."`
	DownstreamDNS  string        `name:"downstream-dns" env:"KITSUNE_DOWNSTREAM_DNS" placeholder:"HOST:PORT" help:"DNS name and RPC port whose A/AAAA records are the nodes, resolved once."`
	DNSServer      string        `name:"dns-server" env:"KITSUNE_DNS_SERVER" placeholder:"HOST:PORT" help:"DNS server for --downstream-dns instead of the system resolver."`
	DownstreamFile string        `name:"downstream-file" env:"KITSUNE_DOWNSTREAM_FILE" type:"path" placeholder:"PATH" help:"File listing RPC addresses, one per line (# comments)."`
	Key            string        `short:"k" env:"KITSUNE_KEY" default:"kitsune.key" type:"path" help:"Kitsune's key file; the back host's peer ID is read from <file>.back, which doctor never creates."`
	JSON           bool          `name:"json" help:"Print the results as JSON (one object with a results list) instead of a table."`
	Timeout        time.Duration `default:"5s" help:"Timeout of each request and dial."`
	backKeyFlags   `embed:""`

	out io.Writer `kong:"-"`
}

// errChecksFailed makes doctor exit 1 after printing its results.
var errChecksFailed = errors.New("doctor: some checks failed")

func (c *doctorCmd) Run() error {
	out := c.out
	if out == nil {
		out = os.Stdout
	}
	if c.Timeout <= 0 {
		return usageError{fmt.Errorf("--timeout must be positive, got %v", c.Timeout)}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	urls, err := c.fleet(ctx)
	if err != nil {
		return usageError{err}
	}
	results := runDoctor(ctx, backHost(c.backKeyFlags.path(c.Key), c.Key), urls, c.Timeout)
	if c.JSON {
		err = writeDoctorJSON(out, results)
	} else {
		err = writeDoctorTable(out, results, len(urls))
	}
	if err != nil {
		return err
	}
	if doctor.Failed(results) {
		return errChecksFailed
	}
	return nil
}

// fleet is the union of -d, the DNS name and the file, as RPC URLs.
func (c *doctorCmd) fleet(ctx context.Context) ([]string, error) {
	var addrs []string
	for _, d := range c.Downstream {
		if d = strings.TrimSpace(d); d != "" {
			addrs = append(addrs, d)
		}
	}
	if c.DownstreamDNS != "" {
		if _, _, err := downstream.ParseDNSName(c.DownstreamDNS); err != nil {
			return nil, fmt.Errorf("--downstream-dns: %w", err)
		}
		src, err := dnsSource(c.DownstreamDNS, c.DNSServer, time.Minute)
		if err != nil {
			return nil, err
		}
		got, err := src.Resolve(ctx)
		if err != nil {
			return nil, fmt.Errorf("--downstream-dns: %w", err)
		}
		addrs = append(addrs, got...)
	}
	if c.DownstreamFile != "" {
		got, err := downstream.ReadMembersFile(c.DownstreamFile)
		if err != nil {
			return nil, err
		}
		addrs = append(addrs, got...)
	}
	var urls []string
	for _, a := range addrs {
		u, err := downstream.APIURL(a)
		if err != nil {
			return nil, err
		}
		urls = append(urls, u)
	}
	slices.Sort(urls)
	urls = slices.Compact(urls)
	if len(urls) == 0 {
		return nil, errors.New("no downstream nodes: give -d, --downstream-dns or --downstream-file")
	}
	return urls, nil
}

// backHost reads the back host's peer ID from its key file (path), without
// creating anything.
func backHost(path, keyFile string) doctor.Kitsune {
	if _, err := os.Stat(path); err != nil {
		return doctor.Kitsune{BackErr: fmt.Sprintf("no back host key at %s (Kitsune creates it on its first start with -k %s; doctor does not)", path, keyFile)}
	}
	key, _, err := readPrivateKey(path)
	if err != nil {
		return doctor.Kitsune{BackErr: err.Error()}
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		return doctor.Kitsune{BackErr: fmt.Sprintf("%s: %v", path, err)}
	}
	return doctor.Kitsune{BackID: id.String()}
}

// runDoctor gathers every node's facts, a few at a time, and checks them;
// results keep the nodes' order.
func runDoctor(ctx context.Context, k doctor.Kitsune, urls []string, timeout time.Duration) []doctor.Result {
	per := make([][]doctor.Result, len(urls))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			per[i] = doctor.Check(k, doctor.Gather(ctx, u, timeout))
		}()
	}
	wg.Wait()
	var all []doctor.Result
	for _, rs := range per {
		all = append(all, rs...)
	}
	return all
}

func writeDoctorTable(w io.Writer, rs []doctor.Result, nodes int) error {
	// The fix goes on a line of its own under the reason, whole, so it
	// can be copied; the reason stays readable in a terminal.
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tCHECK\tSTATUS\tREASON")
	count := map[doctor.Status]int{}
	for _, r := range rs {
		count[r.Status]++
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Node, r.Check, r.Status, r.Reason)
		if r.Fix != "" {
			fmt.Fprintf(tw, "\t\t\tfix: %s\n", r.Fix)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%d nodes, %d checks: %d ok, %d warn, %d fail.", nodes, len(rs), count[doctor.OK], count[doctor.Warn], count[doctor.Fail])
	if err == nil && count[doctor.OK] != len(rs) {
		_, err = fmt.Fprint(w, " Run a node's fixes on that node (IPFS_PATH set, or --api), then restart it: Kubo reads its config at start.")
	}
	if err == nil {
		_, err = fmt.Fprintln(w)
	}
	return err
}

func writeDoctorJSON(w io.Writer, rs []doctor.Result) error {
	if rs == nil {
		rs = []doctor.Result{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		OK      bool            `json:"ok"`
		Results []doctor.Result `json:"results"`
	}{!doctor.Failed(rs), rs})
}
