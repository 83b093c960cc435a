// @upload-gateway/outbox: a durable outbox in the browser for upload-gateway.
//
//   const outbox = createOutbox({ gateway: '' })        // the page's own origin, session cookie
//   await outbox.add({ upload: { project: 'demo', files: [{ name: file.name, blob: file }] } })
//   outbox.start()                                      // now, on `online`, and when due again
//
// An item is a chain (docs/chain.schema.json): steps before the upload, the upload, steps after
// it. It is written to IndexedDB with its bytes (Blobs) in one transaction before add() resolves,
// so it survives a reload, a closed tab and a browser restart. One runner at a time sends items
// (a Web Lock: a tab, another tab or the service worker's Background Sync, whichever comes first;
// a runner that dies releases it). Small files go in one form post with the item's
// Idempotency-Key; big ones over tus, each with its own creation key, its upload URL written to
// the item before the first byte, so a later runner resumes from the gateway's offset.
import * as tus from 'tus-js-client'
import {
  checkChain,
  InvalidItem,
  isJsonTemplate,
  jsonEscape,
  render,
  resolvePointer,
  urlEscape,
} from './chain.js'
import { FetchHttpStack, gatewayError, networkError, Permanent, retryAfterSeconds, Transient } from './http.js'
import { blobKey, checkTransition, finish, insert, openStore, remove, State, UNFINISHED, update } from './store.js'

export { InvalidItem, checkChain } from './chain.js'
export { Permanent, Transient } from './http.js'
export { State, TRANSITIONS, DB_NAME } from './store.js'

export const SYNC_TAG = 'gateway-outbox'
const LOCK = 'gateway-outbox-runner'
const CHANNEL = 'gateway-outbox'
const HELD = ['stored', 'processing', 'ready']
const MiB = 1024 * 1024
const TERMINATE_RETRIES = [0, 500, 1000, 2000, 4000]

/** @param {import('../index.js').OutboxOptions} [options] */
export function createOutbox(options = {}) {
  return new Outbox(options)
}

export class Outbox {
  /** @param {import('../index.js').OutboxOptions} options */
  constructor(options) {
    const hasXhr = typeof XMLHttpRequest !== 'undefined'
    this.options = {
      gateway: '',
      formMaxBytes: MiB,
      concurrency: 3,
      chunkSize: hasXhr ? Number.POSITIVE_INFINITY : 8 * MiB,
      backoffSeconds: 2,
      maxBackoffSeconds: 300,
      stepCredentials: /** @type {RequestCredentials} */ ('same-origin'),
      ...options,
    }
    this.httpStack = hasXhr ? undefined : new FetchHttpStack()
    this.db = openStore(this.options.dbName)
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map()
    /** @type {Map<string, {abort: () => void}>} */
    this.running = new Map()
    this.timer = 0
    this.channel = typeof BroadcastChannel === 'undefined' ? null : new BroadcastChannel(CHANNEL)
    this.channel?.addEventListener('message', ({ data }) => this._onMessage(data))
  }

  // -- queueing ---------------------------------------------------------------------------------
  /**
   * Check the chain and queue it with its files' bytes (each `files[i].blob`). Resolves to the
   * item once it is in IndexedDB; InvalidItem (nothing queued) when the chain could not run.
   * @param {import('../index.js').Chain} chain
   */
  async add(chain) {
    const steps = checkChain(chain)
    const blobs = chain.upload.files.map((file, i) => {
      if (!(file.blob instanceof Blob)) throw new InvalidItem(`upload.files[${i}]: no blob`)
      return file.blob
    })
    const id = crypto.randomUUID()
    const now = Date.now()
    /** @type {import('../index.js').Item} */
    const item = {
      id,
      key: `browser-${id}`,
      state: State.QUEUED,
      project: chain.upload.project,
      fields: { ...(chain.upload.fields ?? {}) },
      files: chain.upload.files.map((file, position) => ({
        position,
        name: file.name,
        type: file.type || file.blob?.type || 'application/octet-stream',
        size: blobs[position].size,
        transport: blobs[position].size > this.options.formMaxBytes ? 'tus' : 'form',
        tusUrl: null,
        generation: 0,
        record: null,
      })),
      steps: steps.map((step, position) => ({ position, ...step, done: false, status: null, captured: {} })),
      attempts: 0,
      nextAttemptAt: 0,
      lastError: null,
      answer: null,
      failedStep: null,
      createdAt: now,
      updatedAt: now,
    }
    await insert(await this.db, item, blobs)
    this._changed(item)
    return item
  }

