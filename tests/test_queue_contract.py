"""One contract for both queues: the SQLite lease queue (a file) and SQS (a moto server).

At-least-once delivery with leases: a received message is invisible until its lease runs out or
it is deleted; an unfinished delivery comes back with its receive count raised; after
max_receives deliveries it goes to the dead-letter queue, from which redrive brings it back.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest

from gateway.queue.sqlite import SqliteQueue
from gateway.queue.sqs import SqsQueue, make_sqs_client

from conftest import make_settings
from support import unique

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sqs_client(moto_url, tmp_path_factory):
    settings = make_settings(
        tmp_path_factory.mktemp("sqs"), backend="s3", moto_url=moto_url, sqs_endpoint_url=moto_url
    )
    return make_sqs_client(settings)


@pytest.fixture(params=["sqlite", "sqs"])
def queue(request, tmp_path):
    if request.param == "sqlite":
        q = SqliteQueue(str(tmp_path / "queue.db"), max_receives=3)
    else:
        q = SqsQueue(request.getfixturevalue("sqs_client"), name=unique("jobs"), max_receives=3)
    q.create()
    return q


def drain(queue, visibility=30):
    return queue.receive(max_messages=10, wait=0, visibility=visibility)


def test_send_receive_delete(queue):
    queue.send({"type": "a", "n": 1})
    queue.send({"type": "b", "n": 2})
    got = drain(queue)
    assert sorted(m.body["n"] for m in got) == [1, 2]
    assert all(m.receive_count == 1 and m.receipt and m.sent_at > 0 for m in got)
    assert drain(queue) == []  # leased: invisible
    for m in got:
        queue.delete(m)
    stats = queue.stats()
    assert (stats.visible, stats.in_flight, stats.dead) == (0, 0, 0)


def test_an_unfinished_delivery_comes_back_counted(queue):
    queue.send({"n": 1})
    [first] = drain(queue, visibility=1)
    assert queue.stats().in_flight == 1
    time.sleep(1.5)
    [again] = drain(queue)
    assert (again.id, again.body, again.receive_count) == (first.id, {"n": 1}, 2)
    queue.delete(again)
    assert drain(queue) == []


def test_retry_later_makes_it_visible_again_after_the_delay(queue):
    queue.send({"n": 1})
    [m] = drain(queue, visibility=60)
    queue.retry_later(m, delay=0)
    [back] = drain(queue)
    assert back.receive_count == 2
    queue.retry_later(back, delay=60)
    assert drain(queue) == []


def test_after_max_receives_it_is_dead_and_redrive_brings_it_back(queue):
    queue.send({"poison": True})
    for count in (1, 2, 3):
        [m] = drain(queue, visibility=1)
        assert m.receive_count == count
        queue.retry_later(m, delay=0)
    assert drain(queue) == []  # the 4th receive moves it to the dead letters
    assert queue.stats().dead == 1
    assert queue.redrive(limit=10) == 1
    assert queue.stats().dead == 0
    [back] = drain(queue)
    assert back.body == {"poison": True}
    queue.delete(back)


def test_long_polling_waits_for_a_message(queue):
    started = time.monotonic()
    assert queue.receive(max_messages=1, wait=1, visibility=30) == []
    assert time.monotonic() - started >= 0.9  # it waited (not a performance bound)


def test_a_stale_receipt_cannot_delete_a_newer_delivery(tmp_path):
    """SQLite: a worker whose lease ran out must not delete the message from under the worker
    that received it next (SQS gives the same guarantee through receipt handles)."""
    queue = SqliteQueue(str(tmp_path / "q.db"), max_receives=5)
    queue.send({"n": 1})
    [old] = drain(queue, visibility=0.2)
    time.sleep(0.3)
    [new] = drain(queue)
    queue.delete(old)
    assert queue.stats().in_flight == 1
    queue.delete(new)
    assert queue.stats().in_flight == 0


def _take_all(path: str, start, out) -> None:  # a separate process, as a second worker is
    queue = SqliteQueue(path, max_receives=5)
    queue.stats()  # connected before the start line
    start.wait(30)
    taken = []
    while True:
        batch = queue.receive(max_messages=2, wait=0.5, visibility=60)
        if not batch:
            break
        taken += [m.body["n"] for m in batch]
        for m in batch:
            queue.delete(m)
        time.sleep(0.001)  # a job's work between receives (else one loop can starve the other)
    out.put(taken)


def test_two_processes_share_the_sqlite_queue_without_doubles(tmp_path):
    path = str(tmp_path / "shared.db")
    queue = SqliteQueue(path, max_receives=5)
    queue.create()
    for n in range(2000):
        queue.send({"n": n})
    ctx = multiprocessing.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(2)
    workers = [ctx.Process(target=_take_all, args=(path, start, out)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(30)
    assert sorted(results[0] + results[1]) == list(range(2000))
    assert all(results)  # both took part
