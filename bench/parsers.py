"""Multipart parser throughput: this gateway's parser against werkzeug's sans-I/O decoder and
python-multipart, on the same bodies, fed in the same reads, in one run.

    .venv/bin/python bench/parsers.py [--mib 256] [--read-kib 1024] [--reps 5]

Each parser consumes the body and touches every data chunk it reports (a length sum), as the
upload path would hand it to the hasher and the writer. Prints the best of ``--reps`` runs:
MB/s and CPU seconds per GiB, for one large file and for 2,000 small parts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.uploads.formdata import FileData, FormDataParser, TextField

BOUNDARY = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"
MiB = 1 << 20


def large_body(size: int) -> bytes:
    block = os.urandom(MiB - 64) + b"\r\n--" + BOUNDARY[:-3] + b"\r\n-" * 20
    data = (block * (size // len(block) + 1))[:size]
    head = (
        b"--"
        + BOUNDARY
        + b'\r\nContent-Disposition: form-data; name="projectId"\r\n\r\np1\r\n--'
        + BOUNDARY
        + b'\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    return head + data + b"\r\n--" + BOUNDARY + b"--\r\n"


def small_parts_body(count: int, size: int) -> bytes:
    part = (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n'
        b"\r\n" + os.urandom(size) + b"\r\n"
    )
    return part * count + b"--" + BOUNDARY + b"--\r\n"


def ours(body: bytes, read: int) -> int:
    from gateway.uploads.formdata import FormLimits

    parser = FormDataParser(BOUNDARY, FormLimits(max_files=100_000))
    total = 0
    for i in range(0, len(body), read):
        for event in parser.feed(body[i : i + read]):
            if isinstance(event, FileData):
                total += len(event.data)
            elif isinstance(event, TextField):
                total += len(event.value)
    parser.finish()
    return total


def werkzeug(body: bytes, read: int) -> int:
    from werkzeug.sansio.multipart import Data, Epilogue, MultipartDecoder, NeedData

    decoder = MultipartDecoder(BOUNDARY, max_form_memory_size=None, max_parts=100_000)
    total = 0
    for i in range(0, len(body) + read, read):
        chunk = body[i : i + read] if i < len(body) else None
        decoder.receive_data(chunk)
        event = decoder.next_event()
        while not isinstance(event, (NeedData, Epilogue)):
            if isinstance(event, Data):
                total += len(event.data)
            event = decoder.next_event()
        if chunk is None:
            break
    return total


def python_multipart(body: bytes, read: int) -> int:
    from python_multipart import MultipartParser

    total = [0]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        total[0] += end - start

    parser = MultipartParser(BOUNDARY, {"on_part_data": on_part_data})
    for i in range(0, len(body), read):
        parser.write(body[i : i + read])
    parser.finalize()
    return total[0]


def measure(
    fn: Callable[[bytes, int], int], body: bytes, read: int, reps: int
) -> tuple[float, float]:
    """Best (MB/s, CPU s/GiB) of ``reps`` runs."""
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.process_time()
        fn(body, read)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return len(body) / best_wall / 1e6, best_cpu / (len(body) / (1 << 30))


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__)
    options.add_argument("--mib", type=int, default=256)
    options.add_argument("--read-kib", type=int, default=1024)
    options.add_argument("--reps", type=int, default=5)
    args = options.parse_args()
    read = args.read_kib * 1024
    bodies = {
        f"1 x {args.mib} MiB file": large_body(args.mib * MiB),
        "2,000 x 4 KiB parts": small_parts_body(2000, 4096),
    }
    parsers = {
        "gateway.uploads.formdata": ours,
        "werkzeug MultipartDecoder": werkzeug,
        "python-multipart": python_multipart,
    }
    print(f"reads of {args.read_kib} KiB, best of {args.reps}")
    print(f"{'body':<22} {'parser':<27} {'MB/s':>8} {'CPU s/GiB':>10}")
    for label, body in bodies.items():
        expected = ours(body, read)
        for name, fn in parsers.items():
            if fn(body, read) != expected:
                raise SystemExit(f"{name} read {fn(body, read)} data bytes, not {expected}")
            mbps, cpu = measure(fn, body, read, args.reps)
            print(f"{label:<22} {name:<27} {mbps:>8.0f} {cpu:>10.3f}")


if __name__ == "__main__":
    main()
