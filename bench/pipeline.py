"""Processing benchmark, in one run, each against its baseline:

1. thumbnails of 24-megapixel JPEGs: a plain Pillow ``thumbnail()`` loop (the baseline) against
   the pipeline's describe-and-derive in its sandbox, and against whole jobs (queue, worker,
   record moves, variants written) on local storage; files per second with one worker, and
   the pipeline's overhead;
2. the peak RSS of a job's child process (the target: at most 150 MiB);
3. queue throughput: the SQLite lease queue (one and two consumer processes) and SQS on a
   moto server; messages per second, send + receive + delete;
4. what a clean scan adds: clamd INSTREAM of 1 and 5 MiB files (needs Debian's clamd).

    .venv/bin/python bench/pipeline.py [--files 6] [--messages 5000]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image  # noqa: E402

SIZES = (320, 1280)


def make_photos(folder: Path, count: int) -> list[Path]:
    """6000 x 4000 JPEGs that compress like photos (a gradient under noise), quality 90."""
    paths = []
    for i in range(count):
        noise = Image.effect_noise((6000, 4000), 40 + i).convert("RGB")
        gradient = Image.linear_gradient("L").resize((6000, 4000)).convert("RGB")
        image = Image.blend(noise, gradient, 0.6)
        path = folder / f"p{i}.jpg"
        image.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def pillow_loop(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        for size in SIZES:
            with Image.open(path) as image:
                image.thumbnail((size, size))
                image.save(io.BytesIO(), "WEBP", quality=80)
    return time.perf_counter() - started


def sandboxed(paths: list[Path]) -> tuple[float, int]:
    from gateway.processing.derive import DeriveOptions, derive
    from gateway.processing.sandbox import Peak, run

    peak, started = 0, time.perf_counter()
    for path in paths:
        run(
            derive,
            path,
            "image/jpeg",
            DeriveOptions(thumbnail_sizes=SIZES),
            memory_bytes=1 << 30,
            timeout=120,
        )
        peak = max(peak, Peak.rss)
    return time.perf_counter() - started, peak


def whole_jobs(paths: list[Path], scratch: Path) -> float:
    from gateway.media.lifecycle import Status
    from gateway.processing.worker import Worker, WorkerOptions
    from gateway.services import Services

    from conftest import make_settings

    settings = make_settings(scratch, backend="local")
    svc = Services.from_settings(settings)
    svc.provision()
    ids = []
    for n, path in enumerate(paths):
        media_id = f"{n:032x}"
        key = f"projects/bench/media/{media_id}.jpg"
        writer = svc.store.open_writer(key, content_type="image/jpeg", metadata={})
        writer.write(path.read_bytes())
        writer.commit(sha256="0" * 64)
        from gateway.media.records import MediaRecord

        svc.records.create_many(
            [
                MediaRecord(
                    media_id=media_id,
                    project_id="bench",
                    tenant="",
                    owner="b",
                    original_name="p.jpg",
                    file_type="image",
                    mime_type="image/jpeg",
                    s3_key=key,
                    size=path.stat().st_size,
                    sha256="0" * 64,
                    created_at=f"2026-01-01T00:00:{n:02d}",
                )
            ]
        )
        ids.append(media_id)
    worker = Worker(
        svc.queue,
        svc.pipeline.handle,
        on_last_failure=svc.pipeline.on_last_failure,
        options=WorkerOptions(concurrency=1, wait=0.05),
    )
    started = time.perf_counter()
    for media_id in ids:
        svc.queue.send({"type": "media.process", "mediaId": media_id})
    while not all(svc.records.get(i).status is Status.READY for i in ids):
        worker.run_once()
    took = time.perf_counter() - started
    worker.drain()
    return took


def _consume(path: str, n: int, out) -> None:
    from gateway.queue.sqlite import SqliteQueue

    queue = SqliteQueue(path, max_receives=5)
    done = 0
    while done < n:
        batch = queue.receive(max_messages=10, wait=0.2, visibility=60)
        if not batch:
            break
        for message in batch:
            queue.delete(message)
        done += len(batch)
    out.put(done)


def sqlite_queue(scratch: Path, messages: int, consumers: int) -> float:
    from gateway.queue.sqlite import SqliteQueue

    path = str(scratch / f"q{consumers}.db")
    queue = SqliteQueue(path, max_receives=5)
    queue.create()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    started = time.perf_counter()
    for n in range(messages):
        queue.send({"type": "media.process", "mediaId": f"{n:032x}"})
    procs = [ctx.Process(target=_consume, args=(path, messages, out)) for _ in range(consumers)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join()
    took = time.perf_counter() - started
    assert total == messages, total
    return messages / took


def sqs_queue(messages: int) -> float | None:
    try:
        from support import start_moto_server, stop
    except ImportError:
        return None
    import os

    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "b", "AWS_SECRET_ACCESS_KEY": "b", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    import boto3

    from gateway.queue.sqs import SqsQueue

    proc, url = start_moto_server()
    try:
        queue = SqsQueue(
            boto3.client("sqs", endpoint_url=url, region_name="us-east-1"),
            name="bench",
            max_receives=5,
        )
        queue.create()
        started = time.perf_counter()
        for n in range(messages):
            queue.send({"n": n})
        done = 0
        while done < messages:
            batch = queue.receive(max_messages=10, wait=0, visibility=60)
            for message in batch:
                queue.delete(message)
            done += len(batch)
        return messages / (time.perf_counter() - started)
    finally:
        stop(proc)


def scan_times(scratch: Path) -> dict[str, float] | None:
    try:
        from clamd_harness import start_clamd

        from support import stop
    except ImportError:
        return None
    from gateway.processing.scanner import ClamdScanner

    try:
        proc, url = start_clamd(scratch / "clamd")
    except RuntimeError:
        return None
    try:
        scanner = ClamdScanner(url, timeout=60)
        results = {}
        for mib in (1, 5):  # the test clamd takes at most 8 MiB per stream
            data = bytes(range(256)) * (mib * 4096)
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                assert scanner.scan(
                    [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
                ).clean
                runs.append(time.perf_counter() - started)
            results[f"{mib} MiB"] = statistics.median(runs) * 1000
        return results
    finally:
        stop(proc)


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--files", type=int, default=6)
    options.add_argument("--messages", type=int, default=5000)
    args = options.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        scratch = Path(tmp)
        print(f"making {args.files} 24-megapixel JPEGs ...", flush=True)
        paths = make_photos(scratch, args.files)
        pillow_loop(paths[:1])  # warm the codecs
        base = min(pillow_loop(paths) for _ in range(2))
        box, peak = min(sandboxed(paths) for _ in range(2))
        jobs = whole_jobs(paths, scratch / "jobs")
        n = len(paths)
        print(f"\nthumbnails ({'/'.join(map(str, SIZES))} px WebP) of {n} x 24 MP JPEG, one worker")
        print(f"{'path':<44} {'files/s':>8} {'overhead':>9}")
        print(f"{'plain Pillow thumbnail() loop (baseline)':<44} {n / base:>8.2f} {'':>9}")
        print(f"{'derive() in the sandbox':<44} {n / box:>8.2f} {box / base - 1:>+9.1%}")
        print(
            f"{'whole jobs (queue, worker, records, writes)':<44} {n / jobs:>8.2f} "
            f"{jobs / base - 1:>+9.1%}"
        )
        print(f"\npeak RSS of a job's child process: {peak / (1 << 20):.0f} MiB (target <= 150)")
        print("\nqueue throughput (send + receive + delete), messages/s")
        for consumers in (1, 2):
            rate = sqlite_queue(scratch, args.messages, consumers)
            print(f"  SQLite lease queue, {consumers} consumer process(es): {rate:,.0f}")
        sqs = sqs_queue(min(args.messages, 1000))
        print(
            f"  SQS on a moto server, 1 consumer: {sqs:,.0f}"
            if sqs
            else "  SQS: moto not installed"
        )
        scans = scan_times(scratch)
        if scans:
            print(
                "\na clean clamd scan (INSTREAM, median of 5): "
                + ", ".join(f"{k}: {v:.0f} ms" for k, v in scans.items())
            )
        else:
            print("\nclamd not installed: scan times not measured")


if __name__ == "__main__":
    main()
