"""The load: file bytes generated on the fly, streamed as multipart bodies or handed to boto3.

The client shares the 2 cores with the gateway and moto, so it is kept cheap: one random block
(a few MiB, starting with a PNG signature so the gateway's sniffing accepts it) is generated once
and every file is that block repeated, cut to size. Nothing holds a whole file in memory: the
HTTP body is a sequence of memoryview slices of the block, sent with an explicit Content-Length
(no chunked encoding), and boto3 reads from a file-like object over the same bytes.
"""

from __future__ import annotations

import http.client
import json
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

MiB = 1 << 20
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
BOUNDARY = "----benchboundaryQ7vX2mZ0a9Lk3RtW"
PIECE = 1 * MiB  # bytes per send() / write(): the gateway reads 1 MiB at a time too


class Payload:
    """File content = ``block`` repeated; ``block`` is random and starts with a PNG signature."""

    def __init__(self, block_size: int = 4 * MiB, seed: int = 7) -> None:
        assert block_size % PIECE == 0
        rnd = random.Random(seed)
        self.block = PNG_HEAD + rnd.randbytes(block_size - len(PNG_HEAD))
        marker = b"\r\n--" + BOUNDARY.encode()
        assert marker not in self.block + self.block[: len(marker)]
        view = memoryview(self.block)
        self.pieces = [view[i : i + PIECE] for i in range(0, block_size, PIECE)]

    def chunks(self, size: int) -> Iterator[memoryview]:
        """``size`` bytes of file content as memoryview slices (no copies)."""
        sent, i, n = 0, 0, len(self.pieces)
        while sent < size:
            piece = self.pieces[i % n]
            if sent + len(piece) > size:
                piece = piece[: size - sent]
            yield piece
            sent += len(piece)
            i += 1

    def read_at(self, offset: int, n: int) -> bytes:
        """``n`` bytes of file content from ``offset`` (one copy, for file-like readers)."""
        block, size = self.block, len(self.block)
        start = offset % size
        if start + n <= size:
            return block[start : start + n]
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), size - start)
            out += block[start : start + take]
            start = 0
        return bytes(out)

    def reader(self, size: int) -> PayloadReader:
        return PayloadReader(self, size)


class PayloadReader:
    """A non-seekable file-like view of ``size`` bytes of payload (what a streaming source is)."""

    def __init__(self, payload: Payload, size: int) -> None:
        self._payload, self._size, self._pos = payload, size, 0

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._pos
        if n is None or n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = self._payload.read_at(self._pos, n)
        self._pos += n
        return data

    def readable(self) -> bool:
        return True


# -- the HTTP client ---------------------------------------------------------------------------------
@dataclass
class UploadResult:
    ok: bool
    seconds: float
    status: int = 0
    error: str = ""
    body: dict = field(default_factory=dict)


def form_parts(size: int, name: str) -> tuple[bytes, bytes, int]:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{name}"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head, tail, len(head) + size + len(tail)


def upload_http(
    host: str,
    port: int,
    token: str,
    payload: Payload,
    size: int,
    name: str,
    project: str = "bench",
    timeout: float = 600.0,
    size_in_answer: bool = True,
) -> UploadResult:
    """One POST /api/upload, the body streamed from the payload; timed until the response.
    ``size_in_answer``: the 201 must report ``size`` (multer-s3 reports 0 for a stream: the
    bucket's listing checks its sizes instead)."""
    head, tail, length = form_parts(size, name)
    started = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest("POST", f"/api/upload?projectId={project}", skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {token}")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
        conn.putheader("Content-Length", str(length))
        conn.endheaders(head)
        send_error = ""
        try:
            for piece in payload.chunks(size):
                conn.send(piece)
            conn.send(tail)
        except OSError as exc:  # the gateway answered early and closed: read its answer
            send_error = f"{type(exc).__name__} while sending"
        response = conn.getresponse()
        raw = response.read()
        seconds = time.perf_counter() - started
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"raw": raw[:200].decode("latin-1")}
        sized = body.get("size") == size or not size_in_answer
        ok = response.status == 201 and sized and not send_error
        error = "" if ok else f"HTTP {response.status} {send_error} {str(body)[:200]}"
        return UploadResult(ok, seconds, response.status, error.strip(), body)
    except OSError as exc:
        return UploadResult(False, time.perf_counter() - started, 0, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


# -- running N uploads at a concurrency -------------------------------------------------------------
@dataclass
class RunResult:
    count: int
    size: int
    concurrency: int
    wall_s: float
    latencies: list[float]
    errors: list[str]

    @property
    def bytes(self) -> int:
        return self.count * self.size

    @property
    def mib_s(self) -> float:
        return self.bytes / MiB / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies, q)

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "size": self.size,
            "concurrency": self.concurrency,
            "bytes": self.bytes,
            "wall_s": round(self.wall_s, 3),
            "mib_s": round(self.mib_s, 1),
            "p50_s": round(self.pct(50), 3),
            "p95_s": round(self.pct(95), 3),
            "max_s": round(max(self.latencies, default=0), 3),
            "mean_s": round(statistics.fmean(self.latencies), 3) if self.latencies else 0,
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
        }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_many(
    count: int, size: int, concurrency: int, one: Callable[[int], tuple[bool, float, str]]
) -> RunResult:
    """Call ``one(i)`` for i in range(count) on ``concurrency`` threads; wall time for all."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def task(i: int) -> None:
        try:
            ok, seconds, error = one(i)
        except Exception as exc:  # a bug in the bench or a failed baseline call
            ok, seconds, error = False, 0.0, f"{type(exc).__name__}: {exc}"
        with lock:
            latencies.append(seconds)
            if not ok:
                errors.append(error)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="load") as pool:
        list(pool.map(task, range(count)))
    wall = time.perf_counter() - started
    return RunResult(count, size, concurrency, wall, latencies, errors)


def gateway_one(
    base_url: str, token: str, payload: Payload, size: int, tag: str, size_in_answer: bool = True
) -> Callable[[int], tuple[bool, float, str]]:
    host, port = base_url.removeprefix("http://").split(":")

    def one(i: int) -> tuple[bool, float, str]:
        r = upload_http(
            host, int(port), token, payload, size, f"{tag}-{i}.png", size_in_answer=size_in_answer
        )
        return r.ok, r.seconds, r.error

    return one


def boto3_one(
    client, bucket: str, payload: Payload, size: int, tag: str, transfer_config
) -> Callable[[int], tuple[bool, float, str]]:
    """boto3's own managed upload (upload_fileobj) of the same bytes, from a streaming reader."""

    def one(i: int) -> tuple[bool, float, str]:
        started = time.perf_counter()
        client.upload_fileobj(
            payload.reader(size),
            bucket,
            f"baseline/{tag}-{i}.png",
            ExtraArgs={"ContentType": "image/png"},
            Config=transfer_config,
        )
        return True, time.perf_counter() - started, ""

    return one
