"""Committed media as a caller sees them: read one, list a project's, delete one. No Flask.

Who sees what: a media item exists for a caller when it is committed (``lifecycle.VISIBLE``)
and the caller's token may see its tenant and project; anything else is "not found", never
"forbidden", so that a stranger cannot learn that an id exists. A tus upload still arriving is
visible, with its offset, to whoever may modify it (``in_progress``).

Who deletes: the uploader, or an admin of what it may see (``Principal.may_modify``). What a
delete removes, in this order: the record (from then on the media is gone for every reader),
then the object, where it is (the holding place while quarantined or withheld, else the public
store), then every variant, and last the ``media.deleted`` event. An object delete that fails
goes to the orphan journal and the delete still succeeds: an object without a record is the
sweeper's, and the journal makes that quick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import errors
from gateway.media.events import Announcer, EventType
from gateway.media.lifecycle import VISIBLE, Status
from gateway.media.naming import MEDIA_ID_RE
from gateway.media.orphans import OrphanJournal
from gateway.media.principal import Principal
from gateway.media.records import MediaRecord, Page, RecordStore, TusUpload
from gateway.storage import ObjectStore, Quarantine

POLL_SECONDS = 0.5  # how often a waiting reader reads the record again


@dataclass(frozen=True)
class ProjectScope:
    """One project of one tenant that a caller may list; made by ``MediaService.scope`` only."""

    tenant: str
    project_id: str


@dataclass(frozen=True)
class PageRequest:
    limit: int
    cursor: str | None = None
    status: Status | None = None  # one of ``VISIBLE``: only committed media are listed


class MediaService:
    def __init__(
        self,
        *,
        records: RecordStore,
        store: ObjectStore,
        holding: Quarantine | None,
        journal: OrphanJournal,
        announcer: Announcer,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.records = records
        self.store = store
        self.holding = holding  # where quarantined and withheld objects are
        self.journal = journal
        self.announcer = announcer
        self.clock = clock
        self.sleep = sleep

    def visible(
        self, principal: Principal, media_id: str, *, in_progress: bool = False
    ) -> MediaRecord:
        """A committed media item the token may see; with ``in_progress``, also the caller's
        own tus upload still arriving. MediaNotFound otherwise."""
        if not MEDIA_ID_RE.fullmatch(media_id):
            raise errors.MediaNotFound()
        record = self.records.get(media_id)
        if not principal.may_see(record.tenant, record.project_id):
            raise errors.MediaNotFound()
        if record.status in VISIBLE or (in_progress and _arriving(principal, record)):
            return record
        raise errors.MediaNotFound()

    def wait_for_change(
        self, principal: Principal, record: MediaRecord, *, version: int, timeout: float
    ) -> MediaRecord:
        """The item (``record``, as the caller sees it) once its version is no longer
        ``version``, or as it stands after ``timeout`` seconds; MediaNotFound if it stops being
        visible meanwhile."""
        deadline = self.clock() + timeout
        while record.version == version and self.clock() < deadline:
            self.sleep(POLL_SECONDS)
            record = self.visible(principal, record.media_id, in_progress=True)
        return record

    def scope(self, principal: Principal, project_id: str) -> ProjectScope:
        """The project to list, when the token allows it (ProjectForbidden otherwise)."""
        principal.check_project(project_id)
        return ProjectScope(tenant=principal.tenant, project_id=project_id)

    def list_media(self, scope: ProjectScope, page: PageRequest) -> Page:
        """Committed media of the project, newest first."""
        return self.records.list_media(
            tenant=scope.tenant,
            project_id=scope.project_id,
            limit=page.limit,
            cursor=page.cursor,
            status=page.status,
        )

    def delete(self, principal: Principal, media_id: str) -> MediaRecord:
        """Remove the media item (see the module's notes); returns the record it was."""
        record = self.visible(principal, media_id)
        if not _may_modify(principal, record):
            raise errors.DeleteForbidden()
        self.records.delete(record.media_id)
        for store, key in self._objects_of(record):
            try:
                store.delete(key)
            except errors.GatewayError:
                self.journal.add(key, "media delete: object delete failed")
        self.announcer.announce(EventType.DELETED, [record])
        return record

    def _objects_of(self, record: MediaRecord) -> list[tuple[ObjectStore, str]]:
        holding = self.holding
        where = holding.store if record.quarantined and holding is not None else self.store
        return [(where, record.s3_key), *((self.store, v.key) for v in record.variants)]


def _may_modify(principal: Principal, record: MediaRecord) -> bool:
    return principal.may_modify(
        tenant=record.tenant, project_id=record.project_id, owner=record.owner
    )


def _arriving(principal: Principal, record: MediaRecord) -> bool:
    """A tus upload still receiving bytes, seen by whoever may modify it."""
    return (
        record.status is Status.PENDING
        and isinstance(record.upload, TusUpload)
        and _may_modify(principal, record)
    )
