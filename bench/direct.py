"""Direct-to-S3 benchmark: initiate latency, and a 256 MiB presigned multipart upload.

    .venv/bin/python bench/direct.py [--quick]

1. Initiate latency, in-process (the Flask app called through its test client, so no HTTP
   stack is measured): batches of 1 and of 20 small files (presigned PUT + POST policy, no S3
   call), and a batch of 1 large file (multipart: one CreateMultipartUpload on the moto server
   plus one presigned URL per part). p50/p95 over many calls.
2. Throughput of a 256 MiB upload done by a client with the presigned part URLs (4 parts in
   flight, plain HTTP PUTs with requests) and the gateway's complete call (which lists the parts,
   completes, and sniffs the first bytes), against boto3's upload_fileobj of the same bytes to the
   same moto server (4 threads, same part size), in the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from client import percentile
from procs import Procs, aws_env, start_moto

MiB = 1024 * 1024
PART = 8 * MiB


def timed(fn, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, a 64 MiB upload")
    args = parser.parse_args()
    os.environ.update(aws_env())
    from gateway import create_app
    from gateway.config import Settings
    from gateway.http.auth import mint_token
    from gateway.storage.s3 import make_s3_client

    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="bench-direct-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            _, moto_url = start_moto(procs, tmp / "moto.log")
            settings = Settings(
                storage_url="s3://bench-direct/up",
                s3_endpoint_url=moto_url,
                records_url=f"sqlite:///{tmp / 'records.db'}",
                orphan_journal=str(tmp / "orphans.jsonl"),
                queue_url=f"sqlite:///{tmp / 'queue.db'}",
                processing=False,
                jwt_secret="bench-" + "s" * 40,
                direct_part_size=PART,
                log_level="WARNING",
            ).replace()
            app = create_app(settings)
            svc = app.extensions["gateway"]
            svc.records.create_schema()
            svc.store.create_bucket()
            with app.app_context():
                headers = {"Authorization": f"Bearer {mint_token('bench')}"}
            client = app.test_client()

            def initiate(files):
                response = client.post(
                    "/api/uploads/initiate",
                    headers=headers,
                    json={"projectId": "bench", "files": files},
                )
                assert response.status_code == 201, response.get_json()
                return response.get_json()["uploads"]

            small = {"filename": "a.png", "contentType": "image/png", "size": MiB}
            large = {"filename": "v.mp4", "contentType": "video/mp4", "size": 256 * MiB}
            n = 50 if args.quick else 300
            rows = []
            for label, files, calls in (
                ("1 file (PUT+POST)", [small], n),
                ("20 files (PUT+POST)", [small] * 20, n // 5),
                ("1 file (multipart, 32 parts)", [large], n // 3),
            ):
                initiate(files)  # warm
                times = timed(lambda files=files: initiate(files), calls)
                rows.append(
                    (label, calls, percentile(times, 50) * 1000, percentile(times, 95) * 1000)
                )
            print("Initiate latency, in-process (ms)")
            print(f"{'batch':32} {'calls':>6} {'p50':>8} {'p95':>8}  target p95 (1 file) < 10 ms")
            for label, calls, p50, p95 in rows:
                print(f"{label:32} {calls:6d} {p50:8.2f} {p95:8.2f}")

            size = (64 if args.quick else 256) * MiB
            block = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + os.urandom(PART - 24)
            content = (block * (size // PART + 1))[:size]
            direct_s = presigned_upload(initiate, client, headers, content)
            s3 = make_s3_client(settings)
            from boto3.s3.transfer import TransferConfig

            start = time.perf_counter()
            s3.upload_fileobj(
                io.BytesIO(content),
                "bench-direct",
                "baseline.mp4",
                Config=TransferConfig(
                    multipart_chunksize=PART, max_concurrency=4, multipart_threshold=PART
                ),
            )
            boto_s = time.perf_counter() - start
            mib = size / MiB
            print(f"\n{mib:.0f} MiB upload (4 parts in flight, {PART // MiB} MiB parts)")
            print(f"{'path':44} {'seconds':>8} {'MiB/s':>8}")
            print(
                f"{'presigned part URLs + gateway complete':44} {direct_s:8.2f} {mib / direct_s:8.1f}"
            )
            print(f"{'boto3 upload_fileobj (same moto)':44} {boto_s:8.2f} {mib / boto_s:8.1f}")
            print(f"{'ratio':44} {'':8} {boto_s / direct_s:8.2f}")
        finally:
            procs.stop_all()
    return 0


def presigned_upload(initiate, client, headers, content: bytes) -> float:
    """Seconds from the first part PUT to the gateway's 200 on complete."""
    [upload] = initiate([{"filename": "v.mp4", "contentType": "video/mp4", "size": len(content)}])
    part_size = upload["multipart"]["partSize"]
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=8))

    def put(part):
        n = part["partNumber"]
        body = memoryview(content)[(n - 1) * part_size : n * part_size]
        response = session.put(part["url"], data=body, timeout=120)
        response.raise_for_status()
        return {"partNumber": n, "etag": response.headers["ETag"]}

    start = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(put, upload["multipart"]["parts"]))
    done = client.post(
        f"/api/uploads/{upload['uploadId']}/complete", headers=headers, json={"parts": parts}
    )
    elapsed = time.perf_counter() - start
    assert done.status_code == 200, done.get_json()
    return elapsed


if __name__ == "__main__":
    sys.exit(main())
