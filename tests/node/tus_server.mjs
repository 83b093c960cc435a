// The reference tus server for differential tests and the benchmark: @tus/server with
// @tus/s3-store on an S3 endpoint (a moto server). Listens on 127.0.0.1 only.
//   node tus_server.mjs <port> <s3 endpoint> <bucket>
import http from "node:http";
import { Server } from "@tus/server";
import { S3Store } from "@tus/s3-store";

const [port, endpoint, bucket] = process.argv.slice(2);
const store = new S3Store({
  partSize: 8 * 1024 * 1024,
  expirationPeriodInMilliseconds: 24 * 3600 * 1000,
  s3ClientConfig: {
    bucket, endpoint, region: "us-east-1", forcePathStyle: true,
    credentials: { accessKeyId: "testing", secretAccessKey: "testing" },
  },
});
const server = new Server({ path: "/files", datastore: store, respectForwardedHeaders: false });
http.createServer((req, res) => server.handle(req, res)).listen(Number(port), "127.0.0.1", () => {
  console.log(`tus reference server on ${port}`);
});
