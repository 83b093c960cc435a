"""Idempotency-Key handling (IETF draft "The Idempotency-Key HTTP Header Field").

A retry with the same key and the same request gets the first answer, and nothing is stored
twice. The same key with a different request is refused (422 ``idempotency_key_mismatch``).
"The same request" is its ``Fingerprint``: the query's projectId, every text field (name and
value, in order), and every file part (field name, filename and SHA-256 of its bytes, in order).
The boundary, header order, chunking and Content-Length do not count, so a client library that
rebuilds the body with a new boundary on retry is still recognised.

The first answer is saved in the same atomic write as the records it reports
(``RecordStore.create_many(answer=...)``): it cannot be lost after a success, so a key is never
left locked by a request that did succeed. A request that fails releases its claim.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway import errors
from gateway.media.principal import Principal
from gateway.media.records import IdempotencyStore, IdempotentAnswer, MediaRecord, SavedResponse

log = logging.getLogger(__name__)
KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


def check_key(key: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise errors.InvalidIdempotencyKey()
    return key


class Fingerprint:
    """What identifies a form upload request, built from its parsed parts."""

    def __init__(self, query_project_id: str | None) -> None:
        self._parts: list[Any] = [["query", query_project_id]]

    def field(self, name: str, value: str) -> None:
        self._parts.append(["field", name, value])

    def file(self, name: str, filename: str, sha256: str) -> None:
        self._parts.append(["file", name, filename, sha256])

    def hexdigest(self) -> str:
        return hashlib.sha256(json.dumps(self._parts).encode()).hexdigest()


Render = Callable[[list[MediaRecord]], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class AnswerPlan:
    """How the upload service saves the first answer with its records."""

    scope: str
    key: str
    ttl: float
    render: Render
    clock: Callable[[], float] = time.time

    def answer(
        self, records: list[MediaRecord], fingerprint: str
    ) -> tuple[IdempotentAnswer, int, dict[str, Any]]:
        status, body = self.render(records)
        saved = IdempotentAnswer(
            self.scope,
            self.key,
            SavedResponse(status, body, fingerprint),
            expires_at=self.clock() + self.ttl,
        )
        return saved, status, body


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]
    replayed: bool


def run_once(
    store: IdempotencyStore,
    plan: AnswerPlan,
    *,
    lock_timeout: float,
    first: Callable[[AnswerPlan], tuple[int, dict[str, Any]]],
    fingerprint_of_retry: Callable[[], str],
) -> Outcome:
    """Run ``first`` unless this (scope, key) already succeeded; a failed run is forgotten.

    ``first`` must save its answer through the plan; a retry's fingerprint must match the saved
    one. A claim held by a request still running raises IdempotencyInProgress (409).
    """
    saved = store.claim(
        plan.scope, plan.key, now=plan.clock(), lock_timeout=lock_timeout, ttl=plan.ttl
    )
    if saved is not None:
        if fingerprint_of_retry() != saved.fingerprint:
            raise errors.IdempotencyKeyMismatch()
        return Outcome(saved.status, saved.body, replayed=True)
    try:
        status, body = first(plan)
    except BaseException:
        try:
            store.release(plan.scope, plan.key)
        except Exception:
            log.error(
                "could not release idempotency key %s; it frees itself after %ss",
                plan.key,
                lock_timeout,
                exc_info=True,
            )
        raise
    return Outcome(status, body, replayed=False)


First = Callable[[AnswerPlan | None], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Idempotency:
    """What every upload route does with its ``Idempotency-Key`` header, in one call.

    Without a key, ``first(None)`` runs and its answer is the outcome. With one, the key is
    checked, then ``run_once`` either runs ``first(plan)`` (which saves its answer through the
    plan) or replays the answer saved for this caller and key.
    """

    store: IdempotencyStore
    ttl: float
    lock_timeout: float
    clock: Callable[[], float] = time.time

    def once(
        self,
        principal: Principal,
        key: str | None,
        *,
        render: Render,
        first: First,
        fingerprint_of_retry: Callable[[], str],
    ) -> Outcome:
        if key is None:
            status, body = first(None)
            return Outcome(status, body, replayed=False)
        plan = AnswerPlan(
            scope=f"{principal.tenant}#{principal.subject}",
            key=check_key(key),
            ttl=self.ttl,
            render=render,
            clock=self.clock,
        )
        return run_once(
            self.store,
            plan,
            lock_timeout=self.lock_timeout,
            first=first,
            fingerprint_of_retry=fingerprint_of_retry,
        )
