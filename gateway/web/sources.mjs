// The digest of the sources a bundle is built from (gateway/web_bundle.py computes the same):
// SHA-256 over one "path<TAB>sha256-hex<LF>" line per file (package.json, package-lock.json,
// build.mjs, every file under src/ and outbox/), paths relative to gateway/web with '/', lines sorted.
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative, sep } from 'node:path'

function filesUnder(dir) {
  if (!existsSync(dir)) return []
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name)
    return statSync(path).isDirectory() ? filesUnder(path) : [path]
  })
}

export function sourcesDigest(root) {
  const files = [
    join(root, 'package.json'),
    join(root, 'package-lock.json'),
    join(root, 'build.mjs'),
    ...filesUnder(join(root, 'src')),
    ...filesUnder(join(root, 'outbox')),
  ]
  const lines = files
    .map((path) => {
      const name = relative(root, path).split(sep).join('/')
      const hash = createHash('sha256').update(readFileSync(path)).digest('hex')
      return `${name}\t${hash}\n`
    })
    .sort()
  return createHash('sha256').update(lines.join('')).digest('hex')
}
