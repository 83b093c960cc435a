// How answers are judged (as the Python outbox does, outbox/transport.py and outbox/steps.py),
// and a fetch-based HttpStack for tus-js-client where there is no XMLHttpRequest (a service
// worker): tus-js-client's own browser stack is XMLHttpRequest.

export const RETRYABLE_STATUSES = Object.freeze([408, 409, 423, 425, 429])
const ANSWER_KEPT = 64 * 1024

/** An attempt that may succeed later: the item waits (retryAfter in seconds, from the answer). */
export class Transient extends Error {
  constructor(/** @type {string} */ message, /** @type {number | null} */ retryAfter = null) {
    super(message)
    this.name = 'Transient'
    this.retryAfter = retryAfter
  }
}

/** Refused for good: the item fails, with the answer kept. */
export class Permanent extends Error {
  constructor(/** @type {string} */ message, /** @type {{status?: number, answer?: string, step?: string}} */ detail = {}) {
    super(message)
    this.name = 'Permanent'
    this.status = detail.status ?? null
    this.answer = detail.answer ?? null
    this.step = detail.step ?? null
  }
}

/** @param {string | null} value */
export function retryAfterSeconds(value, now = Date.now()) {
  if (!value) return null
  if (/^\d+$/.test(value.trim())) return Number(value.trim())
  const at = Date.parse(value)
  return Number.isNaN(at) ? null : Math.max(0, (at - now) / 1000)
}

/**
 * The gateway's answer as an error to throw, or null for a 2xx. A 401 (the session ended) and a
 * 403 csrf_invalid (a page older than the session) wait for a new sign-in, never fail the item.
 * @param {string} what
 * @param {number} status
 * @param {string} body
 * @param {(name: string) => string | null} header
 */
export function gatewayError(what, status, body, header) {
  if (status >= 200 && status < 300) return null
  let code = ''
  let message = body.slice(0, 300)
  try {
    const parsed = JSON.parse(body)
    code = parsed?.error?.code ?? ''
    message = parsed?.error?.message ?? message
  } catch {}
  const text = `${what}: ${status}${code ? ` ${code}` : ''}${message ? `: ${message}` : ''}`
  const retryAfter = retryAfterSeconds(header('Retry-After'))
  if (status === 401 || code === 'csrf_invalid') return new Transient(`${text} (sign in again)`, retryAfter)
  if (status >= 500 || RETRYABLE_STATUSES.includes(status)) return new Transient(text, retryAfter)
  return new Permanent(text, { status, answer: body.slice(0, ANSWER_KEPT) })
}

/** A network error (fetch's TypeError, a timeout, an abort not asked for) is transient. */
export function networkError(/** @type {string} */ what, /** @type {unknown} */ error) {
  const message = error instanceof Error ? error.message : String(error)
  return new Transient(`${what}: ${message || 'network error'}`)
}

/** tus-js-client's HttpStack over fetch (no upload progress: it reports each chunk's end). */
export class FetchHttpStack {
  createRequest(/** @type {string} */ method, /** @type {string} */ url) {
    return new FetchRequest(method, url)
  }

  getName() {
    return 'FetchHttpStack'
  }
}

class FetchRequest {
  constructor(/** @type {string} */ method, /** @type {string} */ url) {
    this._method = method
    this._url = url
    /** @type {Record<string, string>} */
    this._headers = {}
    this._controller = new AbortController()
    /** @type {(bytes: number) => void} */
    this._progress = () => {}
  }

  getMethod() { return this._method }
  getURL() { return this._url }
  setHeader(/** @type {string} */ name, /** @type {string} */ value) { this._headers[name] = value }
  getHeader(/** @type {string} */ name) { return this._headers[name] }
  setProgressHandler(/** @type {(bytes: number) => void} */ handler) { this._progress = handler }
  getUnderlyingObject() { return this._controller }

  async send(/** @type {Blob | null} */ body = null) {
    const response = await fetch(this._url, {
      method: this._method,
      headers: this._headers,
      body,
      credentials: 'same-origin',
      signal: this._controller.signal,
    })
    if (body) this._progress(body.size)
    const text = await response.text()
    return {
      getStatus: () => response.status,
      getHeader: (/** @type {string} */ name) => response.headers.get(name) ?? undefined,
      getBody: () => text,
      getUnderlyingObject: () => response,
    }
  }

  abort() {
    this._controller.abort()
    return Promise.resolve()
  }
}
