"""Slow uploads, held: N form uploads declaring SIZE bytes each, every client sending at RATE
bytes/s, through the shipped nginx config and gunicorn on S3 (moto), held in flight; then a few
finish at full speed and the rest disconnect.

    .venv/bin/python bench/held.py                 # the issue's run: 10,000 x 64 MiB at 4 KiB/s
    nice -n 19 .venv/bin/python bench/held.py --n 300 --finish 10 --hold 20   # a small one

One run: moto; gunicorn (``gunicorn.conf.py``, 2 gevent workers, staging on disk, a metrics
listener) and four warm-up uploads; nginx with ``nginx/gateway.conf`` rendered as the end-to-end
tests render it, and the shipped ``nginx/nginx.conf``'s connection limits (``--nginx-workers``
processes, ``reuseport`` on the listener so the kernel spreads the connections evenly: this
machine's hard limit of open files is 20,000 per process, below one worker's share of 10,000
uploads through a proxy). Then:

1. The client opens the N uploads over ``--ramp`` seconds: headers, the multipart part's head,
   then RATE bytes per second in 4 KiB writes (never early, never in a burst), from
   ``--procs`` processes (asyncio, about 2,500 connections each) and ``--sources`` loopback
   addresses (127.0.0.1, .2, ...; each connection binds its address with
   IP_BIND_ADDRESS_NO_PORT so the ports are chosen per destination).
2. ``--hold`` seconds after the last one opened: the resident memory (VmRSS) summed over nginx's
   and gunicorn's process trees, the uploads the gateway has in flight (its
   ``gateway_uploads_in_flight``) and the staged files. The RSS peak of the whole run is kept too.
3. ``--finish`` of them send their remaining bytes at full speed and must answer 201; the others
   close their connections at that same moment.
4. Within ``--settle`` seconds nothing of the others may be left: the bucket holds exactly the
   finished objects (each read back: its size and SHA-256 are the client's; every file ends in
   its upload's number, so a mix-up shows), no multipart upload is open, the staging directory is
   empty, the record store holds only the finished uploads' records (and the warm-up's).

``/healthz`` is asked through nginx every 0.2 s from the first connection to the end of step 3
(timeout 10 s; a failure counts as 10 s); p50 and p99 are reported (and the same straight to
gunicorn, to tell nginx's share from the gateway's).

Targets (issue 26): at most 1 GiB resident after the hold; /healthz p99 under 100 ms; every
finished upload stored exactly; nothing left of the others. Each marked PASS or MISS; the exit
status is 1 when one is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from run import BUCKET, JWT_SECRET, empty_bucket, warm_up  # noqa: E402

import procs as procs_module  # noqa: E402
from client import BOUNDARY, MiB, Payload, form_parts  # noqa: E402
from procs import (  # noqa: E402
    SOURCE,
    Procs,
    aws_env,
    flask_cmd,
    free_port,
    gateway_env,
    proc_cpu,
    proc_rss,
    snapshot_source,
    start_gunicorn,
    start_moto,
    tree,
)

PIECE = 4096  # bytes per trickled write
ID_BYTES = 16  # every file ends in its upload's number
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
TARGET_RSS = 1024 * MiB
TARGET_HEALTH_P99_MS = 100.0


def log(msg: str) -> None:
    print(f"[held {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def file_id(i: int) -> bytes:
    return f"{i:0{ID_BYTES}d}".encode()


def content(payload: Payload, start: int, end: int):
    """Bytes [start, end) of every file's common part (the block repeated), as memoryviews."""
    block = memoryview(payload.block)
    size, pos = len(block), start
    while pos < end:
        offset = pos % size
        take = min(end - pos, size - offset, MiB)
        yield block[offset : offset + take]
        pos += take


# -- the client (one process of several) -----------------------------------------------------------
class Conn:
    __slots__ = ("answer", "error", "i", "late", "sent")

    def __init__(self, i: int) -> None:
        self.i, self.sent, self.answer, self.error, self.late = i, 0, b"", "", 0.0


