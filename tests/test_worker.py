"""The job runner on the SQLite queue: delete after success, backoff, dead letters, heartbeat."""

from __future__ import annotations

import dataclasses
import threading
import time

from gateway.processing.worker import Worker, WorkerOptions
from gateway.queue.sqlite import SqliteQueue

FAST = WorkerOptions(concurrency=2, visibility=1.0, wait=0.1, backoff_base=0.05, backoff_max=0.2)


def queue_at(tmp_path, max_receives=3):
    queue = SqliteQueue(str(tmp_path / "q.db"), max_receives=max_receives)
    queue.create()
    return queue


def run_until(worker, condition, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        worker.run_once()
    worker.drain()
    assert condition()


def test_a_finished_job_is_deleted(tmp_path):
    queue = queue_at(tmp_path)
    seen = []
    worker = Worker(
        queue, lambda m: seen.append(m.body["n"]), on_last_failure=lambda m, e: None, options=FAST
    )
    for n in range(5):
        queue.send({"n": n})
    run_until(worker, lambda: len(seen) == 5)
    assert sorted(seen) == list(range(5))
    stats = queue.stats()
    assert (stats.visible, stats.in_flight, stats.dead) == (0, 0, 0)


def test_a_failing_job_is_retried_then_dead_lettered_with_its_last_failure_reported(tmp_path):
    queue = queue_at(tmp_path, max_receives=3)
    attempts, last = [], []

    def fail(message):
        attempts.append(message.receive_count)
        raise RuntimeError("poison")

    worker = Worker(
        queue, fail, on_last_failure=lambda m, e: last.append((m.body, str(e))), options=FAST
    )
    queue.send({"n": 1})
    run_until(worker, lambda: queue.stats().dead == 1)
    assert attempts == [1, 2, 3]
    assert last == [({"n": 1}, "poison")]


def test_a_job_that_fails_once_succeeds_on_redelivery(tmp_path):
    queue = queue_at(tmp_path)
    attempts = []

    def flaky(message):
        attempts.append(message.receive_count)
        if len(attempts) == 1:
            raise RuntimeError("transient")

    worker = Worker(queue, flaky, on_last_failure=lambda m, e: None, options=FAST)
    queue.send({"n": 1})
    run_until(worker, lambda: len(attempts) == 2 and queue.stats().in_flight == 0)
    assert attempts == [1, 2] and queue.stats().dead == 0


def test_the_heartbeat_keeps_a_long_job_from_a_second_delivery(tmp_path):
    queue = queue_at(tmp_path)
    runs = []
    # A 3 s lease renewed every 1.5 s: a heartbeat late by a loaded machine's scheduling (a 1 s
    # lease was lost under a load of 8) still renews it in time.
    options = dataclasses.replace(FAST, visibility=3.0)

    def slow(message):
        runs.append(message.receive_count)
        time.sleep(7.5)  # 2.5 leases

    worker = Worker(queue, slow, on_last_failure=lambda m, e: None, options=options)
    other = Worker(queue, slow, on_last_failure=lambda m, e: None, options=options)
    queue.send({"n": 1})
    worker.run_once()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        other.run_once()  # a second worker polls all along
    worker.drain()
    other.drain()
    assert runs == [1]
    assert queue.stats().in_flight == 0 and queue.stats().visible == 0


def test_backoff_doubles_up_to_its_cap():
    worker = Worker(
        None,
        lambda m: None,
        on_last_failure=lambda m, e: None,  # type: ignore[arg-type]
        options=WorkerOptions(backoff_base=2, backoff_max=30),
    )
    assert [worker.backoff(n) for n in (1, 2, 3, 4, 5, 6)] == [2, 4, 8, 16, 30, 30]


def test_stop_lets_the_running_job_finish(tmp_path):
    queue = queue_at(tmp_path)
    finished = []

    def job(message):
        time.sleep(0.5)
        finished.append(message.body["n"])

    worker = Worker(queue, job, on_last_failure=lambda m, e: None, options=FAST)
    queue.send({"n": 1})
    runner = threading.Thread(target=worker.run)
    runner.start()
    deadline = time.monotonic() + 10
    while queue.stats().in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop.set()
    runner.join(10)
    assert finished == [1] and queue.stats().in_flight == 0
