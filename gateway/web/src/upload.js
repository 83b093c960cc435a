// The gateway's pages' script (gateway/static/upload.js): the upload page (page.js), the result
// view (result.js), and the service worker's offline page, which reloads when the network is back.
if (document.getElementById('upload-form')) {
  import('./page.js')
} else if (document.getElementById('results')) {
  import('./result.js')
} else if (document.getElementById('offline')) {
  window.addEventListener('online', () => location.reload())
}
