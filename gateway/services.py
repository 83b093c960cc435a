"""The gateway's long-lived collaborators, built once per process from the settings. No Flask."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .direct import DirectUploadService
from .events import Announcer, LogPublisher, Publisher
from .orphans import OrphanJournal
from .records import MediaStore, open_records
from .storage import ObjectStore, Storage, open_storage
from .sweeper import Sweeper
from .uploads import UploadService
from .urls import PublicUrls


@dataclass
class Services:
    settings: Settings
    storage: Storage
    records: MediaStore  # also the IdempotencyStore
    journal: OrphanJournal
    announcer: Announcer
    uploads: UploadService
    direct: DirectUploadService | None  # None when the store cannot presign
    urls: PublicUrls
    sweeper: Sweeper

    @property
    def store(self) -> ObjectStore:
        return self.storage.objects

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        storage: Storage | None = None,
        records: MediaStore | None = None,
        publisher: Publisher | None = None,
    ) -> Services:
        storage = storage or open_storage(settings)
        records = records or open_records(settings)
        journal = OrphanJournal(settings.orphan_journal)
        announcer = Announcer(publisher or LogPublisher())
        direct = (
            DirectUploadService(settings, storage.direct, records, announcer)
            if storage.direct is not None
            else None
        )
        return cls(
            settings=settings,
            storage=storage,
            records=records,
            journal=journal,
            announcer=announcer,
            uploads=UploadService(settings, storage.objects, records, journal, announcer),
            direct=direct,
            urls=PublicUrls(settings, storage.objects),
            sweeper=Sweeper(
                store=storage.objects,
                listing=storage.listing,
                records=records,
                journal=journal,
                direct=direct,
            ),
        )

    def provision(self) -> None:
        """Create what the backends need: the record schema, the bucket."""
        self.records.create_schema()
        if self.storage.provision is not None:
            self.storage.provision()
