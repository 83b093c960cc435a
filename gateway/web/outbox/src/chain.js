// The chain model of docs/chain.schema.json, the browser's side (outbox/chain.py is the Python
// one): steps before the upload, the upload, steps after it. No I/O here: the check made when an
// item is queued, the rendering of a template when a request is sent, and captures by JSON
// Pointer (RFC 6901) out of a step's JSON answer.
//
// Placeholders `{{name}}`: `steps.STEP.NAME` (a capture of an earlier step), the upload's
// `mediaId`, `s3Key`, `url`, `sha256`, `size`, `originalName` (first file) and `files.N.FIELD`
// (steps after the upload only), `env.NAME` (the `env` option of createOutbox, read when the
// step is sent and never stored; steps only). A placeholder that names nothing, or a step that has
// not run by then, is refused when the item is queued: nothing is queued.

export const PLACEHOLDER = /\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}/g
export const FILE_FIELDS = Object.freeze(['mediaId', 's3Key', 'url', 'sha256', 'size', 'originalName'])
export const METHODS = Object.freeze(['POST', 'PUT', 'PATCH', 'DELETE'])
const NAME = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/
const FIELD_NAME = /^[A-Za-z0-9_.-]{1,64}$/
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const POINTER = /^(\/([^~]|~[01])*)*$/
export const RESERVED_HEADERS = Object.freeze(['idempotency-key', 'content-length', 'host'])

export class InvalidItem extends Error {
  constructor(/** @type {string} */ message) {
    super(message)
    this.name = 'InvalidItem'
  }
}

/** @param {string} template */
const placeholders = (template) => [...template.matchAll(PLACEHOLDER)].map((m) => m[1])

/**
 * Refuse a chain that could not run (InvalidItem); the steps in running order otherwise.
 * @param {import('../index.js').Chain} chain
 * @returns {(import('../index.js').StepSpec & {before: boolean})[]}
 */
export function checkChain(chain) {
  const before = chain.before ?? []
  const after = chain.after ?? []
  const upload = chain.upload
  if (!upload || typeof upload.project !== 'string' || !upload.project) {
    throw new InvalidItem('upload.project: a project is required')
  }
  const files = upload.files?.length ?? 0
  if (!files) throw new InvalidItem('upload.files: at least one file')
  const steps = [
    ...before.map((s) => ({ ...s, before: true })),
    ...after.map((s) => ({ ...s, before: false })),
  ]
  const names = steps.map((s) => s.name)
  /** @type {Map<string, Set<string>>} */
  const seen = new Map()
  for (const step of steps) {
    const where = `step ${JSON.stringify(step.name)}`
    if (typeof step.name !== 'string' || !NAME.test(step.name)) {
      throw new InvalidItem(`${where}: a step's name is A-Z a-z 0-9 _ - (starting with a letter)`)
    }
    if (seen.has(step.name)) throw new InvalidItem(`${where}: two steps have this name`)
    if (!METHODS.includes(step.method)) {
      throw new InvalidItem(`${where}: the method must be one of ${METHODS.join(', ')}`)
    }
    if (!/^https?:\/\//.test(step.url ?? '')) {
      throw new InvalidItem(`${where}: the URL must be http or https`)
    }
    for (const header of Object.keys(step.headers ?? {})) {
      if (!HEADER_NAME.test(header) || RESERVED_HEADERS.includes(header.toLowerCase())) {
        throw new InvalidItem(`${where}: ${JSON.stringify(header)} is not a header a step may set`)
      }
    }
    for (const [capture, pointer] of Object.entries(step.capture ?? {})) {
      if (!NAME.test(capture)) throw new InvalidItem(`${where}: capture name ${capture}: A-Z a-z 0-9 _ -`)
      if (!POINTER.test(pointer)) throw new InvalidItem(`${where}: capture ${capture} = ${pointer}: not a JSON Pointer`)
    }
    const templates = [step.url, step.body ?? '', ...Object.values(step.headers ?? {})]
    for (const template of templates) {
      for (const found of placeholders(template)) {
        checkName(found, { where, seen, names, files, uploadDone: !step.before })
      }
    }
    seen.set(step.name, new Set(Object.keys(step.capture ?? {})))
  }
  const beforeSeen = new Map([...seen].filter(([name]) => before.some((s) => s.name === name)))
  for (const [field, value] of Object.entries(upload.fields ?? {})) {
    const where = `field ${JSON.stringify(field)}`
    if (!FIELD_NAME.test(field)) throw new InvalidItem(`${where}: a field's name is A-Z a-z 0-9 _ . -`)
    if (typeof value !== 'string') throw new InvalidItem(`${where}: a field's value is a string`)
    for (const found of placeholders(value)) {
      if (found.split('.')[0] === 'env') {
        throw new InvalidItem(`${where}: {{${found}}}: the environment is for steps, not for fields (the gateway keeps fields with the file)`)
      }
      checkName(found, { where, seen: beforeSeen, names, files, uploadDone: false })
    }
  }
  return steps
}

