"""The gateway's long-lived collaborators, built once per process from the settings."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from .config import Settings
from .orphans import OrphanJournal
from .records import RecordStore, open_records
from .storage import ObjectStore, open_store
from .uploads import UploadService
from .urls import PublicUrls


@dataclass
class Services:
    settings: Settings
    store: ObjectStore
    records: RecordStore  # also the IdempotencyStore
    journal: OrphanJournal
    uploads: UploadService
    urls: PublicUrls

    @classmethod
    def from_settings(cls, settings: Settings, *, store: ObjectStore | None = None,
                      records: RecordStore | None = None) -> "Services":
        store = store or open_store(settings)
        records = records or open_records(settings)
        journal = OrphanJournal(settings.orphan_journal)
        return cls(settings=settings, store=store, records=records, journal=journal,
                   uploads=UploadService(settings, store, records, journal),
                   urls=PublicUrls(settings, store))


def services() -> Services:
    return current_app.extensions["gateway"]
