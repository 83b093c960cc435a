"""gateway.media.lifecycle: the statuses, the one transition table, what is visible and owns its object.

The table is the contract every protocol and both record stores rely on (the diagram in the
module's docstring), so it is spelled out here in full: a changed edge must change this test."""

from __future__ import annotations

import itertools

import pytest

from gateway.media.lifecycle import (
    OWNS_OBJECT,
    SERVABLE,
    SETTLED,
    TRANSITIONS,
    VISIBLE,
    Status,
    is_visible,
    may_move,
)

S = Status

ALLOWED = {
    (S.PENDING, S.STORED),
    (S.PENDING, S.REJECTED),
    (S.PENDING, S.ABORTED),
    (S.PENDING, S.EXPIRED),
    (S.STORED, S.PROCESSING),
    (S.STORED, S.READY),
    (S.STORED, S.FAILED),
    (S.STORED, S.INFECTED),
    (S.PROCESSING, S.READY),
    (S.PROCESSING, S.FAILED),
    (S.PROCESSING, S.INFECTED),
    (S.FAILED, S.PROCESSING),  # a redriven job
}


def test_status_values_are_the_wire_names():
    assert [s.value for s in Status] == [
        "pending",
        "stored",
        "processing",
        "ready",
        "failed",
        "infected",
        "rejected",
        "aborted",
        "expired",
    ]
    assert Status("stored") is Status.STORED and str(Status.READY) == "ready"


@pytest.mark.parametrize("current, new", list(itertools.product(Status, Status)))
def test_may_move_exactly_along_the_table(current, new):
    assert may_move(current, new) is ((current, new) in ALLOWED)


def test_every_status_has_an_entry_and_end_states_have_no_way_out():
    assert set(TRANSITIONS) == set(Status)
    for end in (S.READY, S.INFECTED, S.REJECTED, S.ABORTED, S.EXPIRED):
        assert TRANSITIONS[end] == frozenset()


def test_visible_is_what_was_committed():
    assert {S.STORED, S.PROCESSING, S.READY, S.FAILED, S.INFECTED} == VISIBLE
    for status in Status:
        assert is_visible(status) is (status in VISIBLE)


def test_a_record_owns_its_object_while_pending_or_visible_but_not_infected():
    assert {S.PENDING, S.STORED, S.PROCESSING, S.READY, S.FAILED} == OWNS_OBJECT


def test_processing_settles_in_ready_failed_or_infected():
    assert {S.READY, S.FAILED, S.INFECTED} == SETTLED


def test_every_visible_status_but_failed_and_infected_may_be_served():
    assert {S.STORED, S.PROCESSING, S.READY} == SERVABLE
