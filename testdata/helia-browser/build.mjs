// Bundles page.js for the browser with esbuild, from the pinned npm
// packages in node_modules: node build.mjs <outdir>. Writes bundle.js and
// copies index.html there. The bundle is never committed.
import { build } from 'esbuild'
import { copyFile } from 'node:fs/promises'
import { join } from 'node:path'

const out = process.argv[2]
if (out == null) {
  console.error('usage: node build.mjs <outdir>')
  process.exit(2)
}
await build({
  entryPoints: [join(import.meta.dirname, 'page.js')],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'chrome120',
  outfile: join(out, 'bundle.js'),
  logLevel: 'warning'
})
await copyFile(join(import.meta.dirname, 'index.html'), join(out, 'index.html'))
