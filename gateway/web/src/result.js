// The result view (/upload/result), with script: instead of reloading itself (the meta refresh
// of the page without script, which turns into the browser's error page when the network drops),
// it asks for each unsettled file's record every few seconds and updates the list in place; while
// the gateway cannot be reached it says so ("offline, will update") and carries on.
const SETTLED = new Set(['ready', 'failed', 'infected'])
const POLL_MS = 3000
const connection = document.getElementById('connection')

function offline(yes) {
  connection.hidden = !yes
  connection.textContent = yes ? 'Offline, will update when the connection is back.' : ''
  document.body.dataset.connection = yes ? 'offline' : 'online'
}

function render(li, media) {
  li.dataset.state = media.status
  const status = li.querySelector('.status')
  if (status) {
    status.textContent = SETTLED.has(media.status) ? media.status : `${media.status} (this page updates itself)`
  }
  if (media.error && !li.querySelector('.error')) {
    const error = document.createElement('span')
    error.className = 'error'
    error.textContent = `: ${media.error}`
    status?.after(error)
  }
  const thumbnail = (media.variants || []).find((v) => v.name.startsWith('thumb') && v.url)
  if (media.status === 'ready' && thumbnail && !li.querySelector('img')) {
    const img = document.createElement('img')
    img.dataset.role = 'thumbnail'
    img.src = thumbnail.url
    img.alt = `Thumbnail of ${media.originalName || media.mediaId}`
    if (thumbnail.width) img.width = thumbnail.width
    if (thumbnail.height) img.height = thumbnail.height
    li.append(document.createElement('br'), img)
  }
}

let timer = 0
async function poll() {
  clearTimeout(timer)
  const waiting = [...document.querySelectorAll('#results li[data-media-id]')].filter(
    (li) => !SETTLED.has(li.dataset.state) && li.dataset.state !== 'missing',
  )
  if (!waiting.length) return
  try {
    for (const li of waiting) {
      const answer = await fetch(`/api/media/${encodeURIComponent(li.dataset.mediaId)}`, {
        credentials: 'same-origin',
        headers: { Accept: 'application/json' },
      })
      if (answer.ok) render(li, await answer.json())
    }
    offline(false)
  } catch {
    offline(true)
  }
  timer = timer = setTimeout(poll, POLL_MS)
}

window.addEventListener('offline', () => offline(true))
window.addEventListener('online', () => poll())
document.documentElement.dataset.enhanced = 'true'
timer = setTimeout(poll, POLL_MS)
