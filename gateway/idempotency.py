"""Idempotency-Key handling: a replay by the same caller gets the first answer, stored once."""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from .errors import BadRequest
from .records import IdempotencyStore, SavedResponse

log = logging.getLogger(__name__)
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]
    replayed: bool


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise BadRequest("Idempotency-Key must be 1-255 visible ASCII characters.",
                         code="invalid_idempotency_key")
    return key


def run_once(store: IdempotencyStore, scope: str, key: str, *, ttl: float, lock_timeout: float,
             produce: Callable[[], tuple[int, dict[str, Any]]],
             clock: Callable[[], float] = time.time) -> Outcome:
    """Run ``produce`` unless this (scope, key) already succeeded; a failed run is forgotten.

    A claim held by a request still running makes ``claim`` raise Conflict (409).
    """
    saved = store.claim(scope, key, now=clock(), lock_timeout=lock_timeout, ttl=ttl)
    if saved is not None:
        return Outcome(saved.status, saved.body, replayed=True)
    try:
        status, body = produce()
    except BaseException:
        try:
            store.release(scope, key)
        except Exception:
            log.error("could not release idempotency key %s; it frees itself after %ss",
                      key, lock_timeout, exc_info=True)
        raise
    try:
        store.save(scope, key, SavedResponse(status, body), now=clock(), ttl=ttl)
    except Exception:
        # The upload itself succeeded and is recorded; failing the answer now would only make
        # the client retry a stored upload. Log it and answer.
        log.error("could not save the answer for idempotency key %s", key, exc_info=True)
    return Outcome(status, body, replayed=False)
