// Fetches one CID with @helia/verified-fetch and prints what it got as
// one JSON line: {"status":200,"bytes":N,"sha256":"..."}.
//
//   node fetch.mjs [--router URL] [--gateway URL] CID
//
// --router names a delegated router (/routing/v1), --gateway a trustless
// gateway to fall back on; at least one. Plain http:// on loopback is
// allowed (allowInsecure, allowLocal).
import { createHash } from 'node:crypto'
import { delegatedHTTPRouter } from '@helia/delegated-routing-client'
import { fallbackRouter } from '@helia/fallback-router'
import { trustlessGatewayBlockBroker } from '@helia/trustless-gateway-client'
import { createVerifiedFetch } from '@helia/verified-fetch'
import { createHeliaLight } from 'helia'

const args = process.argv.slice(2)
const routerURLs = []
const gateways = []
let cid
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--router') routerURLs.push(args[++i])
  else if (args[i] === '--gateway') gateways.push(args[++i])
  else cid = args[i]
}
if (cid == null || (routerURLs.length === 0 && gateways.length === 0)) {
  console.error('usage: fetch.mjs [--router URL] [--gateway URL] CID')
  process.exit(2)
}

// An HTTP-only Helia: blocks from trustless gateways only, providers from
// the delegated routers named (their records' transport-ipfs-gateway-http
// addresses) or, failing that, the gateways named. No libp2p, no
// Bitswap: whatever arrives came through a gateway.
const routers = [
  ...routerURLs.map(url => delegatedHTTPRouter({ url, allowInsecure: true, allowLocal: true })),
  ...(gateways.length > 0 ? [asProviders(fallbackRouter({ gateways, shuffle: false }))] : [])
]
// asProviders offers the gateways as ordinary providers: Helia consults
// a fallback router only beside others, and with none the fetch was never
// settled (Helia 7.1.15).
function asProviders (fb) {
  return {
    name: 'gateways',
    async * findProviders (cid, options) {
      for await (const p of fb.findProviders(cid, options)) {
        yield { ...p, fallback: false, router: 'gateways' }
      }
    },
    toString: () => 'gateways'
  }
}

// Added as withHTTP (@helia/http) does: createHeliaLight takes no routers.
const helia = createHeliaLight()
for (const r of routers) helia.addRouter(r)
helia.addBlockBroker(trustlessGatewayBlockBroker({ allowInsecure: true, allowLocal: true }))
await helia.start()
const vf = await createVerifiedFetch(helia)
try {
  const res = await vf(`ipfs://${cid}`, { signal: AbortSignal.timeout(Number(process.env.VF_TIMEOUT_MS ?? 60000)) })
  const body = Buffer.from(await res.arrayBuffer())
  const sha256 = createHash('sha256').update(body).digest('hex')
  console.log(JSON.stringify({ status: res.status, bytes: body.length, sha256 }))
} finally {
  await vf.stop()
  await helia.stop()
}
process.exit(0)
