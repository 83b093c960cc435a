"""Slow uploads: N concurrent form uploads of SIZE bytes, every client sending at RATE bytes/s,
through gunicorn on S3 (moto); the resident memory of the server's whole process tree.

    .venv/bin/python bench/slow.py                         # N = 50 and 200, 8 MiB at 256 KiB/s
    .venv/bin/python bench/slow.py --n 1000 --rate 32768   # the issue's 1,000 at 32 KiB/s
    .venv/bin/python bench/slow.py --baseline-rev main --multer

For each N and each server (this code; ``--baseline-rev``: the gateway at that revision;
``--multer``: express + multer-s3, bench/multer), one after the other: a fresh server, four fast
warm-up uploads, then the N uploads at once while a sampler sums the VmRSS of the server's
process and all its descendants every 0.1 s. Reported: the tree's RSS before the load (idle) and
at its peak, (peak - idle) / N per upload in flight, the staging directory's peak bytes (the
gateway's slow parts on disk, page cache and not RSS), and the uploads' outcome: every one must
answer 201 and the bucket must hold N objects of SIZE bytes. ``/healthz`` is polled during the
run (p99 reported).

The client is one asyncio process: each upload is one connection that writes its multipart body
in 16 KiB pieces, each 16384/RATE s after the one before (a client that falls behind catches up
by at most 50 ms, never in a burst), so that the pace is the client's, not the server's. Its starts are spread over the first second. One process and one
loopback address serve a few thousand connections; for more, run several (not needed up to
1,000).

Targets (issue 26): 0.25 MiB per upload in flight at 1,000 x 32 KiB/s; marked PASS or MISS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BUCKET, JWT_SECRET, empty_bucket, log, prepare_baseline, warm_up  # noqa: E402

from client import BOUNDARY, MiB, Payload, form_parts  # noqa: E402
from procs import (  # noqa: E402
    SOURCE,
    Procs,
    aws_env,
    flask_cmd,
    gateway_env,
    proc_cpu,
    proc_rss,
    snapshot_source,
    start_gunicorn,
    start_moto,
    start_multer,
    tree,
)

PIECE = 16 * 1024  # per write; 4 KiB pieces made the client (one process) the bottleneck at 200
TARGET_PER_UPLOAD = 0.25 * MiB  # issue 26: at 1,000 x 32 KiB/s


class TreeRss:
    """Sums VmRSS over a process and its descendants every ``interval`` s."""

    def __init__(self, pid: int, staging: Path | None, interval: float = 0.1) -> None:
        self.pid, self.staging, self.interval = pid, staging, interval
        self.peak = 0
        self.peak_staged = 0
        self.peak_breakdown: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        return sum(proc_rss(p) or 0 for p in tree(self.pid))

    def cpu(self) -> float:
        """user+sys CPU seconds of the tree's live processes."""
        return sum(proc_cpu(p) or 0.0 for p in tree(self.pid))

    def breakdown(self) -> dict[str, int]:
        """RssAnon / RssFile / RssShmem summed over the tree (kB -> bytes), and the resident
        anonymous memory by kind of mapping: the heap (small allocations: Python objects,
        buffers under glibc's mmap threshold) and mmapped blocks by size (large buffers)."""
        out: dict[str, int] = {}
        for p in tree(self.pid):
            try:
                with open(f"/proc/{p}/smaps") as f:
                    kind = ""
                    for line in f:
                        first = line.split(None, 6)
                        if "-" in first[0] and len(first) >= 5 and ":" not in first[0]:
                            lo, hi = (int(x, 16) for x in first[0].split("-"))
                            name = first[5].strip() if len(first) > 5 else ""
                            size = hi - lo
                            if name == "[heap]":
                                kind = "heap"
                            elif name:
                                kind = ""
                            else:
                                kind = (
                                    "anon<1M"
                                    if size < MiB
                                    else ("anon1-4M" if size <= 4 * MiB + 8192 else "anon>4M")
                                )
                        elif line.startswith("Rss:") and kind:
                            out[kind] = out.get(kind, 0) + int(line.split()[1]) * 1024
            except OSError:
                pass
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith(("RssAnon", "RssFile", "RssShmem")):
                            name, value = line.split(":")
                            out[name] = out.get(name, 0) + int(value.split()[0]) * 1024
            except OSError:
                pass
        return out

    def _staged(self) -> int:
        if self.staging is None or not self.staging.is_dir():
            return 0
        total = 0
        for entry in os.scandir(self.staging):
            try:
                total += entry.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.sample()
            if now > self.peak:
                self.peak, self.peak_breakdown = now, self.breakdown()
            self.peak_staged = max(self.peak_staged, self._staged())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Outcome:
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)