  /** One item per file, each to `project` with `fields`: what the upload page queues. */
  async addFiles(/** @type {File[]} */ files, /** @type {{project: string, fields?: Record<string, string>}} */ upload) {
    const items = []
    for (const file of files) {
      items.push(await this.add({ upload: { ...upload, files: [{ name: file.name, type: file.type, blob: file }] } }))
    }
    return items
  }

  // -- reading ----------------------------------------------------------------------------------
  async list() {
    const items = await (await this.db).getAll('items')
    return items.sort((a, b) => a.createdAt - b.createdAt)
  }

  async get(/** @type {string} */ id) {
    return (await (await this.db).get('items', id)) ?? null
  }

  async blob(/** @type {string} */ id, /** @type {number} */ position) {
    return (await (await this.db).get('blobs', blobKey(id, position))) ?? null
  }

  // -- the user's actions -----------------------------------------------------------------------
  /** A failed item back to the queue (stored again when its files are stored). */
  async retry(/** @type {string} */ id) {
    const item = await update(await this.db, id, (it) => {
      if (it.state !== State.FAILED) return false
      const next = it.files.every((/** @type {any} */ f) => f.record) ? State.STORED : State.QUEUED
      checkTransition(it.state, next)
      Object.assign(it, { state: next, attempts: 0, nextAttemptAt: 0, lastError: null, answer: null, failedStep: null })
      return true
    })
    if (item) this._changed(item)
    this.sync()
    return item
  }

  /** Remove an item that is not done: its running attempt is stopped, its tus uploads ended
   * at the gateway (tus termination, retried while a cut PATCH still holds the upload). */
  async cancel(/** @type {string} */ id) {
    const local = this.running.get(id)
    local?.abort() // the runner here terminates its own upload
    this.channel?.postMessage({ type: 'cancel', id })
    const item = await remove(await this.db, id)
    if (!item) return null
    const headers = await this.gatewayHeaders()
    for (const file of item.files) {
      if (file.tusUrl && !file.record && !local) {
        tus.Upload.terminate(file.tusUrl, { headers, retryDelays: TERMINATE_RETRIES, ...this._stack() }).catch(() => {})
      }
    }
    this._changed({ ...item, state: 'cancelled' })
    return item
  }

  _stack() {
    return this.httpStack ? { httpStack: this.httpStack } : {}
  }

  // -- storage ----------------------------------------------------------------------------------
  /** Ask that the browser not evict the queue under storage pressure; true when granted. */
  async persist() {
    if (!navigator.storage?.persist) return false
    return (await navigator.storage.persisted?.()) || navigator.storage.persist()
  }

  /** What this origin uses and may use (bytes), and whether its storage is persistent. */
  async storage() {
    const estimate = (await navigator.storage?.estimate?.()) ?? {}
    const persisted = (await navigator.storage?.persisted?.()) ?? false
    return { usage: estimate.usage ?? null, quota: estimate.quota ?? null, persisted }
  }

  /** Kept for a service worker, which cannot read the page's cookie (with a session cookie). */
  async saveCsrfToken(/** @type {string} */ token) {
    await (await this.db).put('meta', token, 'csrfToken')
  }