/**
 * @param {string} name
 * @param {{where: string, seen: Map<string, Set<string>>, names: string[], files: number, uploadDone: boolean}} context
 */
function checkName(name, { where, seen, names, files, uploadDone }) {
  const [head, ...rest] = name.split('.')
  if (head === 'env' && rest.length) return
  if (head === 'steps') {
    const [step, capture] = [rest[0], rest.slice(1).join('.')]
    if (seen.has(step)) {
      if (seen.get(step)?.has(capture)) return
      throw new InvalidItem(`${where}: {{${name}}}: step ${JSON.stringify(step)} captures no ${JSON.stringify(capture)}`)
    }
    if (names.includes(step)) throw new InvalidItem(`${where}: {{${name}}}: step ${JSON.stringify(step)} has not run by then`)
    throw new InvalidItem(`${where}: {{${name}}}: no step is named ${JSON.stringify(step)}`)
  }
  let upload = FILE_FIELDS.includes(name)
  if (head === 'files') {
    const [index, field] = [rest[0], rest.slice(1).join('.')]
    upload = /^\d+$/.test(index ?? '') && Number(index) < files && FILE_FIELDS.includes(field)
  }
  if (upload && uploadDone) return
  if (upload) throw new InvalidItem(`${where}: {{${name}}}: the upload has not run by then`)
  throw new InvalidItem(`${where}: unknown placeholder {{${name}}}`)
}

/** A value as placeholder text: strings as they are, null as nothing, anything else as JSON. */
export function textOf(/** @type {unknown} */ value) {
  if (value === null || value === undefined) return ''
  return typeof value === 'string' ? value : JSON.stringify(value)
}

/**
 * @typedef {{records?: any[], captured?: Record<string, Record<string, unknown>>, env?: Record<string, string>}} Context
 * @param {string} name
 * @param {Context} context
 */
export function valueOf(name, context) {
  const [head, ...rest] = name.split('.')
  if (head === 'env') {
    const key = rest.join('.')
    if (!context.env || !(key in context.env)) {
      throw Object.assign(new Error(`step: the environment has no ${key} (for {{${name}}})`), { transient: true })
    }
    return context.env[key]
  }
  if (head === 'steps') return textOf(context.captured?.[rest[0]]?.[rest.slice(1).join('.')])
  const records = context.records ?? []
  if (head === 'files') return textOf(records[Number(rest[0])]?.[rest.slice(1).join('.')])
  return textOf(records[0]?.[name])
}

/**
 * @param {string} template
 * @param {Context} context
 * @param {(text: string) => string} [quote]
 */
export function render(template, context, quote = (text) => text) {
  return template.replace(PLACEHOLDER, (_, name) => quote(valueOf(name, context)))
}

export const jsonEscape = (/** @type {string} */ text) => JSON.stringify(text).slice(1, -1)
export const urlEscape = (/** @type {string} */ text) =>
  encodeURIComponent(text).replace(/%2F/g, '/').replace(/%3A/g, ':')

/** A body that is JSON once its placeholders are filled (sent as application/json). */
export function isJsonTemplate(/** @type {string} */ body) {
  try {
    JSON.parse(body.replace(PLACEHOLDER, '0'))
    return true
  } catch {
    return false
  }
}

/**
 * RFC 6901: the value at `pointer` in `document`; throws (naming the pointer) when there is none.
 * @param {unknown} document
 * @param {string} pointer
 */
export function resolvePointer(document, pointer) {
  if (pointer === '') return document
  let value = /** @type {any} */ (document)
  for (const raw of pointer.slice(1).split('/')) {
    const token = raw.replace(/~1/g, '/').replace(/~0/g, '~')
    if (Array.isArray(value) && /^(0|[1-9]\d*)$/.test(token) && Number(token) < value.length) {
      value = value[Number(token)]
    } else if (value !== null && typeof value === 'object' && !Array.isArray(value) && Object.hasOwn(value, token)) {
      value = value[token]
    } else {
      throw new RangeError(pointer)
    }
  }
  return value
}
