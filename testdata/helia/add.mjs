// add.mjs: a browser that adds content and then stays online to serve it.
//
//   node add.mjs --addr /ip4/127.0.0.1/tcp/4001/ws/p2p/12D3... [--size N | --dir]
//
// Dials addr, adds random content to its in-memory blockstore, prints one
// JSON line on stdout and then keeps the connection open, answering Bitswap
// wants for those blocks, until SIGTERM/SIGINT or until its stdin closes (so
// it never outlives the test that started it: keep stdin open while you need
// it). Then it stops Helia and exits 0.
//
// --size N (default 1 MiB): one file of N random bytes, added with
// @helia/unixfs addBytes:
//   {"ok":true,"cid":"...","bytes":N,"sha256":"<hex>","peerId":"12D3..."}
//
// --dir: a small nested directory (wrapped, so the CID is the root):
//   README.txt           a few bytes of text
//   data/big.bin         4 MiB random
//   data/nested/small.bin 1 KiB random
// "bytes"/"sha256"/"path" then describe data/big.bin and "files" lists all
// files with their own CIDs:
//   {"ok":true,"cid":"<root>","path":"data/big.bin","bytes":4194304,
//    "sha256":"...","files":[{"path":..,"cid":..,"bytes":..,"sha256":..}],...}
//
// On error: {"ok":false,"error":"..."} and exit 1.

import { randomBytes } from 'node:crypto'
import { unixfs } from '@helia/unixfs'
import { args, createNode, dial, emit, errorText, sha256, stopWithin } from './lib.mjs'

const opts = args({
  addr: { type: 'string' },
  size: { type: 'string' },
  dir: { type: 'boolean', default: false },
  'timeout-ms': { type: 'string', default: '30000' }
})

const hex = (bytes) => sha256().update(bytes).digest('hex')

let helia
let stopping = false

// shutdown is idempotent: signals and stdin may all arrive.
async function shutdown (code) {
  if (stopping) return
  stopping = true
  setTimeout(() => process.exit(code), 5000).unref()
  await stopWithin(helia, 3000)
  process.exit(code)
}

process.on('SIGTERM', () => { void shutdown(0) })
process.on('SIGINT', () => { void shutdown(0) })
// Reading stdin keeps the event loop alive and tells us when the parent is
// gone: a closed pipe ends the process even if the parent died without a
// signal.
process.stdin.on('end', () => { void shutdown(0) })
process.stdin.on('close', () => { void shutdown(0) })
process.stdin.on('error', () => { void shutdown(0) })
process.stdin.resume()

try {
  if (opts.addr == null) {
    throw new Error('usage: add.mjs --addr <multiaddr/p2p/id> [--size N | --dir]')
  }
  if (opts.dir && opts.size != null) {
    throw new Error('--size and --dir are exclusive')
  }
  const size = Number.parseInt(opts.size ?? String(1 << 20), 10)
  if (!Number.isFinite(size) || size < 0) {
    throw new Error(`bad --size ${opts.size}`)
  }
  const signal = AbortSignal.timeout(Number.parseInt(opts['timeout-ms'], 10))

  helia = await createNode()
  await dial(helia, opts.addr, signal)
  const fs = unixfs(helia)
  const peerId = helia.libp2p.peerId.toString()

  if (!opts.dir) {
    const content = randomBytes(size)
    const cid = await fs.addBytes(content, { signal })
    emit({ ok: true, cid: cid.toString(), bytes: size, sha256: hex(content), peerId })
  } else {
    const files = [
      { path: 'README.txt', content: new TextEncoder().encode(`kitsune helia test dir ${new Date().toISOString()}\n`) },
      { path: 'data/big.bin', content: randomBytes(4 << 20) },
      { path: 'data/nested/small.bin', content: randomBytes(1024) }
    ]
    // wrapWithDirectory makes the last entry the root (path '').
    let root
    const cids = new Map()
    for await (const entry of fs.addAll(files, { wrapWithDirectory: true, signal })) {
      cids.set(entry.path, entry.cid.toString())
      root = entry.cid
    }
    const big = files[1]
    emit({
      ok: true,
      cid: root.toString(),
      path: big.path,
      bytes: big.content.byteLength,
      sha256: hex(big.content),
      peerId,
      files: files.map(f => ({ path: f.path, cid: cids.get(f.path), bytes: f.content.byteLength, sha256: hex(f.content) }))
    })
  }
  process.stderr.write('add.mjs: serving; close stdin or send SIGTERM to stop\n')
  helia.libp2p.addEventListener('peer:disconnect', (evt) => {
    process.stderr.write(`add.mjs: peer ${evt.detail} disconnected\n`)
  })
} catch (err) {
  process.stderr.write(`add.mjs: ${err?.stack ?? err}\n`)
  emit({ ok: false, error: errorText(err) })
  await shutdown(1)
}
