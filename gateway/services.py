"""The gateway's long-lived collaborators, built once per process from the settings. No Flask."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from gateway.config import Settings
from gateway.media.events import Announcer, LogPublisher, Publisher, QueuePublisher
from gateway.media.orphans import OrphanJournal
from gateway.media.records import DirectUpload, MediaStore, TusUpload, open_records
from gateway.media.records.quota import QuotaLimits
from gateway.media.service import MediaService
from gateway.media.urls import PublicUrls
from gateway.processing.scanner import ClamdScanner, Scanner
from gateway.queue import Queue, open_queue
from gateway.storage import ObjectStore, Storage, open_storage
from gateway.storage.resumable import ResumableUploads
from gateway.uploads.direct import DirectOptions, DirectUploadService
from gateway.uploads.form import FormOptions, UploadService
from gateway.uploads.formdata import FormLimits
from gateway.uploads.idempotency import Idempotency
from gateway.uploads.pending import PartsRemover, PendingUploads, UploadKind
from gateway.uploads.s3_events import EventReceiver, store_prefixes
from gateway.uploads.sweeper import Sweeper
from gateway.uploads.tickets import TicketKeys, TicketPolicy, Tickets
from gateway.uploads.tus import TusOptions, TusService

if TYPE_CHECKING:  # the processing worker's libraries (Pillow, webhooks): not in web workers
    from gateway.processing.deliveries import Deliveries
    from gateway.processing.pipeline import Pipeline


@dataclass
class Services:
    settings: Settings
    storage: Storage
    records: MediaStore  # also the IdempotencyStore
    journal: OrphanJournal
    queue: Queue
    announcer: Announcer
    uploads: UploadService
    direct: DirectUploadService | None  # None when the store cannot presign
    urls: PublicUrls
    sweeper: Sweeper
    tus: TusService | None = None
    # the deliveries' own queue (None: no webhook nor SNS topic configured)
    webhook_queue: Queue | None = None

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
        queue: Queue | None = None,
        webhook_queue: Queue | None = None,
        publisher: Publisher | None = None,
    ) -> Services:
        storage = storage or open_storage(settings)
        records = records or open_records(settings)
        queue = queue or open_queue(settings)
        if settings.delivers and webhook_queue is None:
            webhook_queue = open_queue(settings, settings.effective_webhook_queue_url)
        journal = OrphanJournal(settings.orphan_journal)
        announcer = Announcer(
            publisher
            or QueuePublisher(
                queue,
                processing=settings.processing,
                webhooks=webhook_queue if settings.webhook_url else None,
                sns=webhook_queue if settings.sns_topic_arn else None,
                then=LogPublisher(),
            )
        )
        quarantined = storage.quarantine is not None
        direct_options = DirectOptions(
            allowed_types=settings.allowed_types,
            max_filename_chars=settings.max_filename_chars,
            max_bytes=settings.direct_max_bytes,
            max_files=settings.direct_max_files,
            max_batch_bytes=settings.direct_max_batch_bytes,
            max_pending=settings.direct_max_pending,
            single_put_max=settings.direct_single_put_max,
            part_size=settings.direct_part_size,
            part_urls_per_page=settings.direct_part_urls_per_page,
            url_ttl=settings.direct_url_ttl,
            s3_verifies_sha256=settings.s3_verifies_sha256,
            processing=settings.processing,
        )
        direct = (
            DirectUploadService(
                direct_options,
                storage.direct,
                records,
                announcer,
                quarantined=quarantined,
            )
            if storage.direct is not None
            else None
        )
        tus = (
            TusService(
                TusOptions(
                    max_bytes=settings.tus_max_bytes,
                    expiry_seconds=settings.tus_expiry_seconds,
                    lock_seconds=settings.tus_lock_seconds,
                    max_checksum_chunk=settings.tus_max_checksum_chunk,
                    min_part_size=settings.direct_part_size,
                    max_pending=settings.direct_max_pending,
                    allowed_types=settings.allowed_types,
                    max_filename_chars=settings.max_filename_chars,
                    read_size=settings.read_size,
                ),
                ResumableUploads(storage.chunks),
                records,
                announcer,
                quarantined=quarantined,
            )
            if storage.chunks is not None
            else None
        )
        expiring: dict[UploadKind, PartsRemover] = {}
        if direct is not None:
            expiring[DirectUpload] = direct
        if tus is not None:
            expiring[TusUpload] = tus
        return cls(
            tus=tus,
            settings=settings,
            storage=storage,
            records=records,
            journal=journal,
            queue=queue,
            webhook_queue=webhook_queue,
            announcer=announcer,
            uploads=UploadService(
                form_options(settings),
                storage.landing,
                records,
                journal,
                announcer,
                quarantined=quarantined,
            ),
            direct=direct,
            urls=PublicUrls(settings, storage.objects),
            sweeper=Sweeper(
                store=storage.objects,
                listing=storage.listing,
                records=records,
                journal=journal,
                pending=PendingUploads(records, announcer, settings.direct_max_pending),
                uploads=expiring,
                quarantine=storage.holding,  # the quarantine, or where failed media wait
                queue=queue if settings.processing else None,
                keep_infected=settings.keep_infected,
                staging=storage.space.staging if storage.space is not None else None,
            ),
        )

    @cached_property
    def media(self) -> MediaService:
        return MediaService(
            records=self.records,
            store=self.store,
            holding=self.storage.holding,
            journal=self.journal,
            announcer=self.announcer,
        )

    @cached_property
    def idempotency(self) -> Idempotency:
        s = self.settings
        return Idempotency(
            self.records, ttl=s.idempotency_ttl, lock_timeout=s.idempotency_lock_timeout
        )

    @cached_property
    def tickets(self) -> Tickets:
        s = self.settings
        return Tickets(
            TicketKeys(s.ticket_key, s.ticket_tenant_key_map),
            ticket_policy(s),
            store=self.records,
            lock_timeout=s.idempotency_lock_timeout,
        )

    @cached_property
    def scanner(self) -> Scanner | None:
        s = self.settings
        return ClamdScanner(s.clamd_url, timeout=s.clamd_timeout) if s.clamd_url else None

    @cached_property
    def pipeline(self) -> Pipeline:
        from gateway.processing.derive import AudioOptions, DeriveOptions
        from gateway.processing.pipeline import Pipeline, PipelineOptions

        s = self.settings
        return Pipeline(
            records=self.records,
            store=self.storage.objects,
            quarantine=self.storage.quarantine,
            holding=self.storage.holding,
            scanner=self.scanner,
            announcer=self.announcer,
            options=PipelineOptions(
                derive=DeriveOptions(
                    thumbnail_sizes=s.thumbnail_sizes,
                    max_pixels=s.max_image_pixels,
                    strip_gps=s.strip_gps,
                    audio=AudioOptions(
                        waveform_points=s.audio_waveform_points,
                        max_duration=s.audio_max_duration,
                        max_samples=s.audio_max_samples,
                        max_decode_seconds=s.audio_max_decode_seconds,
                        opus_min_bytes=s.audio_opus_min_bytes,
                        opus_mono_bit_rate=s.audio_opus_mono_bit_rate,
                        opus_stereo_bit_rate=s.audio_opus_stereo_bit_rate,
                    ),
                ),
                sandbox_memory=s.sandbox_memory,
                sandbox_timeout=s.sandbox_timeout,
                keep_infected=s.keep_infected,
                allowed_types=s.allowed_types,
            ),
            webhook_queue=self.webhook_queue,
            direct=self.direct,
            storage_prefixes=self.event_prefixes,
        )

    @property
    def event_prefixes(self) -> tuple[str, ...]:
        """Where the gateway's keys live in the bucket, as bucket notifications name them: the
        media prefix and the quarantine's."""
        s = self.settings
        storage_url = urlparse(s.storage_url)
        if storage_url.scheme != "s3":
            return ("",)
        return store_prefixes(storage_url.path, urlparse(s.effective_quarantine_url).path)

    @cached_property
    def events(self) -> EventReceiver:
        """Bucket notifications pushed to POST /api/s3-events (a Ceph RGW topic)."""
        queue = self.queue if self.settings.processing else None
        return EventReceiver(self.direct, queue, self.event_prefixes)

    @cached_property
    def deliveries(self) -> Deliveries | None:
        """The deliveries lane's handler (None: no webhook nor SNS topic configured)."""
        from gateway.processing.deliveries import Deliveries
        from gateway.processing.sns import SnsPublisher, make_sns_client
        from gateway.processing.webhooks import WebhookSender

        s = self.settings
        if not s.delivers:
            return None
        webhook = (
            WebhookSender(s.webhook_url, s.webhook_secret, timeout=s.webhook_timeout)
            if s.webhook_url
            else None
        )
        topic = SnsPublisher(make_sns_client(s), s.sns_topic_arn) if s.sns_topic_arn else None
        return Deliveries(webhook, topic)

    def provision(self) -> None:
        """Create what the backends need: the record schema, the bucket, the queues."""
        self.records.create_schema()
        if self.storage.provision is not None:
            self.storage.provision()
        if self.storage.direct is not None and self.settings.cors_origins:
            self.storage.direct.allow_browsers(self.settings.cors_origins)
        if self.webhook_queue is not None:
            self.webhook_queue.create()
        if self.settings.processing:
            self.queue.create()
            from gateway.queue.sqs import SqsQueue  # only here: the embedded mode never loads boto3

            if isinstance(self.queue, SqsQueue) and self.storage.direct is not None:
                self.queue.allow_s3(self.storage.direct.bucket)
                self.storage.direct.notify(self.queue.queue_arn())


def form_options(settings: Settings) -> FormOptions:
    return FormOptions(
        limits=FormLimits(
            max_files=settings.max_files,
            max_fields=settings.max_fields,
            max_field_bytes=settings.max_field_bytes,
            max_part_header_bytes=settings.max_part_header_bytes,
        ),
        max_upload_bytes=settings.max_upload_bytes,
        read_size=settings.read_size,
        allowed_types=settings.allowed_types,
        max_filename_chars=settings.max_filename_chars,
        redirect_origins=settings.redirect_origins,
        reservation_seconds=settings.quota_reservation_seconds,
        quotas=QuotaLimits.of(settings).active,
    )


def ticket_policy(settings: Settings) -> TicketPolicy:
    return TicketPolicy(
        max_seconds=settings.ticket_max_seconds,
        leeway=settings.jwt_leeway,
        max_files=settings.max_files,
        max_bytes=settings.max_upload_bytes,
        allowed_types=settings.allowed_types,
        max_fields=settings.max_fields,
        max_field_bytes=settings.max_field_bytes,
        redirect_origins=settings.redirect_origins,
    )
