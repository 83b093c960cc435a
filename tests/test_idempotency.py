"""gateway.uploads.idempotency without HTTP: the fingerprint, the saved answer, run_once on a fake store.
(The route: test_upload_api.py, "idempotency".)"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import pytest

from gateway import errors
from gateway.media.principal import Principal
from gateway.media.records import IdempotentAnswer, SavedResponse
from gateway.uploads.idempotency import (
    AnswerPlan,
    Fingerprint,
    Idempotency,
    Outcome,
    check_key,
    run_once,
)


# -- the fingerprint -------------------------------------------------------------------------------
def test_the_fingerprint_format_is_stable():
    """Saved answers keep their fingerprint for a day: a deploy must not change how one is
    computed, or every retry across it would be refused as a mismatch."""
    fingerprint = Fingerprint("q1")
    fingerprint.field("projectId", "p1")
    fingerprint.file("file", "a.png", "0" * 64)
    parts = [["query", "q1"], ["field", "projectId", "p1"], ["file", "file", "a.png", "0" * 64]]
    assert fingerprint.hexdigest() == hashlib.sha256(json.dumps(parts).encode()).hexdigest()
    assert fingerprint.hexdigest() == (
        "a712a0e35a0ab921d7b09e1fcb75b0b21ab6883fc4eac57bc7caa661423f52d9"
    )


def test_an_empty_request_has_a_fingerprint_of_its_query_alone():
    assert Fingerprint(None).hexdigest() == hashlib.sha256(b'[["query", null]]').hexdigest()
    assert Fingerprint("p1").hexdigest() != Fingerprint(None).hexdigest()


def _digest(*steps) -> str:
    fingerprint = Fingerprint(None)
    for kind, *args in steps:
        getattr(fingerprint, kind)(*args)
    return fingerprint.hexdigest()


def test_order_kind_and_every_value_count():
    base = _digest(("field", "a", "1"), ("file", "f", "x.png", "0" * 64))
    assert base == _digest(("field", "a", "1"), ("file", "f", "x.png", "0" * 64))
    others = [
        _digest(("file", "f", "x.png", "0" * 64), ("field", "a", "1")),  # order
        _digest(("field", "a", "2"), ("file", "f", "x.png", "0" * 64)),  # a value
        _digest(("field", "b", "1"), ("file", "f", "x.png", "0" * 64)),  # a name
        _digest(("field", "a", "1"), ("file", "g", "x.png", "0" * 64)),  # the field name
        _digest(("field", "a", "1"), ("file", "f", "y.png", "0" * 64)),  # the filename
        _digest(("field", "a", "1"), ("file", "f", "x.png", "1" * 64)),  # the bytes
        _digest(("field", "a", "1")),
    ]
    assert base not in others and len(set(others)) == len(others)


# -- the saved answer ------------------------------------------------------------------------------
def test_the_plan_renders_and_saves_the_answer_with_its_expiry():
    rendered = []

    def render(records):
        rendered.append(records)
        return 201, {"files": records}

    plan = AnswerPlan(scope="acme#alice", key="k1", ttl=60.0, render=render, clock=lambda: 1000.0)
    saved, status, body = plan.answer(["r1"], "fp")
    assert rendered == [["r1"]]
    assert (status, body) == (201, {"files": ["r1"]})
    assert saved == IdempotentAnswer(
        "acme#alice", "k1", SavedResponse(201, {"files": ["r1"]}, "fp"), expires_at=1060.0
    )


# -- run_once --------------------------------------------------------------------------------------
class FakeStore:
    def __init__(self, saved: SavedResponse | None = None, release_fails: bool = False) -> None:
        self.saved = saved
        self.release_fails = release_fails
        self.claims: list[tuple] = []
        self.released: list[tuple[str, str]] = []

    def claim(self, scope, key, *, now, lock_timeout, ttl):
        self.claims.append((scope, key, now, lock_timeout, ttl))
        return self.saved

    def release(self, scope, key):
        self.released.append((scope, key))
        if self.release_fails:
            raise errors.RecordStoreError()


def plan() -> AnswerPlan:
    return AnswerPlan(
        scope="s", key="k", ttl=86400.0, render=lambda r: (201, {}), clock=lambda: 500.0
    )


def never():
    raise AssertionError("must not be called")


def test_a_first_request_runs_and_is_not_replayed():
    store = FakeStore()
    seen = []

    def first(p):
        seen.append(p)
        return 201, {"ok": True}

    the_plan = plan()
    outcome = run_once(store, the_plan, lock_timeout=30.0, first=first, fingerprint_of_retry=never)
    assert outcome == Outcome(201, {"ok": True}, replayed=False)
    assert seen == [the_plan]
    assert store.claims == [("s", "k", 500.0, 30.0, 86400.0)]
    assert store.released == []


def test_a_retry_gets_the_saved_answer_replayed():
    store = FakeStore(SavedResponse(201, {"mediaId": "m"}, "fp"))
    outcome = run_once(
        store, plan(), lock_timeout=30.0, first=lambda p: never(), fingerprint_of_retry=lambda: "fp"
    )
    assert outcome == Outcome(201, {"mediaId": "m"}, replayed=True)
    assert store.released == []


def test_a_retry_with_another_request_is_a_mismatch():
    store = FakeStore(SavedResponse(201, {}, "fp"))
    with pytest.raises(errors.IdempotencyKeyMismatch) as caught:
        run_once(
            store,
            plan(),
            lock_timeout=30.0,
            first=lambda p: never(),
            fingerprint_of_retry=lambda: "other",
        )
    assert (caught.value.status, caught.value.code) == (422, "idempotency_key_mismatch")
    assert store.released == []  # the first request's answer stays


@pytest.mark.parametrize("failure", [errors.StorageError(), KeyboardInterrupt()])
def test_a_failed_first_request_releases_its_claim_and_raises(failure):
    store = FakeStore()

    def first(p):
        raise failure

    with pytest.raises(type(failure)):
        run_once(store, plan(), lock_timeout=30.0, first=first, fingerprint_of_retry=never)
    assert store.released == [("s", "k")]


def test_a_release_that_fails_is_logged_and_the_first_error_raised(caplog):
    store = FakeStore(release_fails=True)

    def first(p):
        raise errors.UnsupportedType()

    with (
        caplog.at_level(logging.ERROR, logger="gateway.uploads.idempotency"),
        pytest.raises(errors.UnsupportedType),
    ):
        run_once(store, plan(), lock_timeout=30.0, first=first, fingerprint_of_retry=never)
    assert store.released == [("s", "k")]
    [entry] = caplog.records
    assert entry.levelno == logging.ERROR and entry.exc_info and entry.exc_info[0] is not None
    assert entry.getMessage() == "could not release idempotency key k; it frees itself after 30.0s"


# -- Idempotency.once: what every upload route calls -----------------------------------------------
ALICE = Principal(subject="alice", tenant="acme", projects=None)


def helper(store) -> Idempotency:
    return Idempotency(store, ttl=3600.0, lock_timeout=20.0, clock=lambda: 700.0)


def render(records):
    return 201, {"ids": records}


def test_without_a_key_the_request_runs_once_with_no_plan_and_no_claim():
    store, seen = FakeStore(), []

    def first(p):
        seen.append(p)
        return 201, {"ok": 1}

    outcome = helper(store).once(
        ALICE, None, render=render, first=first, fingerprint_of_retry=never
    )
    assert outcome == Outcome(201, {"ok": 1}, replayed=False)
    assert seen == [None]
    assert store.claims == [] and store.released == []


def test_without_a_key_a_failure_is_raised_and_nothing_released():
    store = FakeStore()

    def first(p):
        raise errors.UnsupportedType()

    with pytest.raises(errors.UnsupportedType):
        helper(store).once(ALICE, None, render=render, first=first, fingerprint_of_retry=never)
    assert store.claims == [] and store.released == []


def test_with_a_key_the_first_request_gets_a_plan_scoped_to_the_caller():
    store, seen = FakeStore(), []

    def first(p):
        seen.append(p)
        return p.render(["m1"])

    outcome = helper(store).once(
        ALICE, "key-1", render=render, first=first, fingerprint_of_retry=never
    )
    assert outcome == Outcome(201, {"ids": ["m1"]}, replayed=False)
    [the_plan] = seen
    assert (the_plan.scope, the_plan.key, the_plan.ttl) == ("acme#alice", "key-1", 3600.0)
    assert the_plan.render is render and the_plan.clock() == 700.0
    assert store.claims == [("acme#alice", "key-1", 700.0, 20.0, 3600.0)]


def test_the_scope_is_tenant_and_subject_so_another_caller_is_another_key():
    store = FakeStore()
    bob = Principal(subject="bob", tenant="", projects=None)
    helper(store).once(
        bob, "k", render=render, first=lambda p: (201, {}), fingerprint_of_retry=never
    )
    assert store.claims[0][:2] == ("#bob", "k")


def test_with_a_key_a_retry_is_replayed_and_a_different_request_refused():
    store = FakeStore(SavedResponse(201, {"mediaId": "m"}, "fp"))
    replay = helper(store).once(
        ALICE, "k", render=render, first=lambda p: never(), fingerprint_of_retry=lambda: "fp"
    )
    assert replay == Outcome(201, {"mediaId": "m"}, replayed=True)
    with pytest.raises(errors.IdempotencyKeyMismatch):
        helper(store).once(
            ALICE, "k", render=render, first=lambda p: never(), fingerprint_of_retry=lambda: "x"
        )


@pytest.mark.parametrize("key", ["", "a b", "k" * 256])
def test_a_malformed_key_is_refused_before_anything_runs_or_is_claimed(key):
    store = FakeStore()
    with pytest.raises(errors.InvalidIdempotencyKey):
        helper(store).once(
            ALICE, key, render=render, first=lambda p: never(), fingerprint_of_retry=never
        )
    assert store.claims == []


def test_a_failed_first_request_with_a_key_releases_its_claim():
    store = FakeStore()

    def first(p):
        raise errors.StorageError()

    with pytest.raises(errors.StorageError):
        helper(store).once(ALICE, "k", render=render, first=first, fingerprint_of_retry=never)
    assert store.released == [("acme#alice", "k")]


def test_the_saved_answer_expires_by_the_wall_clock():
    assert Idempotency(FakeStore(), ttl=1.0, lock_timeout=1.0).clock is time.time


# -- keys ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["a", "!", "~", "k" * 255, "ABC-123_x.y"])
def test_visible_ascii_keys_of_1_to_255_characters(key):
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "k" * 256, "a b", "\x7f", "é", "a\tb", "abc\n"])
def test_other_keys_are_refused(key):
    with pytest.raises(errors.InvalidIdempotencyKey) as caught:
        check_key(key)
    assert (caught.value.status, caught.value.code) == (400, "invalid_idempotency_key")
