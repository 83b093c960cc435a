// The benchmark's anchor: the usual Node way to stream form uploads to S3 (express, multer,
// multer-s3 on @aws-sdk/client-s3), with its defaults. POST /api/upload with one "file" part
// answers 201 {"size", "key"} once S3 holds the object. Listens on 127.0.0.1 only.
//   PORT, S3_ENDPOINT, BUCKET, PREFIX (and AWS_* credentials) from the environment.
import express from "express";
import multer from "multer";
import multerS3 from "multer-s3";
import { S3Client } from "@aws-sdk/client-s3";
import { randomUUID } from "node:crypto";

const s3 = new S3Client({
  endpoint: process.env.S3_ENDPOINT,
  region: process.env.AWS_DEFAULT_REGION || "us-east-1",
  forcePathStyle: true,
});
const upload = multer({
  storage: multerS3({
    s3,
    bucket: process.env.BUCKET,
    contentType: multerS3.AUTO_CONTENT_TYPE,
    key: (req, file, cb) => cb(null, `${process.env.PREFIX}/${randomUUID()}`),
  }),
});

const app = express();
app.get("/healthz", (req, res) => res.json({ status: "ok" }));
app.post("/api/upload", upload.single("file"), (req, res) => {
  res.status(201).json({ success: true, size: req.file.size, key: req.file.key });
});
app.use((err, req, res, next) => {
  res.status(500).json({ success: false, error: { code: "error", message: String(err) } });
});
app.listen(Number(process.env.PORT), "127.0.0.1");
