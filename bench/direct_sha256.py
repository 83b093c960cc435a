"""Where a direct upload's SHA-256 is computed when the client promised none: at ``complete``
(a read-back of the object) or in the processing worker (which reads the object anyway).

    .venv/bin/python bench/direct_sha256.py [--sizes 64,512] [--reps 3]

Against a moto server on loopback, for objects of each size uploaded as a direct multipart
upload stores them (8 MiB parts), three ways, each repeated and the median reported:

1. complete: ``S3DirectUploads.sha256`` — the read-back ``complete`` does for a promised
   SHA-256 (and would do for every upload if it computed the hash there);
2. worker, not hashing: the job's read of the object into its scratch file, which processing
   does for every media item (``pipeline.HashedRead`` of a record that has its SHA-256);
3. worker, hashing: the same read of a record whose SHA-256 is pending.

Per GiB: wall seconds, this process's CPU seconds (all threads) and the moto server's. What
computing at complete adds is all of (1); what computing in the worker adds is (3) - (2).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import Procs, aws_env, proc_cpu, start_moto

MiB = 1 << 20
GiB = 1 << 30
PART = 8 * MiB


def measure(fn: Callable[[], object], moto_pid: int) -> tuple[float, float, float]:
    """(wall s, this process's CPU s, moto's CPU s) of one call."""
    moto_before, cpu_before = proc_cpu(moto_pid) or 0.0, time.process_time()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    return wall, time.process_time() - cpu_before, (proc_cpu(moto_pid) or 0.0) - moto_before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,512", help="object sizes in MiB")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(aws_env())
    from boto3.s3.transfer import TransferConfig

    from gateway.config import Settings
    from gateway.media.records import MediaRecord, Sha256State
    from gateway.processing.pipeline import HashedRead
    from gateway.storage import open_storage

    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="bench-sha256-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            moto, moto_url = start_moto(procs, tmp / "moto.log")
            settings = Settings(
                storage_url="s3://bench-sha256/up",
                s3_endpoint_url=moto_url,
                records_url=f"sqlite:///{tmp / 'records.db'}",
                orphan_journal=str(tmp / "orphans.jsonl"),
                jwt_secret="bench-" + "s" * 40,
            ).replace()
            storage = open_storage(settings)
            storage.objects.create_bucket()
            direct = storage.direct
            assert direct is not None
            store = storage.objects

            def complete_read_back(key: str) -> None:
                direct.sha256(key)

            def worker_read(key: str, hashed: bool) -> None:
                record = MediaRecord(
                    media_id="0" * 32,
                    project_id="bench",
                    tenant="",
                    owner="bench",
                    original_name="f.bin",
                    file_type="other",
                    mime_type="application/octet-stream",
                    s3_key=key,
                    size=0,
                    sha256="" if hashed else "0" * 64,
                    sha256_state=Sha256State.PENDING if hashed else Sha256State.RECEIVED,
                    created_at="2026-01-01T00:00:00+00:00",
                )
                read = HashedRead(record, store.read(key))
                with open(tmp / "original", "wb") as out:
                    for chunk in read:
                        out.write(chunk)
                assert read.hashing is hashed

            block = os.urandom(PART)
            print(
                f"moto {moto_url}; objects stored by multipart upload ({PART // MiB} MiB parts); "
                f"median of {args.reps}; per GiB"
            )
            header = f"{'size':>8} {'what':44} {'wall s':>8} {'CPU s':>8} {'moto CPU s':>10}"
            print(header)
            for size_mib in (int(s) for s in args.sizes.split(",")):
                size = size_mib * MiB
                key = f"bench/{size_mib}.bin"
                store.client.upload_fileobj(
                    io.BytesIO((block * (size // PART + 1))[:size]),
                    store.bucket,
                    store.full_key(key),
                    Config=TransferConfig(
                        multipart_chunksize=PART, multipart_threshold=PART, max_concurrency=4
                    ),
                )
                worker_read(key, hashed=False)  # warm: moto's first reads of an object
                rows = {
                    "complete: read-back (S3DirectUploads.sha256)": lambda k=key: (
                        complete_read_back(k)
                    ),
                    "worker: read to scratch, hash known": lambda k=key: worker_read(
                        k, hashed=False
                    ),
                    "worker: read to scratch, hash pending": lambda k=key: worker_read(
                        k, hashed=True
                    ),
                }
                medians = {}
                for label, fn in rows.items():
                    runs = [measure(fn, moto.pid) for _ in range(args.reps)]
                    medians[label] = tuple(
                        statistics.median(r[i] for r in runs) * GiB / size for i in range(3)
                    )
                for label, (wall, cpu, moto_cpu) in medians.items():
                    print(f"{size_mib:>6}Mi {label:44} {wall:8.2f} {cpu:8.2f} {moto_cpu:10.2f}")
                plain, hashed = list(medians.values())[1:]
                print(
                    f"{size_mib:>6}Mi {'hashing in the worker adds':44} "
                    f"{hashed[0] - plain[0]:8.2f} {hashed[1] - plain[1]:8.2f} "
                    f"{hashed[2] - plain[2]:10.2f}"
                )
                store.delete(key)
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
