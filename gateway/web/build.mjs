// npm run build: src/upload.js and its packages -> ../static/upload.js (one ES module, no CDN),
// src/sw.js -> ../static/upload-sw.js (the page's service worker, served as /upload/sw.js, with
// the bundle's URL in its precache list: a new bundle makes a new worker), and
// ../static/upload.manifest.json (the sources' digest, the bundle's and the worker's digests).
import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'
import { sourcesDigest } from './sources.mjs'

const root = dirname(fileURLToPath(import.meta.url))
const out = join(root, '..', 'static')
const sha256 = (path) => createHash('sha256').update(readFileSync(path)).digest('hex')
mkdirSync(out, { recursive: true })
const bundle = join(out, 'upload.js')
const common = { bundle: true, target: 'es2020', minify: true, legalComments: 'eof', logLevel: 'warning' }
await build({ ...common, entryPoints: [join(root, 'src', 'upload.js')], format: 'esm', outfile: bundle })
const digest = sha256(bundle)
const script = `/static/upload.js?v=${digest.slice(0, 16)}` // the URL gateway/http/web_bundle.py gives
const shell = [
  { url: script, revision: null },
  { url: '/static/upload.css', revision: sha256(join(out, 'upload.css')).slice(0, 16) },
]
const worker = join(out, 'upload-sw.js')
await build({
  ...common,
  entryPoints: [join(root, 'src', 'sw.js')],
  format: 'iife',
  outfile: worker,
  define: {
    __SHELL__: JSON.stringify(shell),
    __BUILD__: JSON.stringify(digest.slice(0, 16)),
    __SCRIPT__: JSON.stringify(script),
    'process.env.NODE_ENV': '"production"',
  },
})
const manifest = { sources: sourcesDigest(root), bundle: digest, serviceWorker: sha256(worker) }
writeFileSync(join(out, 'upload.manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`)
console.log(`upload.js: ${readFileSync(bundle).length} bytes, upload-sw.js: ${readFileSync(worker).length} bytes`)
