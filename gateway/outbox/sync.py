"""Sync: send what is due, resume what was cut, retry what failed, as often as it takes.

An item is worked on by one process at a time (``Outbox.claim``); its files go up first (one
form POST for the small ones, tus for each big one), then its steps, each marked in the outbox
the moment the gateway or the target confirms it. A failure schedules the next attempt:
``Retry-After`` when the answer had one, otherwise exponential backoff with equal jitter (half
the ceiling plus a random half: never hammering, never synchronised with other clients). A 401
stops the whole sync (no item can go on with that token); a permanent refusal fails the item.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import requests

from .errors import OutboxError, Permanent, TokenRefused, Transient
from .report import Reporter
from .steps import run_step
from .store import FileEntry, Item, Outbox, State, Transport
from .transport import GatewayClient


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 300.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds before attempt ``attempt + 1`` after ``attempt`` failures (1, 2, ...)."""
        ceiling = min(self.cap, self.base * 2 ** max(0, attempt - 1))
        return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


@dataclass
class SyncResult:
    """What one ``run`` did; ``unfinished`` is what is still queued when it returned."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    unfinished: int = 0


class Syncer:
    def __init__(
        self,
        outbox: Outbox,
        gateway: GatewayClient,
        reporter: Reporter,
        *,
        concurrency: int = 2,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.outbox = outbox
        self.gateway = gateway
        self.reporter = reporter
        self.concurrency = concurrency
        self.backoff = backoff
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self.env = os.environ if env is None else env
        # Steps go to other services: never with the gateway's token.
        self.step_session = requests.Session()

    def run(self, *, watch: bool = False, max_wait: float = 300.0, poll: float = 2.0) -> SyncResult:
        """Until nothing is left (or, without ``watch``, until the next attempt would be more
        than ``max_wait`` seconds after the start)."""
        result = SyncResult()
        started = self.clock()
        running: dict[Future[State], str] = {}
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="outbox") as pool:
            try:
                while True:
                    for future in [f for f in running if f.done()]:
                        item_id = running.pop(future)
                        state = future.result()  # TokenRefused ends the run here
                        if state == State.DONE:
                            result.done.append(item_id)
                        elif state == State.FAILED:
                            result.failed.append(item_id)
                    busy = set(running.values())
                    room = self.concurrency - len(running)
                    due = [i for i in self.outbox.due(self.clock()) if i.id not in busy][:room]
                    for item in due:
                        running[pool.submit(self.sync_item, item)] = item.id
                    if running:
                        wait(list(running), timeout=poll, return_when=FIRST_COMPLETED)
                        continue
                    next_at = self.outbox.next_attempt_at()
                    if next_at is None:
                        if not watch:
                            break
                        self.sleep(poll)
                        continue
                    if watch and self.outbox.has_unreachable() and self.gateway.healthy():
                        self.outbox.wake_unreachable()
                        continue
                    # Due but held by another live process: look again after a poll.
                    pause = max(0.0, next_at - self.clock()) or poll
                    if not watch and self.clock() + pause - started > max_wait:
                        break
                    self.reporter.waiting(pause)
                    self.sleep(min(pause, poll) if watch else pause)
            except BaseException:
                for future in running:
                    future.cancel()
                raise
        result.unfinished = sum(
            c.items for s, c in self.outbox.stats().by_state.items() if s in (
                State.QUEUED, State.UPLOADING, State.STORED)
        )  # fmt: skip
        return result

    def sync_item(self, item: Item) -> State:
        """One attempt at ``item``; the state it is left in."""
        if not self.outbox.claim(item):
            return item.state
        try:
            self.reporter.item_started(item)
            if item.state == State.UPLOADING:
                self._upload(item)
                self.outbox.mark_stored(item)
                self.reporter.item_stored(item)
            if item.state == State.STORED:
                self._run_steps(item)
                self.outbox.mark_done(item)
                self.reporter.item_done(item)
        except Transient as exc:
            after = exc.retry_after
            delay = after if after is not None else self.backoff.delay(item.attempts + 1, self.rng)
            self.outbox.schedule_retry(
                item, delay=delay, error=str(exc), unreachable=exc.unreachable
            )
            self.reporter.retry(item, delay, str(exc))
        except Permanent as exc:
            self.outbox.mark_failed(item, str(exc))
            self.reporter.failed(item, str(exc))
        except (TokenRefused, OutboxError):
            raise
        except Exception as exc:  # noqa: BLE001 (an unexpected answer: retried, not fatal)
            delay = self.backoff.delay(item.attempts + 1, self.rng)
            error = f"{type(exc).__name__}: {exc}"
            self.outbox.schedule_retry(item, delay=delay, error=error, unreachable=False)
            self.reporter.retry(item, delay, error)
        finally:
            with contextlib.suppress(Exception):
                self.outbox.release(item)
        return item.state

    def _upload(self, item: Item) -> None:
        form = [f for f in item.files if f.transport == Transport.FORM]
        if any(f.record is None for f in form):
            # Always the same files in one POST: the key's fingerprint covers all of them.
            records = self.gateway.upload_form(item, form, self._progress(item))
            self.outbox.file_stored(item, list(zip(form, records, strict=True)))
        for entry in item.files:
            if entry.transport == Transport.TUS and entry.record is None:
                record = self.gateway.upload_tus(
                    item,
                    entry,
                    on_url=functools.partial(self.outbox.set_tus_url, item, entry),
                    on_progress=self._progress(item, persist=True),
                )
                self.outbox.file_stored(item, [(entry, record)])
            self.reporter.progress(item, entry, entry.size)

    def _progress(self, item: Item, *, persist: bool = False) -> Callable[[FileEntry, int], None]:
        def report(entry: FileEntry, sent: int) -> None:
            if persist and sent != entry.sent:
                self.outbox.set_sent(item, entry, sent)
            self.reporter.progress(item, entry, sent)

        return report

    def _run_steps(self, item: Item) -> None:
        records: list[dict[str, Any]] = [f.record or {} for f in item.files]
        for step in item.steps:
            if step.done:
                continue
            status = run_step(
                self.step_session,
                step.spec,
                records,
                idempotency_key=f"{item.idempotency_key}.step{step.position}",
                env=self.env,
            )
            self.outbox.step_done(item, step, status)
