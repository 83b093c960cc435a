// tus-js-client (Node) uploading one file; prints one JSON line: {ok, url, error, progress}.
//   node tus_client.mjs '<json options>'
// options: endpoint, token, file, metadata, chunkSize, uploadDataDuringCreation,
//          uploadLengthDeferred, parallelUploads, resumeUrl
import fs from "node:fs";
import * as tus from "tus-js-client";

const options = JSON.parse(process.argv[2]);
const data = fs.readFileSync(options.file);
let progress = 0;
const upload = new tus.Upload(data, {
  endpoint: options.endpoint,
  uploadUrl: options.resumeUrl || null,
  headers: options.token ? { Authorization: `Bearer ${options.token}` } : {},
  metadata: options.metadata || {},
  metadataForPartialUploads: options.metadataForPartialUploads || {},
  chunkSize: options.chunkSize || Infinity,
  uploadDataDuringCreation: Boolean(options.uploadDataDuringCreation),
  uploadLengthDeferred: Boolean(options.uploadLengthDeferred),
  parallelUploads: options.parallelUploads || 1,
  retryDelays: [],
  removeFingerprintOnSuccess: true,
  onProgress: (sent) => { progress = sent; },
  onError: (error) => {
    console.log(JSON.stringify({ ok: false, error: String(error), progress }));
    process.exit(1);
  },
  onSuccess: () => {
    console.log(JSON.stringify({ ok: true, url: upload.url, progress }));
  },
});
upload.start();