async def one(cfg: dict, payload: Payload, i: int, delay: float, src: str, st: dict) -> Conn:
    c = Conn(i)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(delay)
    size, rate = cfg["size"], cfg["rate"]
    head, tail, length = form_parts(size, f"held-{i}.png")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((src, 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", cfg["port"]))
        reader, writer = await asyncio.open_connection(sock=sock)
    except OSError as exc:
        sock.close()
        c.error = f"connect: {exc}"
        st["failed"] += 1
        return c
    answer = asyncio.ensure_future(reader.read())  # an answer before the end is an error
    try:
        writer.write(
            (
                "POST /api/upload?projectId=bench HTTP/1.1\r\nHost: bench\r\n"
                f"Authorization: Bearer {cfg['token']}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
            ).encode()
            + head
        )
        await writer.drain()
        st["opened"] += 1
        finish: asyncio.Event = st["finish"]
        due = loop.time()
        common = size - ID_BYTES
        while not finish.is_set() and not answer.done() and c.sent + PIECE < common:
            wait = due - loop.time()
            if wait > 0:
                try:
                    await asyncio.wait_for(finish.wait(), wait)
                    break
                except TimeoutError:
                    pass
            c.late = max(c.late, loop.time() - due)
            for piece in content(payload, c.sent, c.sent + PIECE):
                writer.write(piece)
            c.sent += PIECE
            await writer.drain()
            due = max(due, loop.time() - 0.05) + PIECE / rate
        if answer.done():
            c.answer = answer.result()
            c.error = "answered early"
            st["early"] += 1
        elif i in cfg["finishers"]:
            for piece in content(payload, c.sent, common):
                writer.write(piece)
                await writer.drain()
            writer.write(file_id(i) + tail)
            await writer.drain()
            c.sent = size
            c.answer = await asyncio.wait_for(answer, cfg["answer_timeout"])
        else:
            writer.close()  # the client goes away mid-body
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        c.error = f"{type(exc).__name__}: {exc}"
        st["failed"] += 1
    finally:
        answer.cancel()
        writer.close()
    return c


async def client_run(cfg: dict) -> dict:
    payload = Payload()
    loop = asyncio.get_running_loop()
    st = {"opened": 0, "failed": 0, "early": 0, "finish": asyncio.Event()}

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if line.strip() == "finish" or not line:
            loop.call_soon_threadsafe(st["finish"].set)

    threading.Thread(target=on_stdin, daemon=True).start()

    async def report() -> None:
        while True:
            print(
                json.dumps({"opened": st["opened"], "failed": st["failed"], "early": st["early"]}),
                flush=True,
            )
            await asyncio.sleep(1.0)

    reporter = asyncio.ensure_future(report())
    mine, sources = cfg["indices"], cfg["sources"]
    cfg["finishers"] = set(cfg["finishers"])
    cpu0 = time.process_time()
    conns = await asyncio.gather(
        *(
            one(cfg, payload, i, cfg["ramp"] * k / max(1, len(mine)), sources[i % len(sources)], st)
            for k, i in enumerate(mine)
        )
    )
    reporter.cancel()
    return {
        "done": True,
        "cpu_s": time.process_time() - cpu0,
        "max_late_s": max((c.late for c in conns), default=0.0),
        "conns": [
            {"i": c.i, "sent": c.sent, "error": c.error, "answer": c.answer.decode("latin-1")}
            for c in conns
            if c.error or c.i in cfg["finishers"]
        ],
    }


def client_main(raw: str) -> int:
    raise_nofile()
    result = asyncio.run(client_run(json.loads(raw)))
    print(json.dumps(result), flush=True)
    return 0


# -- the run ----------------------------------------------------------------------------------------
def breakdown(pids: list[int]) -> dict[str, int]:
    """Resident bytes of ``pids`` by kind of mapping: the heap (glibc's brk arena), anonymous
    mappings under 1 MiB (greenlet stacks, thread arenas' small blocks), larger anonymous ones
    (big buffers), and file-backed pages (code, libraries)."""
    out = {"heap": 0, "anon<1M": 0, "anon>=1M": 0, "file": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps") as f:
                kind = "file"
                for line in f:
                    first = line.split(None, 6)
                    if "-" in first[0] and ":" not in first[0] and len(first) >= 5:
                        lo, hi = (int(x, 16) for x in first[0].split("-"))
                        name = first[5].strip() if len(first) > 5 else ""
                        if name == "[heap]":
                            kind = "heap"
                        elif name and not name.startswith("["):
                            kind = "file"
                        else:
                            kind = "anon<1M" if hi - lo < MiB else "anon>=1M"
                    elif line.startswith("Rss:"):
                        out[kind] += int(line.split()[1]) * 1024
        except OSError:
            pass
    return out


class Memory:
    """VmRSS summed over nginx's and gunicorn's process trees, every 0.5 s; the peak kept."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.peak: dict[str, int] = {"total": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, int]:
        out = {name: sum(proc_rss(p) or 0 for p in tree(pid)) for name, pid in self.roots.items()}
        out["total"] = sum(out.values())
        return out

    def cpu(self, only: str | None = None) -> float:
        return sum(
            proc_cpu(p) or 0.0
            for name, pid in self.roots.items()
            if only in (None, name)
            for p in tree(pid)
        )

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            now = self.sample()
            if now["total"] > self.peak["total"]:
                self.peak = now

    def __enter__(self) -> Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Health:
    """GET /healthz every 0.2 s through nginx; milliseconds per answer (10 s for a failure)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ms: list[float] = []
        self.at: list[float] = []  # when each was asked
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import http.client

        while not self._stop.wait(0.2):
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
                conn.close()
                if status != 200:
                    raise OSError(f"status {status}")
                self.ms.append((time.monotonic() - started) * 1000)
            except OSError as exc:
                self.failures.append(str(exc))
                self.ms.append(10_000.0)
            self.at.append(started)

    def __enter__(self) -> Health:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def quantile(self, q: float, before: float | None = None) -> float | None:
        """Over the whole run, or only the polls asked before ``before``."""
        ms = sorted(
            m for m, t in zip(self.ms, self.at, strict=True) if before is None or t < before
        )
        if not ms:
            return None
        return ms[min(len(ms) - 1, int(len(ms) * q))]


def in_flight(metrics_url: str) -> float | None:
    import urllib.request

    try:
        text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    except OSError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_uploads_in_flight{")
    )


def start_nginx(
    procs: Procs, tmp: Path, upstream: str, workers: int, reuseport: bool, body_buffer: str
):
    sys.path.insert(0, str(ROOT / "tests"))
    from e2e_harness import ensure_nginx, nginx_check, write_test_nginx_conf

    nginx = ensure_nginx()
    run_dir = tmp / "nginx"
    run_dir.mkdir()
    port = free_port()
    listen = f"127.0.0.1:{port}" + (" reuseport" if reuseport else "")
    conf = write_test_nginx_conf(
        run_dir,
        listen=listen,
        upstream=upstream,
        media_root=tmp / "media",
        worker_processes=workers,
    )
    if body_buffer:  # a comparison: another relay buffer than the shipped one
        server = run_dir / "gateway.conf"
        text = server.read_text().replace(
            "client_body_buffer_size 16k;", f"client_body_buffer_size {body_buffer};"
        )
        server.write_text(text)
    nginx_check(nginx, conf, run_dir)
    out = open(run_dir / "nginx.out", "ab")
    proc = procs.popen(
        "nginx",
        [nginx, "-p", str(run_dir), "-e", str(run_dir / "error.log"), "-c", str(conf)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, port, run_dir


def leftovers(s3, staging: Path, records_db: Path, expect_records: int) -> list[str]:
    out = []
    pending = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    if pending:
        out.append(f"{len(pending)} multipart uploads open")
    staged = [p.name for p in staging.iterdir()] if staging.is_dir() else []
    if staged:
        out.append(f"{len(staged)} staged files")
    with sqlite3.connect(records_db) as db:
        media = db.execute("SELECT count(*) FROM media").fetchone()[0]
        held = db.execute("SELECT count(*) FROM reservations").fetchone()[0]
    if media != expect_records:
        out.append(f"{media} records, expected {expect_records}")
    if held:
        out.append(f"{held} quota reservations")
    return out


def check_stored(s3, results: list[dict], size: int, prefix_hash, workers: int) -> list[str]:
    errors: list[str] = []
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys += [(o["Key"], o["Size"]) for o in page.get("Contents", [])]
    listed = dict(keys)
    want: dict[str, int] = {}
    for r in results:
        body = r["answer"].split("\r\n\r\n", 1)[-1]
        try:
            key = json.loads(body)["files"][0]["s3Key"]
        except (ValueError, KeyError, IndexError, TypeError):
            errors.append(f"upload {r['i']}: no key in its answer {body[:200]!r}")
            continue
        want[key] = r["i"]
    extra = set(listed) - set(want)
    if extra:
        errors.append(f"{len(extra)} objects in the bucket that no finished upload names")

    def verify(key: str) -> str | None:
        i = want[key]
        if listed.get(key) != size:
            return f"{key}: size {listed.get(key)}, expected {size}"
        digest = prefix_hash.copy()
        digest.update(file_id(i))
        h = hashlib.sha256()
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
        for chunk in iter(lambda: body.read(4 * MiB), b""):
            h.update(chunk)
        if h.hexdigest() != digest.hexdigest():
            return f"{key}: SHA-256 differs from upload {i}'s"
        return None

    with ThreadPoolExecutor(workers) as pool:
        errors += [e for e in pool.map(verify, sorted(want)) if e]
    return errors


def run(args, procs: Procs, tmp: Path) -> dict:
    SOURCE["dir"], _ = snapshot_source(tmp / "src")
    sys.path.insert(0, str(SOURCE["dir"]))
    from gateway.config import Settings
    from gateway.storage.s3 import make_s3_client

    # 100 uploads of 64 MiB finish at once: with the other benches' 16 MiB buffer moto would
    # hold all their parts in memory (up to 6.4 GiB) until each completes; on disk instead.
    procs_module.MOTO_KEY_BUFFER = MiB
    _moto, moto_url = start_moto(procs, tmp / "moto.log")
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
    staging = gw / "staging"
    metrics_port = free_port()
    env["GATEWAY_STAGING_DIR"] = str(staging)
    env["GATEWAY_METRICS_BIND"] = f"127.0.0.1:{metrics_port}"
    for item in args.set:
        name, _, value = item.partition("=")
        env[name] = value
    flask_cmd(env, "init")
    token = flask_cmd(env, "token", "--sub", "bench", "--ttl", "4h").splitlines()[-1]
    s3 = make_s3_client(Settings.from_env(env))
    gunicorn, url = start_gunicorn(procs, env, tmp / "gunicorn.log", config=args.gunicorn_config)
    payload = Payload()
    warm_up(url, token, payload, 4)
    empty_bucket(s3, BUCKET)
    records_db = gw / "records.db"
    with sqlite3.connect(records_db) as db:
        base_records = db.execute("SELECT count(*) FROM media").fetchone()[0]
    nginx, port, nginx_dir = start_nginx(
        procs,
        tmp,
        url.removeprefix("http://"),
        args.nginx_workers,
        not args.no_reuseport,
        args.nginx_body_buffer,
    )
    log(f"moto {moto_url}, gunicorn {url}, nginx :{port}; scratch {tmp}")

    common = args.size - ID_BYTES
    prefix = hashlib.sha256()
    for piece in content(payload, 0, common):
        prefix.update(piece)
    finishers = list(range(0, args.n, max(1, args.n // args.finish)))[: args.finish]
    sources = [f"127.0.0.{k + 1}" for k in range(args.sources)]
    ramp = args.ramp if args.ramp is not None else max(5.0, args.n / 500)
    clients = []
    for k in range(args.procs):
        cfg = {
            "port": port,
            "token": token,
            "size": args.size,
            "rate": args.rate,
            "ramp": ramp,
            "indices": list(range(k, args.n, args.procs)),
            "finishers": [i for i in finishers if i % args.procs == k],
            "sources": sources,
            "answer_timeout": args.answer_timeout,
        }
        clients.append(
            procs.popen(
                f"client{k}",
                [sys.executable, __file__, "--client", json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        )
    status: list[dict] = [{} for _ in clients]
    finals: list[dict | None] = [None for _ in clients]

    def read_client(k: int) -> None:
        assert clients[k].stdout is not None
        for line in clients[k].stdout:
            msg = json.loads(line)
            if msg.get("done"):
                finals[k] = msg
            else:
                status[k] = msg

    readers = [
        threading.Thread(target=read_client, args=(k,), daemon=True) for k in range(len(clients))
    ]
    for t in readers:
        t.start()

    def total(name: str) -> int:
        return sum(s.get(name, 0) for s in status)

    roots = {"nginx": nginx.pid, "gunicorn": gunicorn.pid}
    result: dict = {"n": args.n, "size": args.size, "rate": args.rate, "finish": args.finish}
    gunicorn_port = int(url.rsplit(":", 1)[1])
    with Memory(roots) as mem, Health(port) as health, Health(gunicorn_port) as direct:
        idle = mem.sample()
        cpu0 = mem.cpu()
        started = time.monotonic()
        deadline = started + ramp + args.ramp_slack
        while total("opened") + total("failed") < args.n and time.monotonic() < deadline:
            time.sleep(0.5)
        all_open = time.monotonic()
        result["ramp_s"] = all_open - started
        log(
            f"{total('opened')} open, {total('failed')} failed, {total('early')} answered early "
            f"after {result['ramp_s']:.0f} s"
        )
        while time.monotonic() < all_open + args.hold:
            time.sleep(1.0)
        held = mem.sample()
        result["held_breakdown_mib"] = {
            name: {k: round(v / MiB, 1) for k, v in breakdown(tree(pid)).items()}
            for name, pid in roots.items()
        }
        result["in_flight_at_hold"] = in_flight(f"http://127.0.0.1:{metrics_port}/metrics")
        result["staged_files_at_hold"] = len(list(staging.iterdir())) if staging.is_dir() else 0
        result["open_at_hold"] = total("opened") - total("early") - total("failed")
        result["early_at_hold"] = total("early")
        result["failed_at_hold"] = total("failed")
        result["cpu_s_to_hold"] = mem.cpu() - cpu0
        log(
            f"after {args.hold} s: RSS {held['total'] / MiB:.0f} MiB (nginx "
            f"{held['nginx'] / MiB:.0f}, gunicorn {held['gunicorn'] / MiB:.0f}); "
            f"{result['in_flight_at_hold']} in flight at the gateway, "
            f"{result['staged_files_at_hold']} staged files"
        )
        finish_started = time.monotonic()
        nginx_cpu = mem.cpu("nginx")
        for c in clients:
            assert c.stdin is not None
            c.stdin.write("finish\n")
            c.stdin.flush()
        for t in readers:
            t.join(args.answer_timeout + 120)
        result["finish_s"] = time.monotonic() - finish_started
        result["finish_mib_s"] = args.finish * args.size / MiB / result["finish_s"]
        gib = args.finish * args.size / (1 << 30)
        result["finish_nginx_cpu_s_per_gib"] = (mem.cpu("nginx") - nginx_cpu) / gib
    for c in clients:
        procs.stop(c)
    result["idle_mib"] = idle["total"] / MiB
    result["held_mib"] = {k: v / MiB for k, v in held.items()}
    result["peak_mib"] = {k: v / MiB for k, v in mem.peak.items()}
    result["per_upload_kib"] = (held["total"] - idle["total"]) / 1024 / args.n
    result["healthz"] = {
        "polls": len(health.ms),
        "failures": len(health.failures),
        "p50_ms": health.quantile(0.5),
        "p99_ms": health.quantile(0.99),
        "max_ms": max(health.ms) if health.ms else None,
        "held_p50_ms": health.quantile(0.5, before=finish_started),
        "held_p99_ms": health.quantile(0.99, before=finish_started),
    }
    result["healthz_gunicorn"] = {
        "polls": len(direct.ms),
        "failures": len(direct.failures),
        "p50_ms": direct.quantile(0.5),
        "p99_ms": direct.quantile(0.99),
        "max_ms": max(direct.ms) if direct.ms else None,
        "held_p99_ms": direct.quantile(0.99, before=finish_started),
    }
    done = [f for f in finals if f]
    result["client_cpu_s"] = sum(f["cpu_s"] for f in done)
    result["client_max_late_s"] = max((f["max_late_s"] for f in done), default=None)
    conns = [c for f in done for c in f["conns"]]
    fin = [c for c in conns if c["i"] in set(finishers)]
    errs = [c for c in conns if c["error"]]
    result["client_errors"] = len(errs)
    result["client_error_samples"] = [
        f"{c['i']}: {c['error']} {c['answer'][:200]!r}" for c in errs[:5]
    ]
    statuses: dict[str, int] = {}
    for c in fin:
        line = c["answer"].split("\r\n", 1)[0]
        code = line.split(" ")[1] if line.startswith("HTTP/") else "none"
        statuses[code] = statuses.get(code, 0) + 1
    result["finished_statuses"] = statuses
    if len(done) < len(clients):
        result["client_errors"] += 1
        result["client_error_samples"].append(f"{len(clients) - len(done)} clients never reported")

    deadline = time.monotonic() + args.settle
    stored = sum(1 for c in fin if c["answer"].startswith("HTTP/1.1 201"))
    expect = base_records + stored  # the warm-up's and the finished ones' records, no others
    while True:
        left = leftovers(s3, staging, records_db, expect)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(2)
    result["left"] = left
    result["settle_s"] = args.settle - max(0.0, deadline - time.monotonic())
    ok201 = [c for c in fin if c["answer"].startswith("HTTP/1.1 201")]
    result["stored_errors"] = check_stored(s3, ok201, args.size, prefix, 2)[:10]
    result["server_cpu_s"] = None
    result["nginx_alerts"] = [
        line.strip()
        for line in (nginx_dir / "error.log").read_text(errors="replace").splitlines()
        if "[alert]" in line or "[crit]" in line or "[emerg]" in line
    ][:5]
    return result


def verdicts(r: dict) -> list[tuple[str, str, bool]]:
    h = r["healthz"]
    return [
        (
            f"resident memory of nginx + gunicorn {r['hold']} s after all {r['n']} opened <= 1 GiB",
            f"{r['held_mib']['total']:.0f} MiB (nginx {r['held_mib']['nginx']:.0f}, gunicorn "
            f"{r['held_mib']['gunicorn']:.0f}); peak {r['peak_mib']['total']:.0f}",
            r["held_mib"]["total"] * MiB <= TARGET_RSS,
        ),
        (
            "all accepted and in flight at the gateway",
            f"{r['in_flight_at_hold']} in flight, {r['open_at_hold']} open at the client, "
            f"{r['early_at_hold']} answered early, {r['failed_at_hold']} failed",
            r["in_flight_at_hold"] == r["n"] and r["open_at_hold"] == r["n"],
        ),
        (
            "/healthz p99 < 100 ms during the run",
            f"p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, max {h['max_ms']:.0f} ms, "
            f"{h['failures']} failures of {h['polls']}; before the finish: p50 "
            f"{h['held_p50_ms'] or 0:.1f} ms, p99 {h['held_p99_ms'] or 0:.1f} ms",
            h["p99_ms"] is not None and h["p99_ms"] < TARGET_HEALTH_P99_MS and not h["failures"],
        ),
        (
            f"{r['finish']} finished at full speed, stored exactly",
            f"{r['finished_statuses']}; {len(r['stored_errors'])} storage errors",
            r["finished_statuses"] == {"201": r["finish"]} and not r["stored_errors"],
        ),
        (
            "the rest left nothing (object, multipart upload, staged part, record)",
            "; ".join(r["left"]) or f"nothing, {r['settle_s']:.0f} s after they left",
            not r["left"],
        ),
    ]


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        return client_main(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64 * MiB)
    parser.add_argument("--rate", type=int, default=4096, help="bytes/s per client")
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--finish", type=int, default=100)
    parser.add_argument("--ramp", type=float, default=None, help="s to open them all (n/500)")
    parser.add_argument("--ramp-slack", type=float, default=120.0)
    parser.add_argument("--settle", type=float, default=180.0)
    parser.add_argument("--answer-timeout", type=float, default=900.0)
    parser.add_argument("--procs", type=int, default=None, help="client processes (n/2500)")
    parser.add_argument("--sources", type=int, default=None, help="loopback addresses (n/5000)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--nginx-workers", type=int, default=2)
    parser.add_argument("--no-reuseport", action="store_true")
    parser.add_argument("--nginx-body-buffer", default="", help="e.g. 256k, for a comparison")
    parser.add_argument("--set", action="append", default=[], help="GATEWAY_X=v")
    parser.add_argument(
        "--gunicorn-config", default="gunicorn.conf.py", help="another one, e.g. with hooks"
    )
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    args = parser.parse_args()
    args.procs = args.procs or max(1, math.ceil(args.n / 2500))
    args.sources = args.sources or max(1, math.ceil(args.n / 5000))
    args.finish = min(args.finish, args.n)
    hard = raise_nofile()
    log(f"open files limit {hard}; {args.procs} client processes, {args.sources} source addresses")
    os.environ.update(aws_env())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="upload-gateway-bench-held-", dir=args.tmp))
    try:
        result = run(args, procs, tmp)
    except Exception:
        traceback.print_exc()
        return 2
    finally:
        procs.stop_all()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    result["hold"] = args.hold
    print(
        f"\n{args.n} uploads declaring {args.size // MiB} MiB at {args.rate // 1024} KiB/s, "
        f"held {args.hold:g} s; {args.workers} gunicorn workers, {args.nginx_workers} nginx "
        f"workers; ramp {result['ramp_s']:.0f} s; client CPU {result['client_cpu_s']:.0f} s, "
        f"writes at most {result['client_max_late_s'] or 0:.2f} s late; idle tree "
        f"{result['idle_mib']:.0f} MiB, +{result['per_upload_kib']:.1f} KiB per upload"
    )
    g = result["healthz_gunicorn"]
    print(
        f"/healthz straight to gunicorn: p50 {g['p50_ms'] or 0:.1f} ms, p99 "
        f"{g['p99_ms'] or 0:.1f} ms (before the finish {g['held_p99_ms'] or 0:.1f}), max "
        f"{g['max_ms'] or 0:.0f} ms, {g['failures']} failures"
    )
    print(
        f"at the hold, by kind of mapping (MiB): {result['held_breakdown_mib']}; "
        f"the {args.finish} finished at {result['finish_mib_s']:.1f} MiB/s together, nginx "
        f"{result['finish_nginx_cpu_s_per_gib']:.2f} CPU s/GiB meanwhile"
    )
    if result["client_errors"]:
        print(f"client errors: {result['client_errors']}: {result['client_error_samples']}")
    if result["nginx_alerts"]:
        print(f"nginx alerts: {result['nginx_alerts']}")
    print("| target | measured | |\n|---|---|---|")
    verdict = verdicts(result)
    for name, measured, ok in verdict:
        print(f"| {name} | {measured} | {'PASS' if ok else 'MISS'} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "result": result}, indent=1))
    return 0 if all(ok for *_, ok in verdict) else 1


if __name__ == "__main__":
    sys.exit(main())
