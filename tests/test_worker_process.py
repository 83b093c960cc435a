"""Workers as real processes (`flask --app wsgi worker`) beside real gunicorn and nginx: a worker
killed with SIGKILL in the middle of a job loses nothing, and the job is done once, by the next."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import media_samples as samples
import pytest
from webhook_receiver import SECRET, Receiver

from gateway.media.lifecycle import Status

from e2e_harness import gateway_stack, poll

pytestmark = pytest.mark.timeout(300)


class SlowProxy:
    """A TCP proxy in front of clamd that holds every answer back ``delay`` seconds, so that a
    job is reliably in the middle of its scan when the test kills its worker."""

    def __init__(self, upstream: str, delay: float) -> None:
        host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.delay = delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as upstream:

            def forward() -> None:
                try:
                    while data := client.recv(65536):
                        upstream.sendall(data)
                except OSError:
                    pass

            threading.Thread(target=forward, daemon=True).start()
            try:
                answer = upstream.recv(65536)
                time.sleep(self.delay)
                client.sendall(answer)
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        self.server.close()


@pytest.fixture
def slow_clamd(clamd_url):
    proxy = SlowProxy(clamd_url, delay=4)
    yield proxy
    proxy.close()


def test_a_worker_killed_mid_job_loses_nothing_and_the_job_is_done_once(tmp_path, slow_clamd):
    with (
        Receiver() as receiver,
        gateway_stack(
            tmp_path,
            mode="embedded",
            GATEWAY_CLAMD_URL=slow_clamd.url,
            GATEWAY_JOB_LEASE_SECONDS="3",
            GATEWAY_WORKER_CONCURRENCY="1",
            GATEWAY_WEBHOOK_URL=receiver.url,
            GATEWAY_WEBHOOK_SECRET=SECRET,
        ) as stack,
    ):
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(samples.photo(1200, 900))
        first = stack.start_worker("first")
        result = stack.curl("-F", "projectId=p1", "-F", f"file=@{photo};type=image/jpeg")
        assert result.status == 201, result.body
        media_id = result.json()["mediaId"]
        svc = stack.svc

        def in_the_scan() -> bool:
            record = svc.records.get(media_id)
            return record.status is Status.PROCESSING and record.stage == "scan"

        assert poll(in_the_scan, timeout=60), svc.records.get(media_id)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        time.sleep(4)  # the answer the dead worker waited for is lost with it
        assert svc.records.get(media_id).status is Status.PROCESSING  # nothing moved on
        stack.start_worker("second")
        assert poll(lambda: svc.records.get(media_id).status is Status.READY, timeout=120), (
            svc.records.get(media_id)
        )
        assert poll(lambda: len(receiver.unique()) == 2, timeout=60), receiver.received
        record = svc.records.get(media_id)
        assert len(record.variants) == 2 and not record.quarantined
        jobs = [
            line
            for line in stack.worker_log("second")
            if line.get("event") == "job" and line.get("type") == "media.process"
        ]
        assert [(j["receiveCount"], j["outcome"]) for j in jobs] == [(2, "done")]
        ready = [d for d in receiver.received if d["id"] == f"{media_id}.media.ready"]
        assert len(ready) == 1  # announced once: one compare-and-set moved it to ready
        stats = svc.queue.stats()
        assert (stats.visible, stats.in_flight, stats.dead) == (0, 0, 0)


def test_two_worker_processes_share_the_queue_and_process_each_job_once(tmp_path):
    with gateway_stack(tmp_path, mode="embedded", GATEWAY_WORKER_CONCURRENCY="1") as stack:
        ids = []
        for n in range(6):
            photo = tmp_path / f"p{n}.png"
            photo.write_bytes(samples.png(200 + n, 100))
            result = stack.curl("-F", "projectId=p1", "-F", f"file=@{photo};type=image/png")
            assert result.status == 201, result.body
            ids.append(result.json()["mediaId"])
        stack.start_worker("a")
        stack.start_worker("b")
        svc = stack.svc
        assert poll(
            lambda: all(svc.records.get(i).status is Status.READY for i in ids), timeout=120
        )
        jobs = [
            line
            for name in ("a", "b")
            for line in stack.worker_log(name)
            if line.get("event") == "job" and line.get("type") == "media.process"
        ]
        assert sorted(j["outcome"] for j in jobs) == ["done"] * 6
        assert all(svc.records.get(i).version == 2 for i in ids)  # processing, then ready


def test_a_held_webhook_receiver_does_not_hold_processing(tmp_path):
    """`flask worker` runs deliveries in their own lane: with a receiver that answers nothing
    until the test says so, every upload still reaches ready; released, each event arrives once,
    never more than GATEWAY_WEBHOOK_CONCURRENCY at a time."""
    receiver = Receiver(held=True)
    with (
        gateway_stack(
            tmp_path,
            mode="embedded",
            GATEWAY_WORKER_CONCURRENCY="2",
            GATEWAY_WEBHOOK_URL=receiver.url,
            GATEWAY_WEBHOOK_SECRET=SECRET,
            GATEWAY_WEBHOOK_CONCURRENCY="2",
            GATEWAY_WEBHOOK_TIMEOUT="600",
        ) as stack,
        receiver,
    ):
        ids = []
        for n in range(4):
            photo = tmp_path / f"p{n}.png"
            photo.write_bytes(samples.png(200 + n, 100))
            result = stack.curl("-F", "projectId=p1", "-F", f"file=@{photo};type=image/png")
            assert result.status == 201, result.body
            ids.append(result.json()["mediaId"])
        stack.start_worker()
        svc = stack.svc
        assert poll(
            lambda: all(svc.records.get(i).status is Status.READY for i in ids), timeout=120
        )
        assert poll(lambda: receiver.in_flight == 2, timeout=30)
        assert receiver.received == [] and len(receiver.arrivals) == 2
        held = json.loads(stack.flask("queue", "stats", "--lane", "webhooks"))
        assert (held["inFlight"], held["visible"], held["dead"]) == (2, 6, 0)
        receiver.release()
        assert poll(lambda: len(receiver.received) == 8, timeout=60), receiver.received
        assert poll(
            lambda: (
                json.loads(stack.flask("queue", "stats", "--lane", "webhooks"))
                == {"visible": 0, "inFlight": 0, "dead": 0, "oldestAgeSeconds": None}
            ),
            timeout=30,
        )
    expected = {f"{i}.{event}" for i in ids for event in ("media.stored", "media.ready")}
    assert sorted(receiver.arrivals) == sorted(expected)
    assert receiver.max_in_flight == 2
    jobs = [line for line in stack.worker_log() if line.get("event") == "job"]
    assert sorted((j["type"], j["receiveCount"], j["outcome"]) for j in jobs) == sorted(
        [("media.process", 1, "done")] * 4 + [("webhook", 1, "done")] * 8
    )
