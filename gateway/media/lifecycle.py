"""The media lifecycle: one status type, one table of allowed transitions, one "visible" rule.

Every protocol (streaming form, direct-to-S3, tus) and the processing worker move a media item
through these statuses, and only along ``TRANSITIONS``; the record stores enforce the table in
their compare-and-set (``RecordStore.update``), so an illegal move is refused wherever it is tried.

    upload in progress          committed (the object exists)           ended without media
    pending ───────────────────> stored ──> processing ──> ready        rejected / aborted /
       │                           │             │                      expired
       └─> rejected/aborted/       └──────────> failed / infected  <────┘
           expired
"""

from __future__ import annotations

import enum


class Status(enum.StrEnum):
    PENDING = "pending"  # created by a protocol that receives bytes later (direct, tus)
    STORED = "stored"  # the object is committed and recorded
    PROCESSING = "processing"  # the pipeline works on it
    READY = "ready"  # processed: variants and properties are available
    FAILED = "failed"  # processing failed for good (the record says why)
    INFECTED = "infected"  # the virus scan found something; the object is gone or quarantined
    REJECTED = "rejected"  # the bytes are not what was promised (direct uploads)
    ABORTED = "aborted"  # the client gave up
    EXPIRED = "expired"  # the client never finished in time


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.STORED, Status.REJECTED, Status.ABORTED, Status.EXPIRED}),
    Status.STORED: frozenset({Status.PROCESSING, Status.READY, Status.FAILED, Status.INFECTED}),
    Status.PROCESSING: frozenset({Status.READY, Status.FAILED, Status.INFECTED}),
    Status.READY: frozenset(),
    Status.FAILED: frozenset({Status.PROCESSING}),  # a redriven job may try again
    Status.INFECTED: frozenset(),
    Status.REJECTED: frozenset(),
    Status.ABORTED: frozenset(),
    Status.EXPIRED: frozenset(),
}

# Media items that exist for the media routes (GET, list, delete): committed ones. Uploads that
# ended without an object are visible only through their protocol's status route.
VISIBLE: frozenset[Status] = frozenset(
    {Status.STORED, Status.PROCESSING, Status.READY, Status.FAILED, Status.INFECTED}
)

# Where processing ends: a live status stream closes here.
SETTLED: frozenset[Status] = frozenset({Status.READY, Status.FAILED, Status.INFECTED})

# Media whose object public URLs may serve (when it is out of the quarantine, too). Failed media
# are withheld as infected ones are (a decompression bomb, a polyglot, a truncated file): the
# owner sees the status and the reason, no URL; a retry that ends ready serves it again.
SERVABLE: frozenset[Status] = VISIBLE - {Status.INFECTED, Status.FAILED}

# Statuses whose record owns its object key: the sweeper never deletes such an object.
OWNS_OBJECT: frozenset[Status] = frozenset({Status.PENDING, *VISIBLE} - {Status.INFECTED})


def may_move(current: Status, new: Status) -> bool:
    return new in TRANSITIONS[current]


def is_visible(status: Status) -> bool:
    return status in VISIBLE
