"""Sync: send what is due, resume what was cut, retry what failed, as often as it takes.

An item is worked on by one process at a time (``Outbox.claim``, a lease renewed while it
works); its steps before the upload run first, then its files go up (one form POST for the
small ones, tus for each big one, their fields filled in with those steps' captures), then its
steps after the upload, each marked in the outbox the moment the gateway or the target confirms
it. A failure
schedules the next attempt: ``Retry-After`` when the answer had one, otherwise exponential backoff
with equal jitter (half the ceiling plus a random half: never hammering, never synchronised with
other clients). A 401 stops the whole sync (no item can go on with that token); a permanent
refusal fails the item.

Without ``watch``, an unreachable gateway ends the run at once (nothing else is started; the
items wait) unless ``wait_offline``; ``stop()`` (Ctrl-C) ends it at the next chunk boundary, with
every item's progress saved. An item whose form POST first went more than the gateway's
Idempotency-Key lifetime ago is looked up by its records before it is sent again (the gateway
would no longer recognise the key).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import requests

from outbox.chain import Context, render
from outbox.errors import Interrupted, OutboxError, Permanent, TokenRefused, Transient
from outbox.report import Reporter
from outbox.steps import StepRefused, run_step
from outbox.store import FileEntry, Item, Outbox, State, StepEntry, Transport
from outbox.transport import GatewayClient, verify_record

KEY_TTL = 24 * 3600.0  # the gateway's GATEWAY_IDEMPOTENCY_TTL
# Look records up this long before the key's lifetime ends, and this far back before the first
# request (the device's clock and the gateway's may disagree).
CLOCK_SLACK = 3600.0


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
    offline: bool = False  # it ended because the gateway could not be reached
    interrupted: bool = False  # it ended because ``stop()`` was called


class Syncer:
    def __init__(
        self,
        outbox: Outbox,
        gateway: GatewayClient,
        reporter: Reporter,
        *,
        concurrency: int = 2,
        backoff: Backoff = Backoff(),
        key_ttl: float = KEY_TTL,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
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
        self.key_ttl = key_ttl
        self.clock = clock
        self._stop = threading.Event()
        # A pause ends early when ``stop()`` is called (a Ctrl-C during a long backoff).
        self.sleep = sleep or self._stop.wait
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self.env = os.environ if env is None else env
        # Steps go to other services: never with the gateway's token.
        self.step_session = requests.Session()
        self._offline = threading.Event()

    def stop(self) -> None:
        """End the run at the next chunk boundary (safe from a signal handler)."""
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(
        self,
        *,
        watch: bool = False,
        max_wait: float = 300.0,
        wait_offline: bool = False,
        poll: float = 2.0,
    ) -> SyncResult:
        """Until nothing is left; without ``watch``, also until the next attempt would be more
        than ``max_wait`` seconds after the start, or (unless ``wait_offline``) at once when the
        gateway cannot be reached; or until ``stop()``."""
        result = SyncResult()
        started = self.clock()
        renewed = started
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
                    offline = self._offline.is_set() and not watch and not wait_offline
                    if self.stopping() or offline:
                        if running:  # each ends at its next chunk boundary or request
                            wait(list(running), timeout=poll, return_when=FIRST_COMPLETED)
                            continue
                        result.interrupted = self.stopping()
                        result.offline = offline and not result.interrupted
                        if result.offline:
                            self.reporter.offline()
                        break
                    if running and self.clock() - renewed >= self.outbox.lease_ttl / 4:
                        renewed = self.clock()
                        self.outbox.renew(list(running.values()))
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
                        self._offline.clear()
                        self.outbox.wake_unreachable()
                        continue
                    # Due but held by another live process: look again after a poll.
                    pause = max(0.0, next_at - self.clock()) or poll
                    if not watch and self.clock() + pause - started > max_wait:
                        break
                    self.reporter.waiting(pause)
                    self.sleep(min(pause, poll) if watch else pause)
            except BaseException:
                self.stop()  # the running attempts end at their next chunk boundary
                for future in running:
                    future.cancel()
                raise
        result.unfinished = sum(
            c.items for s, c in self.outbox.stats().by_state.items() if s in (
                State.QUEUED, State.UPLOADING, State.WAITING, State.STORED)
        )  # fmt: skip
        return result

    def sync_item(self, item: Item) -> State:
        """One attempt at ``item``; the state it is left in."""
        if not self.outbox.claim(item):
            return item.state
        try:
            self.reporter.item_started(item)
            if item.state == State.UPLOADING:
                self._run_steps(item, before=True)
                self._upload(item)
                self.outbox.mark_stored(item)
                self.reporter.item_stored(item)
            if item.state == State.STORED:
                self._run_steps(item, before=False)
                self.outbox.mark_done(item)
                self.reporter.item_done(item)
        except Transient as exc:
            after = exc.retry_after
            delay = after if after is not None else self.backoff.delay(item.attempts + 1, self.rng)
            self.outbox.schedule_retry(
                item, delay=delay, error=str(exc), unreachable=exc.unreachable
            )
            if exc.unreachable:
                self._offline.set()
            self.reporter.retry(item, delay, str(exc))
        except Interrupted as exc:
            error = f"interrupted: {exc}"
            self.outbox.schedule_retry(item, delay=0, error=error, unreachable=False, counts=False)
            self.reporter.interrupted(item, error)
        except StepRefused as exc:  # the app's answer is kept with its step
            self.outbox.mark_failed(item, str(exc), step=exc.step, answer=exc.answer)
            self.reporter.failed(item, str(exc))
        except Permanent as exc:
            self.outbox.mark_failed(item, str(exc))
            self.reporter.failed(item, str(exc))
        except TokenRefused as exc:  # the item did nothing wrong: due again with a new token
            error = str(exc)
            self.outbox.schedule_retry(item, delay=0, error=error, unreachable=False, counts=False)
            raise
        except OutboxError:
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
        # The fields as sent: the captures of the steps before the upload filled in (the same
        # on every attempt, those steps being done once).
        context = Context(captured=item.captured)
        sent = dataclasses.replace(item, fields=[(k, render(v, context)) for k, v in item.fields])
        form = [f for f in item.files if f.transport == Transport.FORM]
        if any(f.record is None for f in form) and not self._adopt_records(item, form):
            # Always the same files in one POST: the key's fingerprint covers all of them.
            self.outbox.sending(item)
            records = self.gateway.upload_form(
                sent, form, self._progress(item), should_stop=self.stopping
            )
            self.outbox.file_stored(item, list(zip(form, records, strict=True)))
        for entry in item.files:
            if entry.transport == Transport.TUS and entry.record is None:
                if self.stopping():
                    raise Interrupted(f"stopped before {entry.name}")
                record = self.gateway.upload_tus(
                    sent,
                    entry,
                    on_url=functools.partial(self.outbox.set_tus_url, item, entry),
                    on_restart=functools.partial(self.outbox.restart_file, item, entry),
                    on_progress=self._progress(item, persist=True),
                    should_stop=self.stopping,
                )
                self.outbox.file_stored(item, [(entry, record)])
            self.reporter.progress(item, entry, entry.size)

    def _adopt_records(self, item: Item, form: list[FileEntry]) -> bool:
        """After the key's lifetime, the records of an earlier POST are found by the item's
        marker and SHA-256 instead of being stored again. True if they were all there."""
        first = item.first_sent_at
        if first is None or self.clock() - first < self.key_ttl - CLOCK_SLACK:
            return False  # never sent, or the gateway still answers a replay by its key
        found = self.gateway.records_of_item(item, since=first - CLOCK_SLACK)
        pairs: list[tuple[FileEntry, dict[str, Any]]] = []
        for entry in form:
            same = [
                r for r in found if (r.get("sha256"), r.get("size")) == (entry.sha256, entry.size)
            ]
            # Two files of one item may hold the same bytes: the name decides between them (the
            # gateway may have cleaned a name, so it only breaks ties).
            same.sort(key=lambda r: r.get("originalName") != entry.name)
            if same:
                match = same[0]
                found.remove(match)
                verify_record(entry, match)
                pairs.append((entry, match))
        if not pairs:
            return False
        if len(pairs) != len(form):
            raise Permanent(
                f"the gateway holds {len(pairs)} of this item's {len(form)} form files (a POST "
                "stores all or none: some were deleted since); nothing is sent again"
            )
        self.outbox.file_stored(item, pairs)
        return True

    def _progress(self, item: Item, *, persist: bool = False) -> Callable[[FileEntry, int], None]:
        def report(entry: FileEntry, sent: int) -> None:
            if persist and sent != entry.sent:
                self.outbox.set_sent(item, entry, sent)
            renewed = item.lease_renewed_at
            if renewed is None or self.clock() - renewed >= self.outbox.lease_ttl / 4:
                self.outbox.renew([item.id])  # a long upload must not look abandoned elsewhere
                item.lease_renewed_at = self.clock()
            self.reporter.progress(item, entry, sent)

        return report

    def _run_steps(self, item: Item, *, before: bool) -> None:
        """The steps before the upload (``before``) or after it, from the first not done."""
        records: list[dict[str, Any]] = [f.record or {} for f in item.files]
        for step in item.steps:
            if step.done or step.spec.before != before:
                continue
            if self.stopping():
                raise Interrupted(f"stopped before step {step.spec.name}")
            context = Context(records=records, captured=item.captured, env=self.env)
            try:
                result = run_step(
                    self.step_session,
                    step.spec,
                    context,
                    idempotency_key=step_key(item, step),
                    withheld=[self.gateway.token],
                )
            except StepRefused as refused:
                refused.step = step
                raise
            self.outbox.step_done(item, step, result.status, result.captured)
            self.reporter.step_done(item, step)


def step_key(item: Item, step: StepEntry) -> str:
    """The step's own Idempotency-Key, derived from the item's."""
    return f"{item.idempotency_key}.step{step.position}"
