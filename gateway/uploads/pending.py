"""The pending-upload lifecycle, one implementation for every protocol that receives its bytes
after a ``pending`` record exists (direct, tus). No Flask, no storage vendor.

    check_room ──> (the protocol creates its pending records)
    get_owned ──> is_overdue ──> expire ─┐
                                 end ────┴─> compare-and-set to the end status, then remove_parts
    overdue ──> expire_overdue: the sweeper's one pass over every overdue upload, of every kind
                                it is given
    mark_stored: compare-and-set pending -> stored, then media.stored is announced

Every move is a compare-and-set in the record store: the request that loses the race removes
nothing and changes nothing (its caller reads what the winner decided). What an upload holds in
storage is each protocol's own business, behind ``PartsRemover``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from gateway import errors
from gateway.media.events import Announcer, EventType
from gateway.media.lifecycle import Status
from gateway.media.principal import Principal
from gateway.media.records import DirectUpload, MediaRecord, RecordStore, TusUpload, owned_upload

log = logging.getLogger(__name__)

UploadKind = type[DirectUpload] | type[TusUpload]

# The reason an expired record gives, in each protocol's own words.
EXPIRED_REASONS: dict[UploadKind, str] = {
    DirectUpload: "The upload expired before it was completed.",
    TusUpload: "The upload expired before it was finished.",
}
EXPIRE_LIMIT = 500  # records one sweep expires at most


class PartsRemover(Protocol):
    def remove_parts(self, record: MediaRecord) -> None:
        """Remove everything the unfinished upload holds in storage (parts, staged chunks,
        staging objects, an object completed too late). Raises ``GatewayError`` when storage
        fails; what stays is the sweeper's (the record no longer owns it)."""


@dataclass(frozen=True)
class PendingUploads:
    records: RecordStore
    announcer: Announcer
    max_pending: int  # per owner, all protocols together
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def check_room(self, principal: Principal, adding: int = 1) -> None:
        """Refuse (429) when ``adding`` more pending uploads would put the caller over the cap."""
        cap = self.max_pending
        pending = self.records.count_pending(
            tenant=principal.tenant, owner=principal.subject, at_most=cap
        )
        if pending + adding > cap:
            raise errors.TooManyPending(f"{pending} uploads are pending; at most {cap} may be.")

    def get_owned(self, principal: Principal, upload_id: str, kind: UploadKind) -> MediaRecord:
        """An upload of ``kind`` the caller may act on (others' are 404)."""
        return owned_upload(self.records, principal, upload_id, kind)

    def is_overdue(self, record: MediaRecord) -> bool:
        """Whether the upload is past its expiry (at the expiry second itself it is not)."""
        assert record.upload is not None
        return record.upload.expires_at < self._stamp(self.clock())

    def end(
        self, record: MediaRecord, status: Status, reason: str, parts: PartsRemover
    ) -> MediaRecord | None:
        """Move the record to an end status first (so a racing completion cannot store it),
        then remove what the upload holds. None: the record moved meanwhile (nothing removed)."""
        ended = self.records.update(record.evolve(status=status, reason=reason), expected=record)
        if ended is not None:
            self.remove(record, parts)
        return ended

    def expire(self, record: MediaRecord, parts: PartsRemover) -> MediaRecord | None:
        assert record.upload is not None
        return self.end(record, Status.EXPIRED, EXPIRED_REASONS[type(record.upload)], parts)

    @staticmethod
    def remove(record: MediaRecord, parts: PartsRemover) -> None:
        """Remove the upload's parts; a failure is logged and left to the sweeper."""
        try:
            parts.remove_parts(record)
        except errors.GatewayError:
            log.warning(
                "could not remove what upload %s holds; the sweeper will",
                record.media_id,
                exc_info=True,
            )

    def overdue(
        self,
        kinds: Iterable[UploadKind],
        *,
        now: datetime | None = None,
        limit: int = EXPIRE_LIMIT,
    ) -> list[MediaRecord]:
        """The pending uploads of ``kinds`` past their expiry at ``now``, among the first
        ``limit`` overdue ones (what a pass would expire; a dry run's list)."""
        stamp = self._stamp(now or self.clock())
        wanted = tuple(kinds)
        overdue = self.records.expired_pending(now=stamp, limit=limit)
        return [record for record in overdue if isinstance(record.upload, wanted)]

    def expire_overdue(
        self,
        removers: Mapping[UploadKind, PartsRemover],
        *,
        now: datetime | None = None,
        limit: int = EXPIRE_LIMIT,
    ) -> list[MediaRecord]:
        """The sweeper's pass, one for every protocol: each pending upload of a kind in
        ``removers`` past its expiry at ``now`` is expired and its parts removed. The records
        this pass expired."""
        expired = []
        for record in self.overdue(removers, now=now, limit=limit):
            parts = next(p for kind, p in removers.items() if isinstance(record.upload, kind))
            ended = self.expire(record, parts)
            if ended is not None:
                expired.append(ended)
        return expired

    def mark_stored(self, record: MediaRecord, stored: MediaRecord) -> MediaRecord | None:
        """Compare-and-set the pending ``record`` to ``stored`` and announce it. None: the
        record moved meanwhile (nothing announced)."""
        assert stored.status is Status.STORED
        saved = self.records.update(stored, expected=record)
        if saved is not None:
            self.announce_stored([saved])
        return saved

    def announce_stored(self, records: Sequence[MediaRecord]) -> None:
        self.announcer.announce(EventType.STORED, records)

    @staticmethod
    def _stamp(moment: datetime) -> str:
        return moment.isoformat(timespec="seconds")
