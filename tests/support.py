"""Test helpers: form bodies, sample files, servers on free ports, and the "nothing left" rule."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
JWT_SECRET = "test-secret-" + "s" * 40
MiB = 1024 * 1024


# -- sample content ------------------------------------------------------------------------------
def png_bytes(size: int = 20_000, seed: int = 0) -> bytes:
    head = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    return head + _filler(size - len(head), seed)


def jpeg_bytes(size: int = 20_000, seed: int = 1) -> bytes:
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
    return head + _filler(size - len(head), seed)


def mp4_bytes(size: int = 20_000, seed: int = 2) -> bytes:
    head = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    return head + _filler(size - len(head), seed)


def _filler(size: int, seed: int) -> bytes:
    """Deterministic bytes that also contain CR, LF and '-' (boundary look-alikes)."""
    block = bytes((i * 31 + seed * 7) % 256 for i in range(4096)) + b"\r\n--\r\n-"
    reps = size // len(block) + 1
    return (block * reps)[:size]


# -- multipart bodies ----------------------------------------------------------------------------
def form_body(
    fields: Sequence[tuple[str, str]] = (),
    files: Sequence[tuple[str, str, bytes]] = (),
    boundary: str = "----gatewaytestboundary7MA4YWxkTrZu0gW",
    file_type: str = "application/octet-stream",
) -> tuple[bytes, str]:
    """(body, content_type) as a browser sends it: fields first, then files."""
    out = []
    for name, value in fields:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, filename, content in files:
        out.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {file_type}\r\n\r\n'.encode()
            + content
            + b"\r\n"
        )
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


# -- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process this test suite started, by its PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_moto_server(*, serial: bool = False) -> tuple[subprocess.Popen, str]:
    """A moto server on a free loopback port; ``serial``: one request at a time
    (tests/serial_moto.py says why)."""
    port = free_port()
    program = [str(ROOT / "tests" / "serial_moto.py")] if serial else ["-m", "moto.server"]
    proc = subprocess.Popen(
        [sys.executable, *program, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/moto-api/", proc=proc)
    return proc, url


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- the rule: nothing left behind ----------------------------------------------------------------
def leftovers(svc) -> dict[str, list]:
    """Every object, pending upload (by full key, as answers report them) and record the stores
    hold (should be empty after a refusal)."""
    listing, full = svc.storage.listing, svc.store.full_key
    return {
        "objects": [full(o.key) for o in listing.objects()],
        "pending_uploads": [full(u.key) for u in listing.pending_uploads()],
        "records": record_ids(svc.records),
    }


def record_s3_calls(svc) -> list[str]:
    """The S3 operations the gateway calls from now on, by name: the client's, and the two it
    sends itself (gateway/storage/s3_requests.py)."""
    calls: list[str] = []
    svc.store.client.meta.events.register(
        "before-call.s3", lambda **kw: calls.append(kw["model"].name)
    )
    requests = svc.store.requests
    send = requests._send

    def recorded(operation: str, *args, **kwargs):
        calls.append(operation)
        return send(operation, *args, **kwargs)

    requests._send = recorded
    return calls


def assert_nothing_left(svc) -> None:
    assert leftovers(svc) == {"objects": [], "pending_uploads": [], "records": []}


def record_ids(records) -> list[str]:
    from gateway.media.records.dynamodb import DynamoRecordStore
    from gateway.media.records.sqlite import SqliteRecordStore

    if isinstance(records, SqliteRecordStore):
        rows = records._run(lambda conn: conn.execute("SELECT media_id FROM media").fetchall())
        return [row[0] for row in rows]
    if isinstance(records, DynamoRecordStore):
        pages = records.client.get_paginator("scan").paginate(TableName=records.table)
        return [
            item["pk"]["S"].removeprefix("media#")
            for page in pages
            for item in page["Items"]
            if item["pk"]["S"].startswith("media#")
        ]
    raise TypeError(records)


def assert_stored(svc, body: dict, content: bytes) -> None:
    """The other half of the rule: object and record both exist, same size and checksum."""
    import hashlib

    record = svc.records.get(body["mediaId"])
    assert record.size == len(content) == body["size"]
    assert record.sha256 == hashlib.sha256(content).hexdigest() == body["sha256"]
    assert read_object(svc.store, record.s3_key) == content


def read_object(store, key: str) -> bytes:
    from gateway.storage.local import LocalObjectStore

    if isinstance(store, LocalObjectStore):
        return store.path_of(key).read_bytes()
    return store.client.get_object(Bucket=store.bucket, Key=store.full_key(key))["Body"].read()


def env_for_aws() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def iter_chunks(data: bytes, size: int) -> Iterable[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
