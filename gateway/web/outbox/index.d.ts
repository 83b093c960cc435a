// Types of @upload-gateway/outbox (src/index.js). The chain's shape is docs/chain.schema.json.

export type ItemState = 'queued' | 'uploading' | 'waiting' | 'stored' | 'done' | 'failed'

export interface StepSpec {
  name: string
  method: 'POST' | 'PUT' | 'PATCH' | 'DELETE'
  url: string
  headers?: Record<string, string>
  /** A template; sent as application/json when it is JSON once filled in, else text/plain. */
  body?: string
  /** Values taken out of the step's JSON answer by JSON Pointer: {attachId: '/AttachID'}. */
  capture?: Record<string, string>
}

export interface ChainFile {
  name: string
  type?: string
  /** The bytes (a File from an input, a recording): stored in IndexedDB when queued. */
  blob: Blob
}

export interface Chain {
  before?: StepSpec[]
  upload: { project: string; fields?: Record<string, string>; files: ChainFile[] }
  after?: StepSpec[]
}

export interface QueuedFile {
  position: number
  name: string
  type: string
  size: number
  transport: 'form' | 'tus'
  /** The tus upload's URL, stored before its first byte is sent. */
  tusUrl: string | null
  generation: number
  /** The gateway's media record once stored (mediaId, s3Key, url, sha256, size, ...). */
  record: Record<string, unknown> | null
}

export interface QueuedStep extends StepSpec {
  position: number
  before: boolean
  done: boolean
  status: number | null
  captured: Record<string, unknown>
}

export interface Item {
  id: string
  /** The item's Idempotency-Key; a step's is `${key}.step${position}`, a tus creation's `${key}.file${n}`. */
  key: string
  state: ItemState
  project: string
  fields: Record<string, string>
  files: QueuedFile[]
  steps: QueuedStep[]
  attempts: number
  /** Epoch milliseconds; 0 when due now. */
  nextAttemptAt: number
  lastError: string | null
  /** The refusing answer's body (a failed item). */
  answer: string | null
  failedStep: string | null
  createdAt: number
  updatedAt: number
}

export interface OutboxOptions {
  /** The gateway's origin ('' for the page's own; the default). */
  gateway?: string
  /** A bearer token for the gateway (never sent to steps); without one, the session cookie. */
  token?: () => string | Promise<string>
  /** The session's CSRF token (with the cookie); else the one saved by saveCsrfToken(). */
  csrfToken?: () => string | null | undefined | Promise<string | null | undefined>
  /** `{{env.NAME}}` in steps: read when a step is sent, never stored. */
  env?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>)
  /** Files up to this size go in one form post per item (default 1 MiB); bigger ones over tus. */
  formMaxBytes?: number
  /** Items sent at once (default 3). */
  concurrency?: number
  /** tus PATCH size (default: one PATCH in a page, 8 MiB in a service worker). */
  chunkSize?: number
  /** First retry after about this (default 2 s), doubling up to maxBackoffSeconds (300). */
  backoffSeconds?: number
  maxBackoffSeconds?: number
  /** fetch credentials of steps (default 'same-origin'). */
  stepCredentials?: RequestCredentials
  /** The IndexedDB database (default 'gateway-outbox'). */
  dbName?: string
}

export interface Progress { id: string; sent: number; total: number }

export declare const SYNC_TAG: string
export declare const DB_NAME: string
export declare const State: Readonly<Record<string, ItemState>>
export declare const TRANSITIONS: Readonly<Record<ItemState, ItemState[]>>
/** A chain that could not run: refused when queued (nothing is queued). */
export declare class InvalidItem extends Error {
  constructor(message: string)
}
/** An attempt that may succeed later: the item waits (retryAfter in seconds, from the answer). */
export declare class Transient extends Error {
  constructor(message: string, retryAfter?: number | null)
  retryAfter: number | null
}
/** Refused for good: the item fails, with the answer kept. */
export declare class Permanent extends Error {
  constructor(message: string, detail?: { status?: number; answer?: string; step?: string })
  status: number | null
  answer: string | null
  step: string | null
}
export declare function checkChain(chain: Chain): (StepSpec & { before: boolean })[]
export declare function createOutbox(options?: OutboxOptions): Outbox

export declare class Outbox {
  constructor(options: OutboxOptions)
  add(chain: Chain): Promise<Item>
  addFiles(files: File[], upload: { project: string; fields?: Record<string, string> }): Promise<Item[]>
  list(): Promise<Item[]>
  get(id: string): Promise<Item | null>
  blob(id: string, position: number): Promise<Blob | null>
  retry(id: string): Promise<Item | null>
  cancel(id: string): Promise<Item | null>
  persist(): Promise<boolean>
  storage(): Promise<{ usage: number | null; quota: number | null; persisted: boolean }>
  saveCsrfToken(token: string): Promise<void>
  on(event: 'change', listener: (item: Item | { id: string; state: 'cancelled' }) => void): () => void
  on(event: 'progress', listener: (progress: Progress) => void): () => void
  start(): Promise<number | 'busy'>
  sync(options?: { now?: boolean }): Promise<number | 'busy'>
  requestBackgroundSync(): Promise<boolean>
  gatewayHeaders(): Promise<Record<string, string>>
}