async def one_upload(
    port: int, token: str, payload: Payload, size: int, rate: int, delay: float, out: Outcome
) -> None:
    await asyncio.sleep(delay)
    head, tail, length = form_parts(size, "slow.png")
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        out.errors.append(f"connect: {exc}")
        return
    try:
        writer.write(
            (
                "POST /api/upload?projectId=bench HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {token}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
            ).encode()
            + head
        )
        due = time.monotonic()  # when the next piece may go: never early, never in a burst
        for chunk in payload.chunks(size):
            for i in range(0, len(chunk), PIECE):
                piece = chunk[i : i + PIECE]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(piece)
                await writer.drain()
                due = max(due, time.monotonic() - 0.05) + len(piece) / rate
        writer.write(tail)
        await writer.drain()
        status_line = await reader.readline()
        raw = await reader.read()
        status = status_line.split(b" ")[1].decode() if status_line else "none"
        out.statuses[status] = out.statuses.get(status, 0) + 1
        if status != "201":
            out.errors.append(f"{status}: {raw[-300:]!r}")
        out.seconds.append(time.monotonic() - started)
    except (OSError, IndexError) as exc:
        out.statuses["reset"] = out.statuses.get("reset", 0) + 1
        out.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def poll_health(port: int, stop: asyncio.Event, out: Outcome) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            await writer.drain()
            await reader.read()
            writer.close()
            out.health_ms.append((time.monotonic() - started) * 1000)
        except OSError:
            out.health_ms.append(float("inf"))
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def load(port: int, token: str, payload: Payload, n: int, size: int, rate: int) -> Outcome:
    out = Outcome()
    stop = asyncio.Event()
    health = asyncio.create_task(poll_health(port, stop, out))
    await asyncio.gather(
        *(one_upload(port, token, payload, size, rate, i / n, out) for i in range(n))
    )
    stop.set()
    await health
    return out


def stored_ok(s3, n: int, size: int) -> list[str]:
    sizes = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        sizes += [o["Size"] for o in page.get("Contents", [])]
    errors = []
    if len(sizes) != n or any(s != size for s in sizes):
        errors.append(f"bucket holds {len(sizes)} objects, sizes {sorted(set(sizes))[:5]}")
    pending = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    if pending:
        errors.append(f"{len(pending)} multipart uploads left open")
    return errors