  // -- events -----------------------------------------------------------------------------------
  /** 'change' (an item, or {id, state: 'cancelled'}), 'progress' ({id, sent, total}). */
  on(/** @type {string} */ event, /** @type {Function} */ listener) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set())
    this.listeners.get(event)?.add(listener)
    return () => this.listeners.get(event)?.delete(listener)
  }

  _emit(/** @type {string} */ event, /** @type {any} */ value) {
    for (const listener of this.listeners.get(event) ?? []) listener(value)
  }

  _changed(/** @type {any} */ item) {
    this._emit('change', item)
    this.channel?.postMessage({ type: 'change', id: item.id, state: item.state })
  }

  _progress(/** @type {string} */ id, /** @type {number} */ sent, /** @type {number} */ total) {
    this._emit('progress', { id, sent, total })
    this.channel?.postMessage({ type: 'progress', id, sent, total })
  }

  async _onMessage(/** @type {any} */ data) {
    if (data?.type === 'cancel') this.running.get(data.id)?.abort()
    if (data?.type === 'progress') this._emit('progress', data)
    if (data?.type === 'change') {
      const item = await this.get(data.id)
      this._emit('change', item ?? { id: data.id, state: 'cancelled' })
    }
  }

  // -- when to send -----------------------------------------------------------------------------
  /** Send everything now (the page has just opened), then on every `online` event and whenever
   * a waiting item is due. */
  start() {
    if (typeof window !== 'undefined') {
      window.addEventListener('online', () => this.sync({ now: true }))
      // A tab closed mid-upload: the service worker carries on (its lock is free now).
      window.addEventListener('pagehide', () => {
        if (this.running.size) this.requestBackgroundSync()
      })
    }
    return this.sync({ now: true })
  }

  /** Ask the service worker to sync when the network is back, where Background Sync exists. */
  async requestBackgroundSync() {
    try {
      const registration = await navigator.serviceWorker?.getRegistration?.()
      // @ts-ignore: SyncManager is not in every lib.dom
      await registration?.sync?.register(SYNC_TAG)
      return Boolean(registration && 'sync' in registration)
    } catch {
      return false
    }
  }

  /**
   * Send every item that is due, then come back when the next one is. Resolves to the number of
   * items still unfinished (0: all sent or failed); 'busy' when another runner holds the queue.
   * `now`: waiting items too, whatever their next attempt's time (the network is back).
   * @param {{now?: boolean}} [options]
   * @returns {Promise<number | 'busy'>}
   */
  async sync({ now = false } = {}) {
    clearTimeout(this.timer)
    const run = async (/** @type {unknown} */ lock) => (lock === null ? 'busy' : this._run(now))
    const locks = typeof navigator !== 'undefined' ? navigator.locks : undefined
    const result = locks ? await locks.request(LOCK, { ifAvailable: true }, run) : await this._run(now)
    const next = await this._nextDue()
    // Items left waiting (offline, or a failed attempt): the service worker's Background Sync
    // sends them when the network is back, even with the page closed. Not registered while a
    // page sends: a registration made online fires at once, and the worker would take over.
    if (next !== null && result !== 'busy' && typeof window !== 'undefined') this.requestBackgroundSync()
    const online = typeof navigator === 'undefined' || navigator.onLine !== false
    if (next !== null && online && typeof window !== 'undefined') {
      this.timer = Number(setTimeout(() => this.sync(), Math.max(250, next - Date.now())))
    }
    return /** @type {number | 'busy'} */ (result)
  }

  async _nextDue() {
    const items = await this.list()
    const times = items.filter((i) => UNFINISHED.includes(i.state)).map((i) => i.nextAttemptAt)
    return times.length ? Math.min(...times) : null
  }

  async _run(/** @type {boolean} */ all) {
    const tried = new Set()
    // Known to be offline: no attempt (none is spent); the `online` event starts the next run.
    if (typeof navigator !== 'undefined' && navigator.onLine === false) return this._unfinished()
    for (;;) {
      const now = Date.now()
      const due = (await this.list()).filter(
        (i) => UNFINISHED.includes(i.state) && (all || i.nextAttemptAt <= now) && !tried.has(i.id),
      )
      if (!due.length) break
      const queue = [...due]
      const worker = async () => {
        for (let item = queue.shift(); item; item = queue.shift()) {
          tried.add(item.id)
          await this._attempt(item.id)
        }
      }
      await Promise.all(Array.from({ length: Math.min(this.options.concurrency, queue.length) }, worker))
    }
    return this._unfinished()
  }

  async _unfinished() {
    return (await this.list()).filter((i) => UNFINISHED.includes(i.state)).length
  }

  // -- one attempt at one item ------------------------------------------------------------------
  async _attempt(/** @type {string} */ id) {
    const db = await this.db
    const controller = new AbortController()
    this.running.set(id, { abort: () => controller.abort() })
    try {
      let item = await update(db, id, (it) => {
        it.attempts += 1
        if (it.state === State.STORED) return
        checkTransition(it.state, State.UPLOADING)
        it.state = State.UPLOADING
      })
      if (!item) return
      this._changed(item)
      item = await this._steps(item, true, controller.signal)
      if (item && item.state === State.UPLOADING) item = await this._upload(item, controller.signal)
      if (item) item = await this._steps(item, false, controller.signal)
      if (!item) return
      item = await finish(db, id) // done, and its queued bytes dropped
      if (item) this._changed(item)
    } catch (error) {
      if (controller.signal.aborted) return // cancelled: the item is gone
      const item = await update(db, id, (it) => this._failedAttempt(it, error))
      if (item) this._changed(item)
    } finally {
      this.running.delete(id)
    }
  }

  /** @param {any} item @param {unknown} error */
  _failedAttempt(item, error) {
    const message = error instanceof Error ? error.message : String(error)
    if (error instanceof Permanent || error instanceof InvalidItem) {
      checkTransition(item.state, State.FAILED)
      Object.assign(item, {
        state: State.FAILED,
        lastError: message,
        answer: error instanceof Permanent ? error.answer : null,
        failedStep: error instanceof Permanent ? error.step : null,
      })
      return
    }
    const retryAfter = error instanceof Transient ? error.retryAfter : null
    const backoff = Math.min(
      this.options.maxBackoffSeconds,
      this.options.backoffSeconds * 2 ** Math.max(0, Math.min(item.attempts - 1, 16)),
    )
    const wait = Math.max(retryAfter ?? 0, backoff * (0.5 + Math.random() / 2))
    const next = item.state === State.STORED ? State.STORED : State.WAITING
    checkTransition(item.state, next)
    Object.assign(item, { state: next, lastError: message, nextAttemptAt: Date.now() + wait * 1000 })
  }

  // -- steps (docs/chain.schema.json) -----------------------------------------------------------
  /** @param {any} item @param {boolean} before @param {AbortSignal} signal */
  async _steps(item, before, signal) {
    for (const step of item.steps) {
      if (step.done || step.before !== before) continue
      if (signal.aborted) return null
      const { status, captured } = await this._runStep(item, step, signal)
      // The step and its captures in one transaction: a step that succeeded is never sent again.
      item = await update(await this.db, item.id, (it) => {
        Object.assign(it.steps[step.position], { done: true, status, captured })
      })
      if (!item) return null
      this._changed(item)
    }
    return item
  }

  /** @param {any} item @param {any} step @param {AbortSignal} signal */
  async _runStep(item, step, signal) {
    const env = typeof this.options.env === 'function' ? await this.options.env() : this.options.env
    const context = {
      records: item.files.map((/** @type {any} */ f) => f.record ?? {}),
      captured: Object.fromEntries(item.steps.filter((/** @type {any} */ s) => s.done).map((/** @type {any} */ s) => [s.name, s.captured])),
      env: env ?? {},
    }
    const url = render(step.url, context, urlEscape)
    /** @type {Record<string, string>} */
    const headers = { 'Idempotency-Key': `${item.key}.step${step.position}` }
    let body
    if (step.body !== undefined && step.body !== null) {
      const json = isJsonTemplate(step.body)
      body = render(step.body, context, json ? jsonEscape : undefined)
      headers['Content-Type'] = json ? 'application/json' : 'text/plain; charset=utf-8'
    }
    for (const [name, value] of Object.entries(step.headers ?? {})) headers[name] = render(String(value), context)
    const what = `step ${step.name} ${step.method} ${url}`
    let answer
    try {
      answer = await fetch(url, { method: step.method, headers, body, credentials: this.options.stepCredentials, signal })
    } catch (error) {
      throw networkError(what, error)
    }
    const text = (await answer.text()).slice(0, 64 * 1024)
    const status = answer.status
    if (status >= 200 && status < 300) {
      const names = Object.entries(step.capture ?? {})
      if (!names.length) return { status, captured: {} }
      let document
      try {
        document = JSON.parse(text)
      } catch {
        throw new Permanent(`${what}: ${status}, an answer that is not JSON (nothing to capture): ${text.slice(0, 300)}`, { status, answer: text, step: step.name })
      }
      /** @type {Record<string, unknown>} */
      const captured = {}
      for (const [name, pointer] of names) {
        try {
          captured[name] = resolvePointer(document, /** @type {string} */ (pointer))
        } catch {
          throw new Permanent(`${what}: ${status}, an answer without ${JSON.stringify(pointer)} to capture: ${text.slice(0, 300)}`, { status, answer: text, step: step.name })
        }
      }
      return { status, captured }
    }
    if (status === 401 || status >= 500 || [408, 409, 423, 425, 429].includes(status)) {
      throw new Transient(`${what}: ${status}`, retryAfterSeconds(answer.headers.get('Retry-After')))
    }
    throw new Permanent(`${what}: ${status}: ${text.slice(0, 300)}`, { status, answer: text, step: step.name })
  }

  // -- the upload -------------------------------------------------------------------------------
  /** The gateway's credentials: a bearer token, else the session's CSRF token (with its cookie).
   * @returns {Promise<Record<string, string>>} */
  async gatewayHeaders() {
    if (this.options.token) return { Authorization: `Bearer ${await this.options.token()}` }
    const csrf = (await this.options.csrfToken?.()) ?? (await (await this.db).get('meta', 'csrfToken'))
    return csrf ? { 'X-CSRF-TOKEN': String(csrf) } : {}
  }

  /** @param {any} item */
  _fields(item) {
    const context = {
      captured: Object.fromEntries(item.steps.filter((/** @type {any} */ s) => s.done).map((/** @type {any} */ s) => [s.name, s.captured])),
    }
    return Object.fromEntries(Object.entries(item.fields).map(([k, v]) => [k, render(String(v), context)]))
  }

  /** @param {any} item @param {AbortSignal} signal */
  async _upload(item, signal) {
    const db = await this.db
    const forms = item.files.filter((/** @type {any} */ f) => !f.record && f.transport === 'form')
    if (forms.length) {
      const records = await this._uploadForm(item, forms, signal)
      item = await update(db, item.id, (it) => {
        forms.forEach((/** @type {any} */ f, /** @type {number} */ i) => { it.files[f.position].record = records[i] })
      })
      if (!item) return null
    }
    for (const file of item.files) {
      if (file.record) continue
      const record = await this._uploadTus(item, file, signal)
      item = await update(db, item.id, (it) => { it.files[file.position].record = record })
      if (!item) return null
    }
    item = await update(db, item.id, (it) => {
      checkTransition(it.state, State.STORED)
      it.state = State.STORED
    })
    if (item) this._changed(item)
    return item
  }

  /** @param {any} item @param {any[]} files @param {AbortSignal} signal */
  async _uploadForm(item, files, signal) {
    const form = new FormData()
    form.append('projectId', item.project)
    for (const [name, value] of Object.entries(this._fields(item))) form.append(name, value)
    form.append('outboxItem', item.id)
    for (const file of files) {
      const blob = await this.blob(item.id, file.position)
      if (!blob) throw new Permanent(`${file.name}: its queued bytes are gone`)
      form.append('files', new File([blob], file.name, { type: file.type }))
    }
    const headers = { Accept: 'application/json', 'Idempotency-Key': item.key, ...(await this.gatewayHeaders()) }
    let answer
    try {
      answer = await fetch(`${this.options.gateway}/api/upload`, { method: 'POST', body: form, headers, credentials: 'same-origin', signal })
    } catch (error) {
      throw networkError('upload', error)
    }
    const text = await answer.text()
    const refused = gatewayError('upload', answer.status, text, (n) => answer.headers.get(n))
    if (refused) throw refused
    const total = files.reduce((n, f) => n + f.size, 0)
    this._progress(item.id, total, total)
    const records = JSON.parse(text).files
    if (records?.length !== files.length) throw new Permanent(`upload: ${records?.length} records for ${files.length} files`)
    records.forEach((/** @type {any} */ record, /** @type {number} */ i) => verify(files[i], record))
    return records
  }

  /** The record of a file's tus upload when the gateway holds all of its bytes, else null. */
  async _heldRecord(/** @type {any} */ file) {
    if (!file.tusUrl) return null
    const record = await this._media(mediaIdOf(file.tusUrl)).catch((error) => {
      if (error instanceof Permanent) return null
      throw error
    })
    return record && HELD.includes(record.status) && record.size === file.size ? record : null
  }

  async _media(/** @type {string} */ mediaId) {
    let answer
    try {
      answer = await fetch(`${this.options.gateway}/api/media/${mediaId}`, {
        headers: { Accept: 'application/json', ...(await this.gatewayHeaders()) },
        credentials: 'same-origin',
      })
    } catch (error) {
      throw networkError('status', error)
    }
    const text = await answer.text()
    const refused = gatewayError('status', answer.status, text, (n) => answer.headers.get(n))
    if (refused) throw refused
    return JSON.parse(text)
  }

  /** @param {any} item @param {any} file @param {AbortSignal} signal */
  async _uploadTus(item, file, signal) {
    const held = await this._heldRecord(file)
    if (held) return held
    const blob = await this.blob(item.id, file.position)
    if (!blob) throw new Permanent(`${file.name}: its queued bytes are gone`)
    const db = await this.db
    let generation = file.generation
    const creationKey = () => `${item.key}.file${file.position}${generation ? `.r${generation}` : ''}`
    // tus-js-client's URL storage, backed by the item: addUpload() is awaited before the first
    // PATCH, so the URL is in IndexedDB before any byte leaves.
    const urlStorage = {
      findAllUploads: async () => [],
      findUploadsByFingerprint: async () => [],
      removeUpload: async () => {},
      addUpload: async (/** @type {string} */ _fingerprint, /** @type {any} */ upload) => {
        await update(db, item.id, (it) => {
          it.files[file.position].tusUrl = upload.uploadUrl
          it.files[file.position].generation = generation
        })
        return `${item.id}/${file.position}`
      },
    }
    const fields = this._fields(item)
    const headers = await this.gatewayHeaders()
    const url = await new Promise((resolve, reject) => {
      const upload = new tus.Upload(blob, {
        endpoint: `${this.options.gateway}/api/tus/`,
        uploadUrl: file.tusUrl,
        headers,
        metadata: { projectId: item.project, filename: file.name, filetype: file.type, ...fields, outboxItem: item.id },
        chunkSize: this.options.chunkSize,
        retryDelays: [0, 1000, 3000],
        storeFingerprintForResuming: true,
        removeFingerprintOnSuccess: false,
        urlStorage,
        fingerprint: async () => `${item.id}/${file.position}`,
        ...this._stack(),
        onBeforeRequest: (request) => {
          if (request.getMethod() === 'POST') {
            // A new upload: its own creation key; after a gone one (the URL we had), the next.
            if (file.tusUrl && generation === file.generation) generation += 1
            request.setHeader('Idempotency-Key', creationKey())
          }
        },
        onProgress: (sent, total) => this._progress(item.id, sent, total),
        onSuccess: () => resolve(upload.url),
        onError: (error) => reject(error),
      })
      signal.addEventListener('abort', () => {
        // Cancelled: stop, and end the upload at the gateway (retried as a PATCH lets go of it).
        if (upload.url) tus.Upload.terminate(upload.url, { headers, retryDelays: TERMINATE_RETRIES, ...this._stack() }).catch(() => {})
        upload.abort(false).catch(() => {})
        reject(new DOMException('cancelled', 'AbortError'))
      })
      upload.start()
    }).catch((error) => {
      if (error?.name === 'AbortError') throw error
      const response = error?.originalResponse
      if (!response) throw networkError('tus', error)
      throw gatewayError('tus', response.getStatus(), response.getBody() ?? '', (n) => response.getHeader(n) ?? null) ?? networkError('tus', error)
    })
    const record = await this._media(mediaIdOf(String(url)))
    verify(file, record)
    return record
  }
}

/** @param {any} file @param {any} record */
function verify(file, record) {
  if (record.size !== file.size) {
    throw new Permanent(`${file.name}: the gateway stored ${record.size} bytes of ${file.size}`)
  }
}

const mediaIdOf = (/** @type {string} */ url) => url.replace(/\/+$/, '').split('/').pop() ?? ''
