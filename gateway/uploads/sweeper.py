"""The sweeper: removes what failed requests, killed workers and abandoned clients left behind.

One run: remove the staged parts (gateway/storage/staging.py) of worker processes that are gone;
expire overdue direct and tus uploads (the pending-upload lifecycle's one pass, in
gateway/uploads/pending.py); abort stale multipart (or local temporary) uploads that no pending
upload owns; delete journaled orphans, gateway-made objects that no record owns and the chunks
of tus uploads no longer going on (a node killed mid-PATCH leaves some).
Every item is handled on its own: a failure is logged and counted and the run goes on, so one
undeletable object cannot stop every later sweep. Nothing here knows Flask or click.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TypeVar, cast

from gateway import errors
from gateway.media.lifecycle import OWNS_OBJECT, Status
from gateway.media.orphans import OrphanJournal
from gateway.media.records import DirectUpload, MediaRecord, RecordStore, TusUpload
from gateway.queue import Queue
from gateway.storage import ObjectListing, ObjectStore, PendingUpload, Quarantine
from gateway.storage.chunks import chunk_owner
from gateway.storage.keys import parse_key, staging_key
from gateway.storage.staging import Staging
from gateway.uploads.pending import PartsRemover, PendingUploads, UploadKind

log = logging.getLogger(__name__)
T = TypeVar("T")
STALLED_AFTER = timedelta(minutes=10)  # stored this long and not processing: queue it again
_PROTOCOLS: dict[UploadKind, str] = {DirectUpload: "direct", TusUpload: "tus"}


@dataclass
class SweepReport:
    done: list[str] = field(default_factory=list)  # one line per thing removed (or to remove)
    failed: list[str] = field(default_factory=list)  # one line per thing that could not be


class Sweeper:
    def __init__(
        self,
        *,
        store: ObjectStore,
        listing: ObjectListing,
        records: RecordStore,
        journal: OrphanJournal,
        pending: PendingUploads,
        uploads: Mapping[UploadKind, PartsRemover],
        quarantine: Quarantine | None = None,
        queue: Queue | None = None,
        keep_infected: bool = False,
        staging: Staging | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.staging = staging  # this node's staged parts
        self.store = store
        self.listing = listing
        self.quarantine = quarantine
        self.queue = queue
        self.keep_infected = keep_infected  # infected originals kept in the quarantine on purpose
        self.records = records
        self.journal = journal
        self.pending = pending
        self.uploads = uploads  # the protocols whose overdue pending uploads are expired
        self.clock = clock

    def sweep(
        self, *, older_than: timedelta, dry_run: bool = False, now: datetime | None = None
    ) -> SweepReport:
        now = now or self.clock()
        cutoff = now - older_than
        report = SweepReport()
        if self.staging is not None:
            self._each(
                report,
                "remove staged part",
                self.staging.orphans(),
                dry_run,
                lambda path: path.unlink(missing_ok=True),
                lambda path: path.name,
            )
        self._expire_pending_uploads(now, dry_run, report)
        self._end_expired_reservations(now, dry_run, report)
        self._requeue_stalled(now, dry_run, report)
        for _store, listing in self._stores():
            self._each(
                report,
                "abort upload",
                self._stale_uploads(listing, cutoff),
                dry_run,
                listing.abort_pending,
                lambda upload: f"{upload.key} ({upload.upload_id})",
            )
        journaled = self._journaled(report)
        undeleted = self._each(
            report,
            "delete journaled orphan",
            [key for key in sorted(journaled) if not self._owned(key, report)],
            dry_run,
            self._delete_everywhere,
            str,
        )
        if journaled and not dry_run:
            try:
                self.journal.forget(journaled - set(undeleted))
            except Exception:
                log.error("could not rewrite the orphan journal", exc_info=True)
                report.failed.append("rewrite the orphan journal")
        for store, listing in self._stores():
            where = " in the quarantine" if store is not self.store else ""
            self._each(
                report,
                "delete unrecorded object",
                self._unrecorded_objects(listing, cutoff, journaled, report),
                dry_run,
                store.delete,
                _suffixed(where),
            )
        return report

    def _stores(self) -> list[tuple[ObjectStore, ObjectListing]]:
        stores: list[tuple[ObjectStore, ObjectListing]] = [(self.store, self.listing)]
        if self.quarantine is not None:
            held = self.quarantine.store
            stores.append((held, cast(ObjectListing, held)))
        return stores

    def _delete_everywhere(self, key: str) -> None:
        for store, _ in self._stores():
            store.delete(key)

    def _end_expired_reservations(self, now: datetime, dry_run: bool, report: SweepReport) -> None:
        """Quota reservations of streamed uploads whose process died: their space is free."""
        if dry_run:
            return
        try:
            ended = self.records.end_expired_reservations(now=now.timestamp(), limit=1000)
        except Exception:
            log.error("could not end expired quota reservations", exc_info=True)
            report.failed.append("end expired quota reservations")
            return
        if ended:
            report.done.append(f"end {ended} expired quota reservations")

    def _requeue_stalled(self, now: datetime, dry_run: bool, report: SweepReport) -> None:
        """Media still ``stored`` well after their commit: the job announced then was lost
        (the queue was down); queue it again (a duplicate is a no-op)."""
        if self.queue is None:
            return
        before = (now - STALLED_AFTER).isoformat(timespec="microseconds")
        try:
            for record in self.records.stalled(created_before=before, limit=500):
                report.done.append(f"queue processing again for {record.media_id}")
                if not dry_run:
                    self.queue.send({"type": "media.process", "mediaId": record.media_id})
        except Exception:
            log.error("could not queue stalled media again", exc_info=True)
            report.failed.append("queue stalled media")

    # -- the parts -------------------------------------------------------------------------------
    def _expire_pending_uploads(self, now: datetime, dry_run: bool, report: SweepReport) -> None:
        """Direct and tus uploads past their expiry, in one pass: the record expired, then
        its bytes removed."""
        if not self.uploads:
            return
        try:
            if dry_run:
                ended = self.pending.overdue(self.uploads, now=now)
            else:
                ended = self.pending.expire_overdue(self.uploads, now=now)
        except Exception:
            kinds = " and ".join(_PROTOCOLS[kind] for kind in self.uploads) + " uploads"
            log.error("could not expire overdue %s", kinds, exc_info=True)
            report.failed.append(f"expire {kinds}")
            return
        for record in ended:
            kind = next(k for k in _PROTOCOLS if isinstance(record.upload, k))
            report.done.append(f"expire {_PROTOCOLS[kind]} upload {record.media_id}")

    def _stale_uploads(self, listing: ObjectListing, cutoff: datetime) -> Iterable[PendingUpload]:
        for upload in listing.pending_uploads():
            if upload.started < cutoff and not self._is_live_upload(upload.key):
                yield upload

    def _journaled(self, report: SweepReport) -> set[str]:
        try:
            return set(self.journal.list_keys())
        except Exception:
            log.error("could not read the orphan journal", exc_info=True)
            report.failed.append("read the orphan journal")
            return set()

    def _unrecorded_objects(
        self, listing: ObjectListing, cutoff: datetime, journaled: set[str], report: SweepReport
    ) -> Iterable[str]:
        for obj in listing.objects():
            if obj.key in journaled or obj.modified >= cutoff:
                continue
            ours = chunk_owner(obj.key) is not None or parse_key(obj.key)[0] is not None
            if ours and not self._owned(obj.key, report):
                yield obj.key

    def _each(
        self,
        report: SweepReport,
        action: str,
        items: Iterable[T],
        dry_run: bool,
        act: Callable[[T], object],
        describe: Callable[[T], str],
    ) -> list[T]:
        """Act on every item, each on its own; the items whose action failed."""
        failed: list[T] = []
        try:
            for item in items:
                line = f"{action} {describe(item)}"
                if dry_run:
                    report.done.append(line)
                    continue
                try:
                    act(item)
                    report.done.append(line)
                except Exception:
                    log.error("sweep could not %s", line, exc_info=True)
                    report.failed.append(line)
                    failed.append(item)
        except Exception:
            log.error("sweep could not list what to %s", action, exc_info=True)
            report.failed.append(f"list for {action}")
        return failed

    # -- ownership -------------------------------------------------------------------------------
    def _record_of(self, media_id: str) -> MediaRecord | None:
        try:
            return self.records.get(media_id)
        except errors.MediaNotFound:
            return None

    def _is_live_upload(self, key: str) -> bool:
        """Whether a multipart upload to ``key`` belongs to a direct or tus upload still pending:
        those are the client's to finish until they expire (expiry cleans up the overdue ones)."""
        if chunk_owner(key) is not None:
            return self._owned(key, SweepReport())
        media_id, staging = parse_key(key)
        if media_id is None or staging:
            return False
        record = self._record_of(media_id)
        return record is not None and record.s3_key == key and record.status is Status.PENDING

    def _owned(self, key: str, report: SweepReport) -> bool:
        """Whether a live record owns the key (never delete those, nor keys the gateway did not
        make): the record's own key while its status owns an object (an infected one's only when
        infected files are kept); a staging key
        (``<key>.upload``) only while its upload is pending. When the record store cannot
        answer, the key counts as owned (and the failure is reported)."""
        owner = chunk_owner(key)
        media_id, staging = (owner, False) if owner is not None else parse_key(key)
        if media_id is None:
            return True
        try:
            record = self._record_of(media_id)
        except errors.GatewayError:
            report.failed.append(f"look up the record of {key}")
            return True
        if record is None:
            return False
        if owner is not None:  # a tus upload's chunks and parts, while it is going on
            return record.status is Status.PENDING
        if staging:
            return staging_key(record.s3_key) == key and record.status is Status.PENDING
        if record.status is Status.INFECTED:
            return self.keep_infected and record.s3_key == key
        if record.status not in OWNS_OBJECT:
            return False
        return record.s3_key == key or key in {v.key for v in record.variants}


def _suffixed(suffix: str) -> Callable[[str], str]:
    return lambda key: key + suffix
