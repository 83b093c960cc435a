// The upload page's service worker (served as /upload/sw.js, scope /upload): an app shell that
// opens offline, and the outbox's Background Sync.
// - The page's script and stylesheet are precached (Workbox), versioned by the build: a deploy
//   builds a new worker, which replaces the old one and its caches.
// - /upload and /upload/result: network first (4 s), else the copy from the last visit, else a
//   small "offline" page (the result view then says it will update when the network is back).
// - `sync` (Background Sync, Chromium-based browsers): the outbox sends what is queued, with the
//   page closed. A sync that leaves items waiting fails, so the browser tries again later.
import { cleanupOutdatedCaches, precacheAndRoute } from 'workbox-precaching'
import { Route, Router } from 'workbox-routing'
import { NetworkFirst } from 'workbox-strategies'
import { CacheableResponsePlugin } from 'workbox-cacheable-response'
import { createOutbox, SYNC_TAG } from '../outbox/src/index.js'

/* global __SHELL__, __BUILD__, __SCRIPT__ */
const PAGES = `upload-pages-${__BUILD__}`

self.addEventListener('install', () => self.skipWaiting())
self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) {
        if (name.startsWith('upload-pages-') && name !== PAGES) await caches.delete(name)
      }
      await self.clients.claim()
    })(),
  )
})

cleanupOutdatedCaches()
precacheAndRoute(__SHELL__)

const pages = new NetworkFirst({
  cacheName: PAGES,
  networkTimeoutSeconds: 4,
  plugins: [new CacheableResponsePlugin({ statuses: [200] })],
})
const router = new Router()
router.registerRoute(new Route(
  ({ url, request }) =>
    url.origin === self.location.origin &&
    (url.pathname === '/upload' || url.pathname === '/upload/result') &&
    request.method === 'GET',
  async (options) => {
    try {
      return await pages.handle(options)
    } catch {
      return offlinePage(new URL(options.request.url).pathname)
    }
  },
))
router.addFetchListener()
router.addCacheListener() // the page sends CACHE_URLS for itself after its first load

function offlinePage(path) {
  const what = path === '/upload/result' ? 'The results' : 'The upload page'
  const html = `<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Offline · upload-gateway</title><link rel="stylesheet" href="/static/upload.css">
<script type="module" src="${__SCRIPT__}"></script></head>
<body data-uploads="idle"><main><h1>Offline</h1>
<p id="offline" role="status">${what} cannot be loaded now: offline, will update when the connection is back.</p>
</main></body></html>`
  return new Response(html, {
    status: 200,
    headers: { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' },
  })
}

const outbox = createOutbox()
self.addEventListener('sync', (event) => {
  if (event.tag !== SYNC_TAG) return
  event.waitUntil(
    outbox.sync().then((left) => {
      if (typeof left === 'number' && left > 0) throw new Error(`${left} items still wait`)
    }),
  )
})
