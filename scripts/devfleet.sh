#!/usr/bin/env bash
# Starts a throwaway local fleet: two Kubo nodes with sample content,
# Kitsune in front of them, and a third Kubo node connected only to
# Kitsune, then prints how to fetch the sample through Kitsune.
# Ctrl-C stops everything and removes the temporary folder.
set -euo pipefail

KITSUNE=${1:?usage: devfleet.sh KITSUNE_BIN KUBO_BIN}
IPFS=${2:?usage: devfleet.sh KITSUNE_BIN KUBO_BIN}
DIR=$(mktemp -d "${TMPDIR:-/tmp}/kitsune-run.XXXXXX")
PIDS=()

cleanup() {
	trap - INT TERM EXIT
	echo
	echo "Stopping..."
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$DIR"
	echo "Removed $DIR"
}
trap cleanup INT TERM EXIT

# start_kubo NAME: a loopback-only node with random ports, no bootstrap
# peers and no routing, so it only ever talks to who we connect it to.
start_kubo() {
	local name=$1 repo="$DIR/$1"
	IPFS_PATH=$repo "$IPFS" init --profile=test --empty-repo >/dev/null
	IPFS_PATH=$repo "$IPFS" config --json Bootstrap '[]'
	IPFS_PATH=$repo "$IPFS" config Routing.Type none
	IPFS_PATH=$repo "$IPFS" config --json Addresses.Swarm '["/ip4/127.0.0.1/tcp/0"]'
	IPFS_PATH=$repo "$IPFS" config Addresses.API /ip4/127.0.0.1/tcp/0
	IPFS_PATH=$repo "$IPFS" config Addresses.Gateway /ip4/127.0.0.1/tcp/0
	IPFS_PATH=$repo "$IPFS" daemon >"$DIR/$name.log" 2>&1 &
	PIDS+=($!)
}

api_of() {
	local repo="$DIR/$1"
	for _ in $(seq 1 100); do
		if [ -s "$repo/api" ] && IPFS_PATH=$repo "$IPFS" id >/dev/null 2>&1; then
			cat "$repo/api"
			return
		fi
		sleep 0.2
	done
	echo "Kubo node $1 did not start; see $DIR/$1.log" >&2
	exit 1
}

echo "Starting two downstream Kubo nodes in $DIR ..."
start_kubo node1
start_kubo node2
start_kubo client
API1=$(api_of node1)
API2=$(api_of node2)
APIC=$(api_of client)

mkdir -p "$DIR/sample/docs"
echo "Hello from a Kubo node behind Kitsune." >"$DIR/sample/hello.txt"
head -c 4194304 /dev/urandom >"$DIR/sample/random-4MiB.bin"
for i in $(seq 1 20); do echo "document $i" >"$DIR/sample/docs/doc-$i.txt"; done
SAMPLE=$(IPFS_PATH="$DIR/node1" "$IPFS" add -Q -r "$DIR/sample")
HELLO=$(IPFS_PATH="$DIR/node2" "$IPFS" add -Q "$DIR/sample/hello.txt")

# The dashboard on its usual port, or any free one if that is taken.
ADMIN=127.0.0.1:5080
if (exec 3<>/dev/tcp/127.0.0.1/5080) 2>/dev/null; then ADMIN=127.0.0.1:0; fi
"$KITSUNE" -d "$API1,$API2" -l /ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/udp/0/quic-v1 \
	-w /ip4/127.0.0.1/tcp/0/ws -k "$DIR/kitsune.key" --admin "$ADMIN" \
	>"$DIR/kitsune.out" 2>"$DIR/kitsune.log" &
PIDS+=($!)
for _ in $(seq 1 50); do grep -q '/p2p/' "$DIR/kitsune.out" 2>/dev/null && break; sleep 0.2; done
cat "$DIR/kitsune.out"
ADDR=$(grep -m1 -E '/tcp/[0-9]+/p2p/' "$DIR/kitsune.out" | tr -d ' ')
IPFS_PATH="$DIR/client" "$IPFS" swarm connect "$ADDR" >/dev/null

cat <<MSG

Kitsune is running in front of two Kubo nodes (logs: $DIR/kitsune.log).
A third Kubo node (the client) is connected to Kitsune only. Fetch the
sample content through Kitsune with it:

  $IPFS --api $APIC ls $SAMPLE
  $IPFS --api $APIC cat $SAMPLE/hello.txt
  $IPFS --api $APIC cat $HELLO
  $IPFS --api $APIC get -o /tmp/kitsune-sample $SAMPLE

Or connect your own node: ipfs swarm connect $ADDR

Press Ctrl-C to stop everything.
MSG
wait
