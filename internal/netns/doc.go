// Package netns builds small throwaway Linux networks for end-to-end tests:
// network namespaces joined by veth pairs, addressed from the documentation
// ranges (198.51.100.0/24, 203.0.113.0/24), with shaped links, and runs real
// processes (Kubo, the Kitsune binary, Node) inside them.
//
// On loopback every peer is "local" to libp2p and to Kubo's Bitswap client,
// links have no delay and no bandwidth limit, so behaviour that depends on
// where a peer sits (broadcast reduction, resource limits per IP, slow
// links) cannot show. Addresses in the documentation ranges count as
// neither private nor loopback to go-multiaddr, like a peer across the
// internet.
//
// One difference from the internet matters: identify hands a peer's every
// listen address on when the connection's address is in a documentation
// range (go-multiaddr counts those neither public nor private), where over
// a public address it keeps the public ones only. A process meant to look
// remote must therefore listen on its world address only, not on 0.0.0.0
// (which adds 127.0.0.1): Kubo treats a peer with any loopback or private
// address as being on its LAN.
//
// # A world per test
//
//	w := netns.New(t)                        // fails the test if namespaces cannot be made
//	srv := w.Namespace("kitsune")            // lo is up
//	cli := w.Namespace("client")
//	l := w.Link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
//	l.Shape(t, netns.Shape{Rate: "50mbit"})  // tbf on both ends' egress
//
// New fails (never skips) when the test cannot make namespaces: not root, no
// `ip` (iproute2). Every namespace is named Prefix + "<pid>-<random>-<label>";
// t.Cleanup kills the processes left inside and deletes the namespaces, and
// New first sweeps namespaces left by earlier test processes that were
// killed before their cleanups ran (their pid no longer exists). Deleting a
// namespace deletes the veth ends in it, so nothing leaks into the host's
// own network, which never gets an address or a route from this package.
//
// # Processes inside
//
//	p := srv.Start(t, exec.Command(bin, args...)) // own process group, killed at cleanup
//	srv.Wrap(cmd)                                 // or: rewrite cmd to run inside, start it yourself
//
// Start puts the process in its own process group with a parent-death
// signal, so a killed test binary takes it along; t.Cleanup kills the group
// and waits. Wrap only rewrites the command (`ip netns exec <name> …`), for
// callers such as kubotest that manage the process themselves.
//
// # Reaching inside from the test
//
//	srv.DialContext(ctx, "tcp", "127.0.0.1:5001")
//	srv.Listen("tcp", "198.51.100.1:0")
//	srv.HTTPClient()
//
// The test process itself stays in the host namespace. DialContext and
// Listen create their socket inside the namespace (on an OS thread switched
// there with setns for the duration of the call), and a socket keeps its
// namespace for life, so a test can talk to a Kubo RPC API on the
// namespace's own 127.0.0.1, or serve from inside it.
//
// # Shaped links
//
// Shape adds a tbf qdisc (rate, queue) to both ends of a link; a short
// queue drops packets under load like a congested link does. This kernel
// has no netem, so delay and jitter come from a userspace proxy built on
// toxiproxy's toxics (github.com/Shopify/toxiproxy/v2, used as a library):
//
//	p := netns.NewProxy(t, srv, "198.51.100.1:0", srv, kitsuneTCP, netns.Delay{OneWay: 20 * time.Millisecond})
//	// dial p.Addr() from the client namespace: 40 ms RTT to Kitsune
//
// The proxy accepts inside one namespace and dials inside another (or the
// same), and carries TCP only (so libp2p over tcp or ws, not QUIC).
package netns