def run_one(server: str, n: int, args, ctx: dict, procs: Procs, payload: Payload) -> dict:
    staging: Path | None = None
    if server == "multer":
        proc, url = start_multer(
            procs, ctx["moto_url"], BUCKET, "multer", ctx["tmp"] / "multer.log"
        )
        token = ctx["token"]
    else:
        env, token = ctx["env"], ctx["token"]
        if server == "baseline":
            env, token = ctx["baseline"].env, ctx["baseline"].token
        staging = Path(env["GATEWAY_STAGING_DIR"])
        source = ctx["baseline"].running() if server == "baseline" else _nothing()
        with source:
            proc, url = start_gunicorn(procs, env, ctx["tmp"] / f"{server}.log")
    port = int(url.rsplit(":", 1)[1])
    try:
        warm_up(url, token, payload, 4, size_in_answer=server != "multer")
        empty_bucket(ctx["s3"], BUCKET)
        time.sleep(0.5)
        with TreeRss(proc.pid, staging) as rss:
            idle, cpu0 = rss.sample(), rss.cpu()
            outcome = asyncio.run(load(port, token, payload, n, args.size, args.rate))
            cpu = rss.cpu() - cpu0
    finally:
        procs.stop(proc)
    errors = outcome.errors + stored_ok(ctx["s3"], n, args.size)
    left = sorted(p.name for p in staging.iterdir()) if staging and staging.is_dir() else []
    if left:
        errors.append(f"{len(left)} staged files left: {left[:3]}")
    empty_bucket(ctx["s3"], BUCKET)
    health = sorted(outcome.health_ms)
    p99 = health[min(len(health) - 1, int(len(health) * 0.99))] if health else None
    return {
        "server": server,
        "n": n,
        "idle_mib": idle / MiB,
        "peak_mib": rss.peak / MiB,
        "per_upload_mib": (rss.peak - idle) / MiB / n,
        "peak_staged_mib": rss.peak_staged / MiB,
        "peak_breakdown_mib": {k: round(v / MiB, 1) for k, v in rss.peak_breakdown.items()},
        "statuses": outcome.statuses,
        "errors": errors[:10],
        "error_count": len(errors),
        "cpu_s_per_gib": cpu / (n * args.size / 1024**3),
        "median_s": statistics.median(outcome.seconds) if outcome.seconds else None,
        "healthz_p99_ms": p99,
        "healthz_polls": len(health),
    }


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="50,200", help="concurrent uploads, comma-separated")
    parser.add_argument("--size", type=int, default=8 * MiB)
    parser.add_argument("--rate", type=int, default=256 * 1024, help="bytes/s per client")
    parser.add_argument("--baseline-rev", default=None)
    parser.add_argument("--multer", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="GATEWAY_X=v for this code")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    args = parser.parse_args()
    os.environ.update(aws_env())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Procs()
    payload = Payload()
    tmp = Path(tempfile.mkdtemp(prefix="upload-gateway-bench-slow-", dir=args.tmp))
    results: list[dict] = []
    try:
        SOURCE["dir"], _ = snapshot_source(tmp / "src")
        sys.path.insert(0, str(SOURCE["dir"]))
        from gateway.config import Settings
        from gateway.storage.s3 import make_s3_client

        _moto, moto_url = start_moto(procs, tmp / "moto.log")
        log(f"moto at {moto_url}; scratch {tmp}")
        gw = tmp / "gw"
        gw.mkdir()
        env = gateway_env(
            gw,
            storage_url=f"s3://{BUCKET}/up",
            moto_url=moto_url,
            jwt_secret=JWT_SECRET,
            max_upload=max(args.size, 16 * MiB) + MiB,
            workers=args.workers,
        )
        env["GATEWAY_STAGING_DIR"] = str(gw / "staging")
        # the clients' pace is the subject: the slow-body guard must not end them
        env["GATEWAY_BODY_MIN_RATE"] = "1024"
        for item in args.set:
            name, _, value = item.partition("=")
            env[name] = value
        flask_cmd(env, "init")
        token = flask_cmd(env, "token", "--sub", "bench", "--ttl", "4h")
        s3 = make_s3_client(Settings.from_env(env))
        ctx: dict = {"env": env, "token": token, "s3": s3, "moto_url": moto_url, "tmp": tmp}
        servers = ["gateway"]
        if args.baseline_rev:
            base_env = {**env, "GATEWAY_STAGING_DIR": str(tmp / "baseline-staging")}
            ctx["baseline"] = prepare_baseline(args.baseline_rev, base_env, tmp)
            servers.append("baseline")
        if args.multer:
            servers.append("multer")
        for n in [int(x) for x in args.n.split(",")]:
            for server in servers:
                log(f"{server}: {n} x {args.size // MiB} MiB at {args.rate // 1024} KiB/s")
                result = run_one(server, n, args, ctx, procs, payload)
                log(json.dumps(result))
                results.append(result)
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        procs.stop_all()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    print_table(results, args)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0 if all(r["error_count"] == 0 for r in results) else 1


def print_table(results: list[dict], args) -> None:
    print(
        f"\n{args.size // MiB} MiB uploads at {args.rate // 1024} KiB/s each, moto, "
        f"{args.workers} gunicorn workers"
    )
    print(
        "| server | N | tree RSS idle → peak (MiB) | per upload in flight (MiB) | staged peak "
        "(MiB) | 201s | errors | median upload (s) | CPU s/GiB | /healthz p99 (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        verdict = ""
        if r["server"] == "gateway" and r["n"] >= 1000:
            verdict = " PASS" if r["per_upload_mib"] <= TARGET_PER_UPLOAD / MiB else " MISS"
        print(
            f"| {r['server']} | {r['n']} | {r['idle_mib']:.0f} → {r['peak_mib']:.0f} | "
            f"{r['per_upload_mib']:.2f}{verdict} | {r['peak_staged_mib']:.0f} | "
            f"{r['statuses'].get('201', 0)} | {r['error_count']} | {r['median_s'] or 0:.0f} | "
            f"{r['cpu_s_per_gib']:.1f} | "
            f"{r['healthz_p99_ms'] if r['healthz_p99_ms'] is None else round(r['healthz_p99_ms'])} |"
        )


if __name__ == "__main__":
    sys.exit(main())
