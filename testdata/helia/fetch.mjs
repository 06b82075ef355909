// fetch.mjs: fetch one UnixFS file through Bitswap, the way a browser would.
//
//   node fetch.mjs --addr /ip4/127.0.0.1/tcp/4001/ws/p2p/12D3... --cid bafy...
//                  [--path sub/dir/file] [--timeout-ms 60000]
//   node fetch.mjs --router http://127.0.0.1:8080 --cid bafy...
//
// With --router (a delegated routing /routing/v1 base URL) and no --addr the
// node dials nobody itself: it finds providers through the router only.
//
// Prints one JSON line on stdout and exits:
//   {"ok":true,"bytes":N,"sha256":"<hex>","ms":N,"peers":["12D3..."]}  exit 0
//   {"ok":false,"error":"..."}                             exit 1
// "ms" counts from the start of the dial to the last byte. Diagnostics go to
// stderr only.

import { unixfs } from '@helia/unixfs'
import { CID } from 'multiformats/cid'
import { args, createNode, dial, emit, errorText, sha256, stopWithin } from './lib.mjs'

const opts = args({
  addr: { type: 'string' },
  router: { type: 'string' },
  cid: { type: 'string' },
  path: { type: 'string' },
  'timeout-ms': { type: 'string', default: '60000' }
})

const timeoutMs = Number.parseInt(opts['timeout-ms'], 10)

// Last resort: whatever hangs (a dial, a stop), the process ends in time.
const hardStop = setTimeout(() => {
  emit({ ok: false, error: `timeout after ${timeoutMs} ms (hard stop)` })
  process.exit(1)
}, timeoutMs + 5000)
hardStop.unref()

let helia
let code = 0
try {
  if ((opts.addr == null && opts.router == null) || opts.cid == null) {
    throw new Error('usage: fetch.mjs (--addr <multiaddr/p2p/id> | --router <url>) --cid <cid> [--path p] [--timeout-ms N]')
  }
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
    throw new Error(`bad --timeout-ms ${opts['timeout-ms']}`)
  }
  const signal = AbortSignal.timeout(timeoutMs)
  const cid = CID.parse(opts.cid)

  helia = await createNode(opts.router == null ? [] : [opts.router])
  const start = performance.now()
  if (opts.addr != null) {
    await dial(helia, opts.addr, signal)
  }

  const hash = sha256()
  let bytes = 0
  for await (const chunk of unixfs(helia).cat(cid, { path: opts.path, signal })) {
    hash.update(chunk)
    bytes += chunk.byteLength
  }
  const peers = helia.libp2p.getPeers().map(p => p.toString())
  emit({ ok: true, bytes, sha256: hash.digest('hex'), ms: Math.round(performance.now() - start), peers })
} catch (err) {
  process.stderr.write(`fetch.mjs: ${err?.stack ?? err}\n`)
  emit({ ok: false, error: errorText(err) })
  code = 1
}

await stopWithin(helia, 3000)
process.exit(code)
