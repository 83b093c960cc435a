// A recording from the microphone: MediaRecorder (Opus in WebM where the browser offers it, else
// Opus in Ogg, else the browser's own choice, AAC in MP4 on Safari), its level read by a Web Audio
// AnalyserNode and its duration while it runs. It ends as a File (name, type, bytes), the same as
// one chosen in the file input, so whatever queues files (the upload; a browser outbox) takes it
// as it is.
import { getFileTypeExtension } from '@uppy/core/utils'

const PREFERRED_TYPES = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus']
const TIMESLICE_MS = 1000 // the recorder hands over a chunk a second, not all at the end

export function canRecord() {
  return typeof MediaRecorder !== 'undefined' && Boolean(navigator.mediaDevices?.getUserMedia)
}

export function recordingType() {
  return PREFERRED_TYPES.find((type) => MediaRecorder.isTypeSupported(type)) ?? ''
}

// Asks for the microphone and starts. onLevel(0..1, the peak of the last analyser window) and
// onDuration(seconds) are called once per animation frame. Resolves to { mimeType, stop }, where
// stop() resolves to the recording as a File; the microphone is released either way.
export async function startRecording({ onLevel = () => {}, onDuration = () => {} } = {}) {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true })
  let recorder
  try {
    const mimeType = recordingType()
    recorder = new MediaRecorder(stream, mimeType ? { mimeType } : {})
  } catch (error) {
    stream.getTracks().forEach((track) => track.stop())
    throw error
  }
  const chunks = []
  recorder.addEventListener('dataavailable', (event) => {
    if (event.data.size) chunks.push(event.data)
  })
  const stopped = new Promise((resolve, reject) => {
    recorder.addEventListener('stop', resolve, { once: true })
    recorder.addEventListener('error', (event) => reject(event.error ?? new Error('recording failed')))
  })

  const context = new AudioContext()
  const analyser = context.createAnalyser()
  analyser.fftSize = 2048
  context.createMediaStreamSource(stream).connect(analyser)
  const samples = new Float32Array(analyser.fftSize)
  const startedAt = new Date()
  const started = performance.now()
  let frame = 0
  const measure = () => {
    analyser.getFloatTimeDomainData(samples)
    let peak = 0
    for (const sample of samples) peak = Math.max(peak, Math.abs(sample))
    onLevel(Math.min(1, peak))
    onDuration((performance.now() - started) / 1000)
    frame = requestAnimationFrame(measure)
  }

  recorder.start(TIMESLICE_MS)
  measure()

  const release = () => {
    cancelAnimationFrame(frame)
    stream.getTracks().forEach((track) => track.stop())
    context.close().catch(() => {})
  }

  return {
    mimeType: recorder.mimeType,
    async stop() {
      try {
        if (recorder.state !== 'inactive') recorder.stop()
        await stopped
      } finally {
        release()
      }
      // Some browsers leave the first chunk's type empty: take the recorder's, else a chunk's.
      const declared = recorder.mimeType || chunks.find((chunk) => chunk.type)?.type || 'audio/webm'
      const type = declared.split(';', 1)[0]
      const name = `recording-${stamp(startedAt)}.${getFileTypeExtension(type) ?? 'bin'}`
      return new File(chunks, name, { type, lastModified: Date.now() })
    },
  }
}

export function formatDuration(seconds) {
  const whole = Math.floor(seconds)
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, '0')}`
}

function stamp(date) {
  const two = (n) => String(n).padStart(2, '0')
  return (
    `${date.getFullYear()}${two(date.getMonth() + 1)}${two(date.getDate())}-` +
    `${two(date.getHours())}${two(date.getMinutes())}${two(date.getSeconds())}`
  )
}
