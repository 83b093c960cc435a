"""tus across gateway nodes: two gunicorn nodes on one S3 bucket and one DynamoDB table (moto),
behind one nginx that balances between them. An upload begun on one node goes on on the other;
two PATCHes to one upload never both write (the second is refused with 423 while the first
holds its lease); a node killed mid-PATCH leaves a lease that runs out, and the upload then
resumes on the other node from its last committed offset, with exact bytes and nothing stray."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import threading
from datetime import timedelta

import pytest
import requests

from gateway.media.lifecycle import Status

from e2e_harness import (
    BIN,
    ROOT,
    _clean_env,
    _wait_ok,
    gateway_stack,
    poll,
    start_nginx,
)
from support import MiB, free_port, jpeg_bytes, unique, wait_for_http

pytestmark = pytest.mark.timeout(300)
LEASE_SECONDS = 4


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, moto_url):
    """Node A (the stack's own gunicorn), node B (a second gunicorn with the same settings)
    and nginx balancing between them (``nodes.url``); node A's and B's own URLs."""
    tmp = tmp_path_factory.mktemp("tus-nodes")
    with gateway_stack(
        tmp,
        mode="s3",
        moto_url=moto_url,
        GATEWAY_RECORDS_URL=f"dynamodb://{unique('tus-nodes')}",
        GATEWAY_DYNAMODB_ENDPOINT_URL=moto_url,
        GATEWAY_WORKERS="1",
        GATEWAY_TUS_LOCK_SECONDS=str(LEASE_SECONDS),
    ) as stack:
        port_b = free_port()
        with open(tmp / "gunicorn-b.log", "ab") as log:
            stack.procs["gunicorn-b"] = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT,
                env={**_clean_env(), **stack.env, "GATEWAY_BIND": f"127.0.0.1:{port_b}"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        stack.node_a = stack.gateway_url
        stack.node_b = f"http://127.0.0.1:{port_b}"
        wait_for_http(stack.node_b + "/healthz", proc=stack.procs["gunicorn-b"])
        balanced_port = free_port()
        stack.procs["nginx-balanced"] = start_nginx(
            tmp / "nginx-balanced",
            port=balanced_port,
            upstream=f"{stack.gateway_url.split('//')[1]}; server 127.0.0.1:{port_b}",
            media_root=stack.media_root,
        )
        stack.balanced_url = f"http://127.0.0.1:{balanced_port}"
        _wait_ok(stack.balanced_url + "/healthz", stack.procs["nginx-balanced"])
        yield stack
        stack.reset()


@pytest.fixture
def tus(nodes):
    nodes.reset()
    yield nodes
    print(nodes.logs())


def metadata(**fields: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in fields.items())


def create(stack, node: str, length: int) -> str:
    answer = requests.post(
        node + "/api/tus/",
        headers={
            **stack.auth,
            "Tus-Resumable": "1.0.0",
            "Upload-Length": str(length),
            "Upload-Metadata": metadata(projectId="p1", filename="photo.jpg"),
        },
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    return answer.headers["Location"].rsplit("/", 1)[1]


def patch(stack, node: str, upload_id: str, offset: int, data: bytes) -> requests.Response:
    return requests.patch(
        f"{node}/api/tus/{upload_id}",
        headers={
            **stack.auth,
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
        },
        data=data,
        timeout=60,
    )


def head(stack, node: str, upload_id: str) -> requests.Response:
    return requests.head(
        f"{node}/api/tus/{upload_id}",
        headers={**stack.auth, "Tus-Resumable": "1.0.0"},
        timeout=30,
    )


def open_patch(stack, node: str, upload_id: str, offset: int, length: int) -> socket.socket:
    """A PATCH that promises ``length`` bytes and sends none yet (the caller sends them)."""
    host, port = node.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(
        (
            f"PATCH /api/tus/{upload_id} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {stack.token}\r\nTus-Resumable: 1.0.0\r\n"
            f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
        ).encode()
    )
    return sock


def status_line(sock: socket.socket) -> int:
    reply = b""
    while b"\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return int(reply.split(b" ", 2)[1])


def lease_held(stack, upload_id: str) -> bool:
    return bool(stack.svc.records.get(upload_id).upload.lock_token)


def stored_bytes(stack, media_id: str) -> bytes:
    record = stack.svc.records.get(media_id)
    assert record.status is Status.STORED, record
    store = stack.svc.store
    key = store.full_key(record.s3_key)
    return store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()


def assert_nothing_stray(stack, media_id: str) -> None:
    """After a sweep: the upload's object alone, no multipart upload, no chunk."""
    report = stack.svc.sweeper.sweep(older_than=timedelta(0))
    assert report.failed == []
    store = stack.svc.store
    assert list(store.pending_uploads()) == []
    keys = [obj.key for obj in store.objects()]
    assert keys == [stack.svc.records.get(media_id).s3_key]


def photo(size: int, seed: int = 1) -> bytes:
    return jpeg_bytes(size, seed=seed)


# -- an upload moves between nodes ------------------------------------------------------------
def test_an_upload_begun_on_one_node_is_finished_on_the_other(tus):
    data = photo(9 * MiB + 5)
    upload_id = create(tus, tus.node_a, len(data))
    assert patch(tus, tus.node_a, upload_id, 0, data[: 7 * MiB]).status_code == 204

    on_b = head(tus, tus.node_b, upload_id)
    assert on_b.status_code == 200
    assert on_b.headers["Upload-Offset"] == str(7 * MiB)
    assert on_b.headers["Upload-Length"] == str(len(data))

    done = patch(tus, tus.node_b, upload_id, 7 * MiB, data[7 * MiB :])
    assert done.status_code == 204, done.text
    assert done.headers["Upload-Offset"] == str(len(data))
    assert stored_bytes(tus, upload_id) == data
    assert_nothing_stray(tus, upload_id)


def test_tuspy_through_nginx_balancing_between_the_nodes(tus, tmp_path):
    from tusclient import client

    data = photo(10 * MiB + 77, seed=4)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    uploader = client.TusClient(tus.balanced_url + "/api/tus/", headers=tus.auth).uploader(
        file_path=str(path),
        chunk_size=MiB,
        upload_checksum=True,
        metadata={"projectId": "p1", "filename": "photo.jpg"},
    )
    uploader.upload()
    media_id = uploader.url.rsplit("/", 1)[1]
    assert stored_bytes(tus, media_id) == data

    def patches_on(log: str) -> int:
        text = (tus.tmp / log).read_text(errors="replace")
        return sum(1 for line in text.splitlines() if '"PATCH"' in line and media_id in line)

    a, b = patches_on("gunicorn.log"), patches_on("gunicorn-b.log")
    assert a + b == 11 and a > 0 and b > 0, (a, b)


# -- one writer at a time ---------------------------------------------------------------------
def test_a_second_patch_is_refused_while_another_node_holds_the_upload(tus):
    data = photo(3 * MiB, seed=2)
    upload_id = create(tus, tus.node_a, len(data))
    with open_patch(tus, tus.node_a, upload_id, 0, len(data)) as slow:
        slow.sendall(data[:MiB])
        assert poll(lambda: lease_held(tus, upload_id), timeout=30)

        refused = patch(tus, tus.node_b, upload_id, 0, data)
        assert refused.status_code == 423
        assert refused.json()["error"]["code"] == "upload_locked"
        assert head(tus, tus.node_b, upload_id).headers["Upload-Offset"] == "0"

        slow.sendall(data[MiB:])
        assert status_line(slow) == 204
    assert stored_bytes(tus, upload_id) == data
    assert_nothing_stray(tus, upload_id)


def test_a_client_slower_than_the_lease_keeps_it_through_gunicorn(tus):
    """The review's slow client: gunicorn's reader waits for a whole read, so a lease renewed
    between reads ran out under any client slower than read size / lease. Renewed on a timer, it
    holds: after twice the lease with no byte, the other node is still refused, and the
    upload ends with exactly the client's bytes."""
    data = photo(2 * MiB, seed=8)
    upload_id = create(tus, tus.node_a, len(data))
    with open_patch(tus, tus.node_a, upload_id, 0, len(data)) as slow:
        slow.sendall(data[:100_000])
        assert poll(lambda: lease_held(tus, upload_id), timeout=30)
        first_until = tus.svc.records.get(upload_id).upload.lock_until
        assert poll(
            lambda: tus.svc.records.get(upload_id).upload.lock_until > first_until + LEASE_SECONDS,
            timeout=LEASE_SECONDS * 4,
            interval=0.5,
        )  # renewed past the first lease's end while no byte came
        refused = patch(tus, tus.node_b, upload_id, 0, data)
        assert (refused.status_code, refused.json()["error"]["code"]) == (423, "upload_locked")
        slow.sendall(data[100_000:])
        assert status_line(slow) == 204
    assert stored_bytes(tus, upload_id) == data
    assert_nothing_stray(tus, upload_id)


def test_two_racing_patches_store_exactly_one_of_them(tus):
    bodies = {tus.node_a: photo(4 * MiB, seed=5), tus.node_b: photo(4 * MiB, seed=6)}
    upload_id = create(tus, tus.node_a, 4 * MiB)
    answers: dict[str, requests.Response] = {}
    start = threading.Barrier(2)

    def send(node: str) -> None:
        start.wait()
        answers[node] = patch(tus, node, upload_id, 0, bodies[node])

    threads = [threading.Thread(target=send, args=(node,)) for node in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    codes = sorted(answer.status_code for answer in answers.values())
    assert codes in ([204, 409], [204, 423]), codes
    winner = next(node for node, answer in answers.items() if answer.status_code == 204)
    assert stored_bytes(tus, upload_id) == bodies[winner]
    assert_nothing_stray(tus, upload_id)


# -- a node killed mid-PATCH ------------------------------------------------------------------
def worker_pids(master: subprocess.Popen) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-P", str(master.pid)], capture_output=True, text=True, check=False
    ).stdout
    return [int(pid) for pid in out.split()]


def parts_of(stack, upload_id: str) -> int:
    record = stack.svc.records.get(upload_id)
    s3_id = record.upload.s3_upload_id
    if not s3_id:
        return 0
    store = stack.svc.store
    key = store.full_key(stack.svc.tus.object_key_of(record))
    listed = store.client.list_parts(Bucket=store.bucket, Key=key, UploadId=s3_id)
    return len(listed.get("Parts", []))


def test_a_node_killed_mid_patch_the_upload_resumes_on_the_other_after_the_lease(tus):
    data = photo(20 * MiB + 11, seed=7)
    upload_id = create(tus, tus.node_a, len(data))
    part = tus.svc.records.get(upload_id).upload.part_size
    first = part + MiB  # one part in S3, 1 MiB held as the pending chunk
    assert patch(tus, tus.node_a, upload_id, 0, data[:first]).status_code == 204
    assert parts_of(tus, upload_id) == 1

    workers = worker_pids(tus.procs["gunicorn"])
    assert len(workers) == 1
    sock = open_patch(tus, tus.node_a, upload_id, first, len(data) - first)
    try:
        sock.sendall(data[first : first + part])  # enough for a second part
        assert poll(lambda: parts_of(tus, upload_id) == 2, timeout=60)
        os.kill(workers[0], signal.SIGKILL)
    finally:
        sock.close()

    # The dead node's lease still holds: the other node refuses, the offset is the committed one.
    assert head(tus, tus.node_b, upload_id).headers["Upload-Offset"] == str(first)
    locked = patch(tus, tus.node_b, upload_id, first, data[first:])
    assert locked.status_code == 423
    assert tus.svc.records.get(upload_id).upload.offset == first

    def resumed() -> bool:
        return patch(tus, tus.node_b, upload_id, first, b"").status_code == 204

    assert poll(resumed, timeout=LEASE_SECONDS * 5, interval=0.5)
    done = patch(tus, tus.node_b, upload_id, first, data[first:])
    assert done.status_code == 204, done.text
    assert stored_bytes(tus, upload_id) == data
    assert_nothing_stray(tus, upload_id)
    # node A's master started a new worker, which serves again
    assert poll(lambda: len(worker_pids(tus.procs["gunicorn"])) == 1, timeout=30)
    assert head(tus, tus.node_a, upload_id).status_code == 200
