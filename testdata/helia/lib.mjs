// Shared pieces of the Helia test client scripts (fetch.mjs, add.mjs).
//
// The node built here is as close as we can get to what a browser running
// Helia brings to Kitsune: js-libp2p with the WebSocket transport, Noise,
// Yamux, identify (Helia finds Bitswap peers through identify) and Helia's
// own Bitswap block broker. Everything that would reach outside the machine
// or find peers by itself is left out on purpose: no bootstrap list, no
// trustless-gateway broker, no mDNS, no DHT, and no listen addresses (a
// browser cannot listen either), so the only peer the node ever talks to is
// the one the test tells it to dial, or the one the delegated router the
// test names (createNode's routers, none by default) tells it of.

import { parseArgs } from 'node:util'
import { createHash } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { delegatedHTTPRouter } from '@helia/delegated-routing-client'
import { withLibp2pLight } from '@helia/libp2p'
import { identify } from '@libp2p/identify'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createHeliaLight } from 'helia'

// createNode returns a started Helia node with an in-memory blockstore.
// routers are delegated routing (/routing/v1) base URLs; Helia's Bitswap
// asks them for providers of each block it wants and dials what they name.
export async function createNode (routers = []) {
  // createHeliaLight + withLibp2pLight + withBitswap is what createHelia()
  // does minus withHTTP (gateways, delegated routing) and minus
  // libp2pDefaults (every transport, bootstrap, DHT, ...).
  const helia = withBitswap(withLibp2pLight(createHeliaLight(), {
    addresses: { listen: [] },
    transports: [webSockets()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    // The default gater refuses nothing in Node, but a browser build refuses
    // private and loopback addresses; say "allow all" so both behave alike.
    connectionGater: { denyDialMultiaddr: () => false },
    services: { identify: identify() }
  }))
  for (const url of routers) {
    // The same router createHelia() adds for https://delegated-ipfs.dev,
    // with its default protocol and address filters.
    helia.addRouter(delegatedHTTPRouter({ url }))
  }
  await helia.start()
  return helia
}

// dial connects to addr, a multiaddr string that must end in /p2p/<id> (the
// Noise handshake checks that key). No need to wait for identify before
// wanting blocks: once identify shows the peer speaks Bitswap, Helia sends it
// the whole current wantlist.
export async function dial (helia, addr, signal) {
  return helia.libp2p.dial(multiaddr(addr), { signal })
}

// args parses the command line; spec maps option names to
// { type: 'string' | 'boolean' } as in node:util parseArgs.
export function args (spec) {
  const { values } = parseArgs({ options: spec, strict: true, allowPositionals: false })
  return values
}

export function sha256 () {
  return createHash('sha256')
}

// emit prints exactly one JSON line on stdout; the Go side reads the first
// line that parses as JSON, so nothing else may go to stdout.
export function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

// errorText flattens an error (AggregateError included) into one line.
export function errorText (err) {
  if (err == null) return 'unknown error'
  let text = `${err.name ?? 'Error'}: ${err.message ?? String(err)}`
  if (Array.isArray(err.errors) && err.errors.length > 0) {
    text += ' [' + err.errors.map(e => errorText(e)).join('; ') + ']'
  }
  if (err.cause != null && err.cause !== err) {
    text += ` (cause: ${errorText(err.cause)})`
  }
  return text
}

// stopWithin stops helia but gives up after ms: a stuck stop must never keep
// a test waiting, the caller exits the process right after anyway.
export async function stopWithin (helia, ms) {
  if (helia == null) return
  await Promise.race([
    helia.stop().catch(() => {}),
    new Promise(resolve => setTimeout(resolve, ms).unref())
  ])
}
