// The upload page, enhanced: several files with a progress bar each. Chosen files and recordings
// go into the browser outbox (../outbox: IndexedDB, tus or a form post, Background Sync), so
// those chosen offline, or interrupted by a reload, a closed tab or a browser restart, are sent
// when the page (or its service worker) next can; the list shows what waits, with Retry and
// Cancel. Big files in S3 mode go direct to S3 instead (Uppy's AwsS3, requests signed by the
// gateway; not kept across a reload). Each file's processing status is followed live until it is
// ready (with its thumbnail; audio with a player and its waveform). A Record button records from
// the microphone (recorder.js). Without this script the form still posts as a plain HTML form.
import Uppy from '@uppy/core'
import AwsS3 from '@uppy/aws-s3'
import { Workbox } from 'workbox-window'
import { createOutbox } from '../outbox/src/index.js'
import { canRecord, formatDuration, startRecording } from './recorder.js'

const config = JSON.parse(document.getElementById('gateway-config').textContent)
const form = document.getElementById('upload-form')
const list = document.getElementById('uploads')
const rows = new Map() // Uppy file id -> row
const SETTLED = new Set(['ready', 'failed', 'infected'])
const ACTIVE = new Set(['queued', 'uploading', 'offline', 'waiting']) // the states a Cancel button shows in

function api(path, options = {}) {
  return fetch(config.api + path, {
    credentials: 'same-origin',
    ...options,
    headers: {
      'Content-Type': 'application/json',
      'X-CSRF-TOKEN': config.csrfToken,
      ...(options.headers || {}),
    },
  }).then(async (response) => {
    const body = await response.json().catch(() => ({}))
    if (!response.ok) throw new Error(errorMessage(body, response.status))
    return body
  })
}

function errorMessage(body, status) {
  return body?.error?.message || `The gateway answered ${status}.`
}

// -- rows --------------------------------------------------------------------------------------
function row(file, uppy) {
  let item = rows.get(file.id)
  if (item) return item
  const li = document.createElement('li')
  li.dataset.fileName = file.name
  li.dataset.state = 'queued'
  const name = document.createElement('span')
  name.className = 'name'
  name.textContent = file.name
  const progress = document.createElement('progress')
  progress.max = 100
  progress.value = 0
  progress.setAttribute('aria-label', `Upload of ${file.name}`)
  const status = document.createElement('span')
  status.className = 'status'
  status.textContent = 'queued'
  li.append(name, ' ', progress, ' ', status)
  item = { li, progress, status, file }
  if (uppy) {
    const cancel = document.createElement('button')
    cancel.type = 'button'
    cancel.dataset.role = 'cancel'
    cancel.textContent = 'Cancel'
    cancel.setAttribute('aria-label', `Cancel the upload of ${file.name}`)
    cancel.addEventListener('click', () => cancelUpload(item, uppy))
    li.append(' ', cancel)
    item.cancel = cancel
  }
  ensureList().append(li)
  rows.set(file.id, item)
  return item
}

// tus: removing the file terminates its upload at the gateway (tus DELETE); S3: the gateway
// aborts the direct upload and removes what reached S3.
function cancelUpload(item, uppy) {
  if (uppy === outbox) {
    show(item, 'cancelled', 'cancelled')
    outbox.cancel(item.file.id).catch(() => {})
    return
  }
  const uploadId = uppy.getFile(item.file.id)?.meta.uploadId
  show(item, 'cancelled', 'cancelled')
  uppy.removeFile(item.file.id)
  if (uppy === viaS3 && uploadId) {
    api(`/uploads/${uploadId}/abort`, { method: 'POST', body: '{}' }).catch(() => {})
  }
}

function ensureList() {
  let ul = list.querySelector('ul')
  if (!ul) {
    ul = document.createElement('ul')
    list.append(ul)
  }
  return ul
}

function show(item, state, text) {
  if (item.li.dataset.state === 'cancelled') return // late events of a removed file
  item.li.dataset.state = state
  item.status.textContent = text ?? state
  if (item.cancel) item.cancel.hidden = !ACTIVE.has(state)
  updateBody()
}

function updateBody() {
  const states = [...rows.values()].map((r) => r.li.dataset.state)
  const busy = states.some((s) => ['queued', 'uploading', 'offline', 'waiting', 'stored', 'processing'].includes(s))
  document.body.dataset.uploads = busy ? 'running' : states.length ? 'done' : 'idle'
}

function progressOf(item, sent, total) {
  const percent = total ? Math.floor((sent / total) * 100) : 0
  item.progress.value = percent
  if (item.li.dataset.state !== 'offline') {
    show(item, 'uploading', `${percent}% (${formatBytes(sent)} of ${formatBytes(total)})`)
  }
}

function formatBytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KiB`
  return `${n} B`
}

// -- after the bytes: the media record, live -------------------------------------------------
function stored(item, mediaId) {
  item.li.dataset.mediaId = mediaId
  item.progress.value = 100
  show(item, 'stored', 'stored')
  follow(item, mediaId)
}

function follow(item, mediaId) {
  const source = new EventSource(`${config.api}/media/${mediaId}/events`)
  source.addEventListener('media', (event) => {
    const media = JSON.parse(event.data)
    render(item, media)
    if (SETTLED.has(media.status)) source.close()
  })
  source.addEventListener('deleted', () => {
    source.close()
    show(item, 'failed', 'deleted')
  })
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED || SETTLED.has(item.li.dataset.state)) return
    source.close()
    poll(item, mediaId)
  }
}

function poll(item, mediaId) {
  fetch(`${config.api}/media/${mediaId}`, { credentials: 'same-origin' })
    .then((response) => response.json())
    .then((media) => {
      render(item, media)
      if (!SETTLED.has(media.status)) setTimeout(() => poll(item, mediaId), 2000)
    })
    .catch(() => setTimeout(() => poll(item, mediaId), 5000))
}

function render(item, media) {
  const state = media.status === 'stored' ? 'stored' : media.status
  const text = media.status === 'failed' || media.status === 'infected'
    ? `${media.status}: ${media.error || ''}`.trim()
    : media.status
  show(item, state, text)
  if (media.url && !item.li.querySelector('a[data-role=url]')) {
    const link = document.createElement('a')
    link.dataset.role = 'url'
    link.href = media.url
    link.textContent = 'open'
    item.li.append(' ', link)
  }
  if (media.status !== 'ready') return
  if (media.contentType?.startsWith('audio/')) {
    showAudio(item, media)
    return
  }
  const thumbnail = (media.variants || []).find((v) => v.name.startsWith('thumb') && v.url)
  if (thumbnail && !item.li.querySelector('img')) {
    const img = document.createElement('img')
    img.dataset.role = 'thumbnail'
    img.src = thumbnail.url
    img.alt = `Thumbnail of ${item.file.name}`
    if (thumbnail.width) img.width = Math.min(thumbnail.width, 160)
    item.li.append(' ', img)
  }
}

// Ready audio: a player, and the waveform where processing drew one (an image variant).
function showAudio(item, media) {
  if (media.url && !item.li.querySelector('audio')) {
    const player = document.createElement('audio')
    player.dataset.role = 'player'
    player.controls = true
    player.preload = 'metadata'
    player.src = media.url
    player.setAttribute('aria-label', `Play ${item.file.name}`)
    item.li.append(' ', player)
  }
  const waveform = (media.variants || []).find((v) => v.contentType?.startsWith('image/') && v.url)
  if (waveform && !item.li.querySelector('img')) {
    const img = document.createElement('img')
    img.dataset.role = 'waveform'
    img.src = waveform.url
    img.alt = `Waveform of ${item.file.name}`
    if (waveform.width) img.width = waveform.width
    item.li.append(' ', img)
  }
}

// -- two uploaders: Uppy runs every uploader on every file it holds --------------------------
function wire(uppy, onSuccess) {
  uppy.on('upload-progress', (file, progress) => {
    progressOf(row(file), progress.bytesUploaded, progress.bytesTotal)
  })
  uppy.on('upload-success', (file, response) => {
    Promise.resolve(onSuccess(file, response))
      .then((mediaId) => stored(row(file), mediaId))
      .catch((error) => show(row(file), 'failed', `failed: ${error.message}`))
  })
  uppy.on('upload-error', (file, error) => {
    show(row(file), 'failed', `failed: ${tusMessage(error)}`)
  })
  return uppy
}

function tusMessage(error) {
  const text = error?.originalResponse?.getBody?.()
  try {
    return JSON.parse(text).error.message
  } catch {
    return error?.message || 'the upload failed'
  }
}

const outbox = createOutbox({ csrfToken })
outbox.on('progress', ({ id, sent, total }) => {
  const view = rows.get(id)
  if (view && !['stored', 'processing', 'ready', 'cancelled'].includes(view.li.dataset.state)) progressOf(view, sent, total)
})
outbox.on('change', (item) => {
  if (item.state === 'cancelled') return
  if (rows.has(item.id) || item.state !== 'done') outboxRow(item)
})
outbox.saveCsrfToken(csrfToken()).catch(() => {})
// The page's outbox, for scripts that queue more than files (a chain: docs/chain.schema.json).
window.uploadOutbox = outbox

const partSizes = new Map() // file size -> the part size initiate chose for it
const viaS3 = config.direct.enabled
  ? wire(
      new Uppy({ id: 's3', autoProceed: false, allowMultipleUploadBatches: true }).use(AwsS3, {
        // The gateway made the key at initiate; every S3 request is signed for it alone.
        generateObjectKey: (file) => file.meta.key,
        // Called with {size} only: the part size initiate chose (it depends on the size alone).
        getChunkSize: ({ size }) => partSizes.get(size) ?? config.direct.partSize,
        shouldUseMultipart: (file) => file.meta.method === 'multipart',
        allowedMetaFields: false,
        limit: 2,
        signRequest: (request) =>
          api('/uploads/sign', { method: 'POST', body: JSON.stringify(request) }),
      }),
      (file) =>
        api(`/uploads/${file.meta.uploadId}/complete`, { method: 'POST', body: '{}' }).then(
          (answer) => {
            if (answer.status !== 'stored') throw new Error(answer.reason || answer.status)
            return answer.mediaId
          },
        ),
    )
  : null

// Each file is initiated at the gateway first: its record, its key, how it goes (PUT or parts).
if (viaS3) {
  viaS3.addPreProcessor(async (fileIDs) => {
    const files = fileIDs.map((id) => viaS3.getFile(id)).filter((f) => !f.meta.uploadId)
    if (!files.length) return
    const answer = await api('/uploads/initiate', {
      method: 'POST',
      body: JSON.stringify({
        projectId: files[0].meta.projectId,
        signRequests: true,
        files: files.map((f) => ({ filename: f.name, contentType: f.type, size: f.size })),
      }),
    })
    answer.uploads.forEach((upload, i) => {
      const meta = {
        uploadId: upload.uploadId,
        key: upload.key,
        method: upload.method,
        partSize: upload.multipart?.partSize,
      }
      viaS3.setFileMeta(files[i].id, meta)
      if (meta.partSize) partSizes.set(files[i].size, meta.partSize)
    })
  })
}

// -- the form -----------------------------------------------------------------------------------
// One file (chosen, or recorded) into the uploader that fits its size; send with sendQueued().
function queueFile(file, projectId) {
  if (!(viaS3 && file.size >= config.direct.minBytes)) return queued(file, projectId)
  const uppy = viaS3
  try {
    const id = uppy.addFile({
      name: file.name,
      type: file.type || 'application/octet-stream',
      data: file,
      meta: { projectId, filename: file.name, filetype: file.type },
    })
    row(uppy.getFile(id), uppy)
  } catch (error) {
    show(row({ id: `refused-${file.name}-${Date.now()}`, name: file.name }), 'failed', `failed: ${error.message}`)
  }
}

function sendQueued() {
  updateBody()
  outbox.sync().catch(() => {})
  viaS3?.upload().catch(() => {})
}

const projectInput = form.querySelector('[name=projectId]')

form.addEventListener('submit', (event) => {
  event.preventDefault()
  const input = form.querySelector('input[type=file]')
  const chosen = [...input.files]
  if (!chosen.length) return
  Promise.all(chosen.map((file) => queueFile(file, projectInput.value))).then(sendQueued)
  input.value = ''
})

// -- the Record button ----------------------------------------------------------------------------
function wireRecorder(panel) {
  const button = panel.querySelector('#record')
  const level = panel.querySelector('#record-level')
  const time = panel.querySelector('#record-time')
  const status = panel.querySelector('#record-status')
  let recording = null

  const showRecording = (on) => {
    button.textContent = on ? 'Stop' : 'Record'
    level.hidden = time.hidden = !on
    panel.dataset.state = on ? 'recording' : 'idle'
    if (!on) level.value = 0
  }

  button.addEventListener('click', async () => {
    if (recording) {
      const ending = recording
      recording = null
      button.disabled = true
      try {
        const file = await ending.stop()
        status.textContent = `${file.name}: ${formatBytes(file.size)}, uploading`
        await queueFile(file, projectInput.value)
        sendQueued()
      } catch (error) {
        status.textContent = `The recording failed: ${error.message}`
      } finally {
        button.disabled = false
        showRecording(false)
      }
      return
    }
    if (!projectInput.reportValidity()) return // a recording goes to this project
    button.disabled = true
    status.textContent = ''
    try {
      time.textContent = formatDuration(0)
      recording = await startRecording({
        onLevel: (value) => {
          level.value = value
        },
        onDuration: (seconds) => {
          time.textContent = formatDuration(seconds)
        },
      })
      panel.dataset.mimeType = recording.mimeType
      showRecording(true)
    } catch (error) {
      status.textContent = `The microphone cannot be used: ${error.message}`
    } finally {
      button.disabled = false
    }
  })
  panel.hidden = false
}

const recorderPanel = document.getElementById('recorder')
if (recorderPanel && canRecord()) wireRecorder(recorderPanel)

window.addEventListener('offline', () => {
  for (const item of rows.values()) {
    if (item.li.dataset.state === 'uploading') show(item, 'offline', 'waiting for connection')
  }
})
window.addEventListener('online', () => {
  outbox.saveCsrfToken(csrfToken()).catch(() => {})
  for (const item of rows.values()) {
    if (item.li.dataset.state === 'offline') show(item, 'uploading', 'resuming')
  }
  viaS3?.retryAll().catch(() => {})
})

showQueue().catch((error) => console.error('the outbox cannot be read', error))
wireServiceWorker()
showStorage().catch(() => {})
updateBody()
document.documentElement.dataset.enhanced = 'true'

// -- the outbox: what waits, durably --------------------------------------------------------------
function readCookie(name) {
  const prefix = `${name}=`
  const found = document.cookie.split('; ').find((c) => c.startsWith(prefix))
  return found ? decodeURIComponent(found.slice(prefix.length)) : null
}

// The session's CSRF cookie outlives a page served from the cache; the page's own token else.
function csrfToken() {
  return readCookie(config.csrfCookie) || config.csrfToken
}

function queued(file, projectId) {
  return outbox
    .add({ upload: { project: projectId, files: [{ name: file.name, type: file.type, blob: file }] } })
    .then((item) => outboxRow(item))
    .catch((error) => {
      show(row({ id: `refused-${file.name}-${Date.now()}`, name: file.name }), 'failed', `failed: ${error.message}`)
    })
}

const outboxStates = {
  queued: () => (navigator.onLine ? 'queued' : 'queued: waiting for connection'),
  uploading: () => 'uploading',
  waiting: (item) =>
    navigator.onLine
      ? `waiting: ${item.lastError || 'retrying'}; next try at ${new Date(item.nextAttemptAt).toLocaleTimeString()}`
      : 'waiting for connection',
  stored: (item) => (item.steps.some((s) => !s.done) ? 'stored, finishing' : 'stored'),
  failed: (item) => `failed: ${item.lastError || ''}`,
}

function outboxRow(item) {
  const first = item.files[0]
  const known = rows.get(item.id)
  const view = known || row({ id: item.id, name: first.name }, outbox)
  view.li.dataset.itemId = item.id
  if (!known) {
    const retry = document.createElement('button')
    retry.type = 'button'
    retry.dataset.role = 'retry'
    retry.textContent = 'Retry'
    retry.hidden = true
    retry.setAttribute('aria-label', `Retry the upload of ${first.name}`)
    retry.addEventListener('click', () => outbox.retry(item.id))
    view.li.append(' ', retry)
    view.retry = retry
  }
  view.retry.hidden = item.state !== 'failed'
  if (item.state === 'done' || (item.state === 'stored' && !item.steps.some((s) => !s.done))) {
    const mediaId = first.record?.mediaId
    if (mediaId && view.li.dataset.mediaId !== mediaId) stored(view, mediaId)
    return view
  }
  if (item.state === 'uploading' && view.li.dataset.state === 'uploading') return view // progress shows
  if (item.state === 'uploading' && !navigator.onLine) return show(view, 'offline', 'waiting for connection'), view
  show(view, item.state, (outboxStates[item.state] || (() => item.state))(item))
  return view
}

async function showQueue() {
  for (const item of await outbox.list()) {
    if (item.state !== 'done') outboxRow(item)
  }
  updateBody()
  outbox.start()
}

function wireServiceWorker() {
  if (!('serviceWorker' in navigator) || !config.serviceWorker) return
  const wb = new Workbox(config.serviceWorker, { scope: '/upload' })
  // The page itself into the app-shell cache (the worker caches later visits on its own).
  const cacheThisPage = () =>
    navigator.serviceWorker.ready.then((registration) =>
      registration.active?.postMessage({ type: 'CACHE_URLS', payload: { urlsToCache: [location.href] } }),
    )
  wb.addEventListener('controlling', cacheThisPage)
  wb.register()
    .then(() => (navigator.onLine ? cacheThisPage() : null))
    .catch((error) => console.warn('no service worker:', error))
}

function formatStorage({ usage, quota, persisted }) {
  if (usage === null || quota === null) return ''
  const kept = persisted ? 'kept until you remove it' : 'the browser may clear it when space runs low'
  return `Queue storage: ${formatBytes(usage)} used of ${formatBytes(quota)} (${kept}).`
}

async function showStorage() {
  const line = document.getElementById('storage')
  if (!line) return
  await outbox.persist().catch(() => false)
  const update = () => outbox.storage().then((s) => {
    line.textContent = formatStorage(s)
    line.hidden = !line.textContent
    line.dataset.persisted = String(s.persisted)
  })
  await update()
  outbox.on('change', () => update().catch(() => {}))
}
