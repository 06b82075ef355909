// Helia as a web page runs it, bundled by esbuild (build.mjs) into
// bundle.js for index.html. The Go test loads the page in headless
// Chromium and calls window.kitsuneFetch(addr, cid) once per transport.
//
// The node is what a browser app would build, minus everything that would
// reach outside the machine or find peers by itself (bootstrap, delegated
// routing, gateways): the three browser transports (WebSockets,
// WebTransport, which Helia 7's browser defaults no longer include, and
// WebRTC-direct), Noise, Yamux, identify and Helia's Bitswap.
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import { unixfs } from '@helia/unixfs'
import { identify } from '@libp2p/identify'
import { webRTCDirect } from '@libp2p/webrtc'
import { webSockets } from '@libp2p/websockets'
import { webTransport } from '@libp2p/webtransport'
import { multiaddr } from '@multiformats/multiaddr'
import { createHeliaLight } from 'helia'
import { CID } from 'multiformats/cid'

function errorText (err) {
  if (err == null) return 'unknown error'
  let text = `${err.name ?? 'Error'}: ${err.message ?? String(err)}`
  if (Array.isArray(err.errors) && err.errors.length > 0) {
    text += ' [' + err.errors.map(e => errorText(e)).join('; ') + ']'
  }
  if (err.cause != null && err.cause !== err) text += ` (cause: ${errorText(err.cause)})`
  return text
}

const hex = (buf) => [...new Uint8Array(buf)].map(b => b.toString(16).padStart(2, '0')).join('')

// kitsuneFetch starts a fresh Helia node, dials addr (one transport), cats
// the UnixFS file cid, and resolves to {ok, bytes, sha256, ms, transport,
// remoteAddr} or {ok: false, error}. ms runs from the dial to the last
// byte; the sha256 is computed here, in the page.
window.kitsuneFetch = async (addr, cidText, timeoutMs = 120000) => {
  let helia
  try {
    const signal = AbortSignal.timeout(timeoutMs)
    helia = withBitswap(withLibp2pLight(createHeliaLight(), {
      addresses: { listen: [] },
      transports: [webSockets(), webTransport(), webRTCDirect()],
      connectionEncrypters: [noise()],
      streamMuxers: [yamux()],
      peerDiscovery: [],
      // A browser build refuses private and loopback addresses by default;
      // the test's Kitsune is on loopback.
      connectionGater: { denyDialMultiaddr: () => false },
      services: { identify: identify() }
    }))
    await helia.start()
    const start = performance.now()
    const conn = await helia.libp2p.dial(multiaddr(addr), { signal })
    const chunks = []
    let bytes = 0
    for await (const chunk of unixfs(helia).cat(CID.parse(cidText), { signal })) {
      chunks.push(chunk)
      bytes += chunk.byteLength
    }
    const ms = Math.round(performance.now() - start)
    const all = new Uint8Array(bytes)
    let off = 0
    for (const c of chunks) { all.set(c, off); off += c.byteLength }
    const sha256 = hex(await crypto.subtle.digest('SHA-256', all))
    return { ok: true, bytes, sha256, ms, remoteAddr: conn.remoteAddr.toString(), userAgent: navigator.userAgent }
  } catch (err) {
    return { ok: false, error: errorText(err) }
  } finally {
    if (helia != null) {
      await Promise.race([helia.stop().catch(() => {}), new Promise(resolve => setTimeout(resolve, 5000))])
    }
  }
}
window.kitsuneReady = true
