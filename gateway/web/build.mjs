// npm run build: src/upload.js and its packages -> ../static/upload.js (one ES module, no CDN),
// and ../static/upload.manifest.json (the sources' digest, the bundle's digest).
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { sourcesDigest } from './sources.mjs'

const root = dirname(fileURLToPath(import.meta.url))
const out = join(root, '..', 'static')
mkdirSync(out, { recursive: true })
const bundle = join(out, 'upload.js')
await build({
  entryPoints: [join(root, 'src', 'upload.js')],
  bundle: true,
  format: 'esm',
  target: 'es2020',
  minify: true,
  legalComments: 'eof',
  outfile: bundle,
  logLevel: 'warning',
})
const manifest = {
  sources: sourcesDigest(root),
  bundle: createHash('sha256').update(readFileSync(bundle)).digest('hex'),
}
writeFileSync(join(out, 'upload.manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`)
console.log(`upload.js: ${readFileSync(bundle).length} bytes`)
