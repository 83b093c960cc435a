"""Writer comparison: smart_open's S3 writer vs the gateway's S3ObjectWriter, on moto.

The same bytes (bench.client.Payload, written 1 MiB at a time as the gateway's upload loop does)
go into S3 through
  * smart_open 9 ``smart_open.open('s3://bucket/key', 'wb', compression='disable',
    transport_params={'client': client, 'min_part_size': ...})`` with 8 MiB parts (the gateway's
    part size) and with its default 50 MiB parts;
  * ``gateway.storage.s3.S3ObjectStore.from_settings(client, bucket=..., prefix="", settings=...)
    .open_writer(...)`` then ``write`` / ``commit`` (8 MiB parts, 2 in flight: the defaults).
Both use the gateway's own botocore client (``make_s3_client``). Measured: HTTP requests sent
(botocore ``before-send.s3.*`` events), wall time, CPU of this process (the writer and its part
threads) and of moto, and this process's peak RSS growth (VmHWM after resetting it).

    .venv/bin/python bench/writers.py [--quick]      # starts its own moto server
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import smart_open

from client import MiB, Payload, percentile
from procs import CpuMeter, Procs, aws_env, start_moto

KiB = 1024
SHORT = {
    "CreateMultipartUpload": "create",
    "UploadPart": "part",
    "CompleteMultipartUpload": "complete",
    "PutObject": "put",
    "PutObjectTagging": "tag",
}
BUCKET = "bench-writers"


class RequestCounter:
    def __init__(self, client) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        client.meta.events.register("before-send.s3.*", self._on_send)

    def _on_send(self, event_name: str, **_) -> None:
        with self._lock:
            self.counts[event_name.rsplit(".", 1)[-1]] += 1

    def take(self) -> dict[str, int]:
        with self._lock:
            counts, self.counts = dict(self.counts), Counter()
        return counts


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak_rss() -> int:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); returns RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def _paced(payload: Payload, size: int, rate_mib_s: float | None):
    """The payload's 1 MiB pieces, optionally arriving no faster than ``rate_mib_s``."""
    start, sent = time.perf_counter(), 0
    for piece in payload.chunks(size):
        if rate_mib_s:
            due = start + sent / MiB / rate_mib_s
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        yield piece
        sent += len(piece)


def smart_open_write(
    client,
    key: str,
    payload: Payload,
    size: int,
    *,
    part_size: int,
    rate: float | None = None,
    sha256: str = "",
) -> float:
    """Returns the longest single write() call (s): how long the caller could not read."""
    stall = 0.0
    params = {"client": client, "min_part_size": part_size}
    with smart_open.open(
        f"s3://{BUCKET}/{key}", "wb", compression="disable", transport_params=params
    ) as f:
        for piece in _paced(payload, size, rate):
            t = time.perf_counter()
            f.write(piece)
            stall = max(stall, time.perf_counter() - t)
    return stall


def gateway_write(
    store, key: str, payload: Payload, size: int, *, rate: float | None = None, sha256: str
) -> float:
    stall = 0.0
    writer = store.open_writer(key, content_type="image/png", metadata={})
    try:
        for piece in _paced(payload, size, rate):
            t = time.perf_counter()
            writer.write(piece)
            stall = max(stall, time.perf_counter() - t)
        writer.commit(sha256=sha256)
    except BaseException:
        writer.abort()
        raise
    return stall


