"""The gateway's long-lived collaborators, built once per process from the settings."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from .config import Settings
from .direct import DirectUploadService
from .orphans import OrphanJournal
from .records import RecordStore, open_records
from .storage import ObjectStore, open_store
from .storage.s3 import S3ObjectStore
from .storage.s3_direct import S3DirectUploads
from .uploads import UploadService
from .urls import PublicUrls


@dataclass
class Services:
    settings: Settings
    store: ObjectStore
    records: RecordStore  # also the IdempotencyStore
    journal: OrphanJournal
    uploads: UploadService
    direct: DirectUploadService
    urls: PublicUrls

    @classmethod
    def from_settings(cls, settings: Settings, *, store: ObjectStore | None = None,
                      records: RecordStore | None = None) -> "Services":
        store = store or open_store(settings)
        records = records or open_records(settings)
        journal = OrphanJournal(settings.orphan_journal)
        direct = None
        if isinstance(store, S3ObjectStore):
            direct = S3DirectUploads(store)
        return cls(settings=settings, store=store, records=records, journal=journal,
                   uploads=UploadService(settings, store, records, journal),
                   direct=DirectUploadService(settings, direct, records),
                   urls=PublicUrls(settings, store))


def services() -> Services:
    return current_app.extensions["gateway"]
