"""The job runner: receive from the queue, run the handler, delete, or retry with backoff.

At least once: a message is deleted only after its handler returned. A failing handler makes
the message visible again after an exponential backoff; on its last allowed delivery
(``queue.max_receives``) ``on_last_failure`` runs (the pipeline marks the media failed with
the reason) and the message goes on to the dead-letter queue. While a handler runs, a heartbeat
keeps extending the lease, so a long job is not delivered twice; a worker killed mid-job stops
the heartbeat, the lease runs out and another worker picks the job up. SIGTERM (``stop``) lets
running jobs finish and receives nothing more.

A worker process runs one ``Worker`` per lane (``run_lanes``): processing jobs on the processing
queue, webhook deliveries on their own queue, each with its own slots, so a lane that waits (a
slow webhook receiver) never holds a slot the other needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from gateway import metrics
from gateway.queue import Message, Queue

log = logging.getLogger("gateway.processing.worker")


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 2
    visibility: float = 60.0  # the lease; the heartbeat renews it every half
    wait: float = 10.0  # long poll
    backoff_base: float = 2.0  # seconds before the 2nd delivery; doubles each time
    backoff_max: float = 300.0


class Worker:
    def __init__(
        self,
        queue: Queue,
        handle: Callable[[Message], None],
        *,
        on_last_failure: Callable[[Message, BaseException], None],
        options: WorkerOptions = WorkerOptions(),
        stop: threading.Event | None = None,
        name: str = "job",
    ) -> None:
        self.queue = queue
        self.handle = handle
        self.on_last_failure = on_last_failure
        self.options = options
        self.stop = stop if stop is not None else threading.Event()
        self._pool = ThreadPoolExecutor(options.concurrency, thread_name_prefix=name)
        self._running: set[Future[None]] = set()
        self._lock = threading.Lock()

    def backoff(self, receive_count: int) -> float:
        delay = self.options.backoff_base * 2.0 ** (receive_count - 1)
        return float(min(self.options.backoff_max, delay))

    def run(self) -> None:
        """Until ``stop`` is set: receive as many jobs as there are free slots, run them."""
        try:
            while not self.stop.is_set():
                self.run_once()
        finally:
            self.drain()

    def run_once(self) -> int:
        with self._lock:
            free = self.options.concurrency - len(self._running)
        if free <= 0:
            time.sleep(0.05)
            return 0
        messages = self.queue.receive(
            max_messages=free, wait=self.options.wait, visibility=self.options.visibility
        )
        for message in messages:
            future = self._pool.submit(self._run_job, message)
            with self._lock:
                self._running.add(future)
            future.add_done_callback(self._done)
        return len(messages)

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._running.discard(future)

    def drain(self) -> None:
        """Wait for the jobs that are running (a graceful stop)."""
        self._pool.shutdown(wait=True)

    def _run_job(self, message: Message) -> None:
        started = time.monotonic()
        beating = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(message, beating), daemon=True)
        heart.start()
        failure: Exception | None = None
        try:
            self.handle(message)
        except Exception as exc:  # noqa: BLE001 - every failure is retried or dead-lettered
            failure = exc
        finally:
            beating.set()  # the lease is ours alone again before it changes
            heart.join()
        if failure is None:
            outcome = "done"
            self._quietly(self.queue.delete, message)
        else:
            outcome = self._failed(message, failure)
        seconds = time.monotonic() - started
        kind = str(message.body.get("type", "s3:event" if "Records" in message.body else "?"))
        metrics.observe_job(kind, outcome, seconds)
        log.info(
            {
                "event": "job",
                "messageId": message.id,
                "type": kind,
                "receiveCount": message.receive_count,
                "outcome": outcome,
                "durationMs": round(seconds * 1000, 1),
            }
        )

    def _failed(self, message: Message, exc: BaseException) -> str:
        if message.receive_count >= self.queue.max_receives:
            log.error("job %s failed on its last delivery: %s", message.id, exc, exc_info=exc)
            self._quietly(self.on_last_failure, message, exc)
            self._quietly(self.queue.retry_later, message, delay=0)  # on to the dead letters
            return "dead"
        log.warning("job %s failed (delivery %d): %s", message.id, message.receive_count, exc)
        self._quietly(self.queue.retry_later, message, delay=self.backoff(message.receive_count))
        return "retry"

    def _heartbeat(self, message: Message, done: threading.Event) -> None:
        while not done.wait(self.options.visibility / 2):
            self._quietly(self.queue.retry_later, message, delay=self.options.visibility)

    @staticmethod
    def _quietly(fn: Callable[..., object], *args: object, **kwargs: object) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            log.exception("queue call %s failed", getattr(fn, "__name__", fn))


def run_lanes(lanes: Sequence[Worker]) -> None:
    """Run each lane until its ``stop`` is set (share one event to stop them together); returns
    when every lane has drained. The first runs in the calling thread, where signals arrive."""
    others = [
        threading.Thread(target=lane.run, name=f"lane-{n}") for n, lane in enumerate(lanes[1:], 1)
    ]
    for thread in others:
        thread.start()
    try:
        lanes[0].run()
    finally:
        for lane in lanes:
            lane.stop.set()  # one lane ending (an error included) ends them all
        for thread in others:
            thread.join()