def run_writers(
    moto_url: str,
    moto_pid: int,
    *,
    sizes: list[int],
    small_reps: int = 20,
    paced: tuple[int, float] | None = None,
    log=print,
    quiet=None,
) -> dict:
    """All writer measurements against the moto server at ``moto_url``; returns rows."""
    from gateway.config import Settings  # the snapshot's, when run.py took one
    from gateway.storage.s3 import S3ObjectStore, make_s3_client

    settings = Settings(storage_url=f"s3://{BUCKET}", s3_endpoint_url=moto_url)
    client = make_s3_client(settings)
    counter = RequestCounter(client)
    store = S3ObjectStore.from_settings(client, bucket=BUCKET, prefix="", settings=settings)
    store.create_bucket()
    payload = Payload()
    writers = {
        "smart_open, 8 MiB parts": lambda key, size, rate, sha: smart_open_write(
            client, key, payload, size, part_size=8 * MiB, rate=rate
        ),
        "smart_open, default 50 MiB parts": lambda key, size, rate, sha: smart_open_write(
            client, key, payload, size, part_size=smart_open.s3.DEFAULT_PART_SIZE, rate=rate
        ),
        f"gateway S3ObjectWriter, {store.part_size // MiB} MiB x {store.parts_in_flight} in flight": lambda key, size, rate, sha: (
            gateway_write(store, key, payload, size, rate=rate, sha256=sha)
        ),
    }
    rows = []

    def sha_of(size: int) -> str:
        h = hashlib.sha256()
        for piece in payload.chunks(size):
            h.update(piece)
        return h.hexdigest()

    def clean() -> None:
        for obj in list(store.objects()):
            client.delete_object(Bucket=BUCKET, Key=obj.key)
        counter.take()

    # Warm both paths (botocore loads models and endpoints lazily) outside the measurements.
    for name, write in writers.items():
        write("warmup/" + name.split(",")[0], 1 * KiB, None, sha_of(1 * KiB))
    clean()

    # 1 KiB: requests and latency per file.
    sha = sha_of(1 * KiB)
    for name, write in writers.items():
        if "50 MiB" in name:
            continue  # the part size does not matter below one part
        times = []
        meter = CpuMeter({"moto": moto_pid}).start()
        for i in range(small_reps):
            t = time.perf_counter()
            write(f"small/{i}.png", 1 * KiB, None, sha)
            times.append(time.perf_counter() - t)
        meter.stop()
        counts = counter.take()
        rows.append(
            {
                "writer": name,
                "size": 1 * KiB,
                "files": small_reps,
                "requests_per_file": sum(counts.values()) / small_reps,
                "requests": {k: v / small_reps for k, v in counts.items()},
                "p50_ms": round(statistics.median(times) * 1000, 2),
                "p95_ms": round(percentile(times, 95) * 1000, 2),
                "cpu_ms_per_file": round(meter.cpu["self"] * 1000 / small_reps, 2),
                "moto_cpu_ms_per_file": round(meter.cpu["moto"] * 1000 / small_reps, 2),
            }
        )
        log(
            f"  writers: {name} 1 KiB: {rows[-1]['requests_per_file']:.0f} requests, "
            f"p50 {rows[-1]['p50_ms']} ms"
        )
        clean()

    cases = [(size, None) for size in sizes]
    if paced:
        cases.append(paced)
    for size, rate in cases:
        sha = sha_of(size)
        for name, write in writers.items():
            if quiet:
                quiet()
            base = reset_peak_rss()
            meter = CpuMeter({"moto": moto_pid}).start()
            t = time.perf_counter()
            stall = write(f"big/{size}.png", size, rate, sha)
            wall = time.perf_counter() - t
            meter.stop()
            growth = peak_rss() - base
            counts = counter.take()
            gib = size / (1 << 30)
            rows.append(
                {
                    "writer": name,
                    "size": size,
                    "source_mib_s": rate,
                    "requests": counts,
                    "requests_total": sum(counts.values()),
                    "wall_s": round(wall, 3),
                    "mib_s": round(size / MiB / wall, 1),
                    "cpu_s_per_gib": round(meter.cpu["self"] / gib, 2),
                    "moto_cpu_s_per_gib": round(meter.cpu["moto"] / gib, 2),
                    "max_write_stall_s": round(stall, 3),
                    "other_cores": round(meter.foreign_cores, 2),
                    "peak_rss_growth_mib": round(growth / MiB, 1),
                }
            )
            r = rows[-1]
            log(
                f"  writers: {name} {size // MiB} MiB{f' @ {rate:g} MiB/s' if rate else ''}: "
                f"{r['mib_s']} MiB/s, {r['cpu_s_per_gib']} CPU s/GiB"
            )
            clean()
    return {"rows": rows}


def format_writers(result: dict) -> str:
    lines = [
        "Writer comparison (same bytes, same botocore client, moto on loopback)",
        f"{'writer':<44} {'file':>14} {'requests':>26} {'p50 ms':>7} {'MiB/s':>7} "
        f"{'CPU s/GiB':>9} {'moto s/GiB':>10} {'max stall s':>11} {'RSS +MiB':>8} {'other':>5}",
    ]
    for r in result["rows"]:
        if r["size"] < MiB:
            reqs = f"{r['requests_per_file']:g}: " + "+".join(
                SHORT.get(k, k) for k, v in r["requests"].items() for _ in range(round(v))
            )
            lines.append(
                f"{r['writer']:<44} {'1 KiB':>14} {reqs:>26} {r['p50_ms']:>7} "
                f"{'':>7} {'':>9} {'':>10} {'':>11} {'':>8}"
            )
        else:
            file = f"{r['size'] // MiB} MiB" + (
                f" @{r['source_mib_s']:g}/s" if r["source_mib_s"] else ""
            )
            reqs = str(r["requests_total"])
            lines.append(
                f"{r['writer']:<44} {file:>14} {reqs:>26} {'':>7} {r['mib_s']:>7} "
                f"{r['cpu_s_per_gib']:>9} {r['moto_cpu_s_per_gib']:>10} "
                f"{r['max_write_stall_s']:>11} {r['peak_rss_growth_mib']:>8} "
                f"{r['other_cores']:>5}"
            )
    lines.append(
        "  requests: HTTP requests botocore sent (retries included); @N/s: the source "
        "delivers N MiB/s (a client), so time spent blocked in write() is lost;"
    )
    lines.append(
        "  max stall: the longest single write() call; RSS +MiB: this process's peak "
        "RSS growth during the write; other: cores used by other processes meanwhile."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a sanity run")
    args = parser.parse_args()
    import os

    os.environ.update(aws_env())
    sizes = [16 * MiB, 32 * MiB] if args.quick else [64 * MiB, 256 * MiB]
    paced = (16 * MiB, 100.0) if args.quick else (64 * MiB, 100.0)
    procs = Procs()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-writers-") as tmp:
            moto, url = start_moto(procs, Path(tmp) / "moto.log")
            result = run_writers(
                url, moto.pid, sizes=sizes, paced=paced, small_reps=5 if args.quick else 20
            )
            print(format_writers(result))
            out = Path(__file__).resolve().parent / "results"
            out.mkdir(exist_ok=True)
            name = time.strftime("writers-%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
            (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
