// Stock js-ipfs (ipfs-core 0.18.1, the last release) as deployed apps run
// it: its own libp2p (transports, noise, mplex only), its own preloader.
// Configured only as such an app would point it at Kitsune: Bootstrap and
// preload addresses. Besides, it listens nowhere and runs no MDNS, so the
// only peer it can reach is Kitsune (a test fleet on the same machine
// must not be found directly).
//
// node run.mjs '<json>' with
//   repo       repository folder (fresh)
//   bootstrap  Kitsune's multiaddr with /p2p/
//   preload    preload multiaddr (/ip4/127.0.0.1/tcp/PORT/http)
//   cat        optional CID to fetch first (timed, sha256 reported)
//   file       optional path of a file to add
//   dir        optional [{path, content(base64)}] to add as a directory
// Prints one JSON object per line; after "ready" it waits for stdin to
// close, then stops the node and prints "stopped".
import { create } from 'ipfs-core'
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'

const args = JSON.parse(process.argv[2])
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const fail = (err) => {
  out({ event: 'error', error: String(err?.stack ?? err) })
  process.exit(1)
}
process.on('unhandledRejection', fail)

const ipfs = await create({
  repo: args.repo,
  preload: { enabled: true, addresses: [args.preload] },
  config: {
    Bootstrap: [args.bootstrap],
    Addresses: { Swarm: [] },
    Discovery: { MDNS: { Enabled: false }, webRTCStar: { Enabled: false } }
  }
})
const id = await ipfs.id()
const kitsune = args.bootstrap.split('/p2p/')[1]

// Bootstrap dials on start; wait for the connection (bounded).
let peers = []
for (let i = 0; i < 300; i++) {
  peers = await ipfs.swarm.peers({ verbose: true })
  if (peers.some((p) => p.peer.toString() === kitsune)) break
  await new Promise((resolve) => setTimeout(resolve, 100))
}
out({
  event: 'connected',
  id: id.id.toString(),
  agent: id.agentVersion,
  peers: peers.map((p) => ({ peer: p.peer.toString(), addr: p.addr.toString(), muxer: p.muxer }))
})
if (!peers.some((p) => p.peer.toString() === kitsune)) fail(new Error('no connection to Kitsune within 30 s'))

if (args.cat) {
  const start = Date.now()
  const hash = createHash('sha256')
  let bytes = 0
  for await (const chunk of ipfs.cat(args.cat, { timeout: 120000 })) {
    hash.update(chunk)
    bytes += chunk.length
  }
  out({ event: 'cat', bytes, sha256: hash.digest('hex'), ms: Date.now() - start })
}

const refsOf = async (cid) => {
  const refs = [cid.toString()]
  for await (const r of ipfs.refs(cid, { recursive: true, unique: true })) {
    if (r.err) fail(new Error(r.err))
    refs.push(r.ref)
  }
  return refs
}
if (args.file) {
  const added = await ipfs.add(await readFile(args.file))
  out({ event: 'added', kind: 'file', cid: added.cid.toString(), refs: await refsOf(added.cid) })
}
if (args.dir) {
  let root
  for await (const r of ipfs.addAll(args.dir.map((f) => ({ path: f.path, content: Buffer.from(f.content, 'base64') })), { wrapWithDirectory: true })) {
    root = r // the wrapping directory comes last
  }
  out({ event: 'added', kind: 'dir', cid: root.cid.toString(), refs: await refsOf(root.cid) })
}

out({ event: 'ready' })
process.stdin.resume()
await new Promise((resolve) => process.stdin.on('end', resolve))
await ipfs.stop()
out({ event: 'stopped' })
process.exit(0)
