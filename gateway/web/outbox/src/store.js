// The queue in IndexedDB (through idb): one database, three stores.
//   items  an item (the chain's upload, its steps, its state), keyed by id, indexed by state
//   blobs  the queued bytes, `${itemId}/${position}`, written in the same transaction as the item
//   meta   small values a service worker needs and cannot read itself (the CSRF token)
// An item moves queued -> uploading -> stored -> done, as in the Python outbox (outbox/store.py):
// `uploading` while an attempt runs; a failed attempt leaves it `waiting` until nextAttemptAt;
// `failed` keeps its error (and a step's answer) until retry() puts it back. Every change is one
// transaction: a tab closed or a browser killed at any moment leaves the last committed state.
import { openDB } from 'idb'

export const DB_NAME = 'gateway-outbox'
const DB_VERSION = 1

/** @typedef {import('../index.js').ItemState} ItemState */
/** @type {Record<string, ItemState>} */
export const State = Object.freeze({
  QUEUED: 'queued',
  UPLOADING: 'uploading',
  WAITING: 'waiting',
  STORED: 'stored',
  DONE: 'done',
  FAILED: 'failed',
})

/** @type {Record<ItemState, ItemState[]>} */
export const TRANSITIONS = Object.freeze({
  queued: ['uploading', 'failed'],
  uploading: ['uploading', 'waiting', 'stored', 'failed'], // uploading -> uploading: taken over
  waiting: ['uploading', 'failed'],
  stored: ['stored', 'done', 'failed'], // stored -> stored: a later step waits for its retry
  failed: ['queued', 'stored'],
  done: [],
})
export const UNFINISHED = Object.freeze(['queued', 'uploading', 'waiting', 'stored'])

export class InvalidTransition extends Error {}

/** @param {ItemState} from @param {ItemState} to */
export function checkTransition(from, to) {
  if (!TRANSITIONS[from]?.includes(to)) {
    throw new InvalidTransition(`an item cannot go from ${from} to ${to}`)
  }
}

/** @param {string} [name] */
export function openStore(name = DB_NAME) {
  return openDB(name, DB_VERSION, {
    upgrade(db) {
      const items = db.createObjectStore('items', { keyPath: 'id' })
      items.createIndex('state', 'state')
      db.createObjectStore('blobs')
      db.createObjectStore('meta')
    },
  })
}

export const blobKey = (/** @type {string} */ id, /** @type {number} */ position) =>
  `${id}/${position}`

/**
 * The item and its blobs, in one transaction: either all of it is queued or nothing is.
 * @param {import('idb').IDBPDatabase} db
 * @param {any} item
 * @param {Blob[]} blobs
 */
export async function insert(db, item, blobs) {
  const tx = db.transaction(['items', 'blobs'], 'readwrite')
  blobs.forEach((blob, position) => tx.objectStore('blobs').put(blob, blobKey(item.id, position)))
  tx.objectStore('items').add(item)
  await tx.done
}

/**
 * Read the item, change it, write it back: one transaction. `change` returns false to leave it.
 * Resolves to the item as written, or null when it is gone (cancelled).
 * @param {import('idb').IDBPDatabase} db
 * @param {string} id
 * @param {(item: any) => boolean | void} change
 */
export async function update(db, id, change) {
  const tx = db.transaction('items', 'readwrite')
  const item = await tx.store.get(id)
  if (!item) {
    await tx.done
    return null
  }
  if (change(item) !== false) {
    item.updatedAt = Date.now()
    await tx.store.put(item)
  }
  await tx.done
  return item
}

/** @param {import('idb').IDBPDatabase} db @param {string} id */
export async function remove(db, id) {
  const tx = db.transaction(['items', 'blobs'], 'readwrite')
  const item = await tx.objectStore('items').get(id)
  for (const file of item?.files ?? []) tx.objectStore('blobs').delete(blobKey(id, file.position))
  tx.objectStore('items').delete(id)
  await tx.done
  return item ?? null
}

/**
 * The item done and its bytes dropped, in one transaction.
 * @param {import('idb').IDBPDatabase} db
 * @param {string} id
 */
export async function finish(db, id) {
  const tx = db.transaction(['items', 'blobs'], 'readwrite')
  const item = await tx.objectStore('items').get(id)
  if (item) {
    checkTransition(item.state, 'done')
    Object.assign(item, { state: 'done', lastError: null, nextAttemptAt: 0, updatedAt: Date.now() })
    for (const file of item.files) tx.objectStore('blobs').delete(blobKey(id, file.position))
    tx.objectStore('items').put(item)
  }
  await tx.done
  return item ?? null
}
