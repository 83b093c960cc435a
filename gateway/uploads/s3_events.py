"""Bucket notifications read as what they mean to the gateway: which direct uploads' objects have
arrived in the store. No Flask, no storage vendor.

Two shapes of the same S3 event record (``{"Records": [...]}``):
- Amazon S3 (and moto), through SQS: ``eventSource`` ``aws:s3``, keys URL-encoded with ``+`` for
  spaces; an ``s3:TestEvent`` message comes first when a configuration is set.
- Ceph RGW, pushed over HTTP by a topic: ``eventSource`` ``ceph:s3``, keys as they are (not
  encoded: ``a b+c`` arrives as such from RGW 16), ``awsRegion`` empty, the request's
  ``metadata`` as a list; some releases name the event ``s3:ObjectCreated:Put`` (RGW 16 and AWS
  say ``ObjectCreated:Put``) or spell ``etag`` for ``eTag``.

An arrival is an ``ObjectCreated`` record for a direct upload's staging key (where its single
PUT/POST URL writes; the gateway's own writes go elsewhere, so they are no news). What arrived is
then checked exactly as ``complete`` checks it (``DirectUploadService.complete_from_event``):
events are hints, never trusted for sizes or checksums, and a duplicate, reordered or foreign one
changes nothing. A multipart upload is completed in S3 by the gateway's ``complete`` only (its
part URLs cannot complete it), so its client calls ``complete`` anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from gateway.queue import Queue
from gateway.storage.keys import parse_key
from gateway.uploads.direct import DirectUploadService

CREATED = ("ObjectCreated:", "s3:ObjectCreated:")


class MalformedEvent(ValueError):
    """A body that is not an S3 event notification."""


def is_s3_event(body: dict[str, Any]) -> bool:
    return "Records" in body or body.get("Event") == "s3:TestEvent"


def created_keys(body: Any) -> list[str]:
    """The bucket keys of the ``ObjectCreated`` records, decoded; raises ``MalformedEvent`` for a
    body that is not shaped as an event notification."""
    if not isinstance(body, dict):
        raise MalformedEvent("The body is not a JSON object.")
    if body.get("Event") == "s3:TestEvent":
        return []
    records = body.get("Records")
    if not isinstance(records, list):
        raise MalformedEvent("Records must be a list.")
    keys = []
    for record in records:
        if not isinstance(record, dict):
            raise MalformedEvent("Each record must be an object.")
        name = record.get("eventName")
        s3 = record.get("s3")
        obj = s3.get("object") if isinstance(s3, dict) else None
        key = obj.get("key") if isinstance(obj, dict) else None
        if not isinstance(name, str) or not isinstance(key, str):
            raise MalformedEvent("Each record needs an eventName and an s3.object.key.")
        if not name.startswith(CREATED):
            continue
        source = str(record.get("eventSource", ""))
        keys.append(key if source.startswith("ceph:") else unquote_plus(key))
    return keys


def relative_key(full: str, prefixes: Sequence[str]) -> str | None:
    """The store key of a bucket key under one of ``prefixes`` (``""``: the bucket's root)."""
    for prefix in prefixes:
        if not prefix:
            return full
        if full.startswith(prefix + "/"):
            return full[len(prefix) + 1 :]
    return None


def arrived_uploads(body: Any, prefixes: Sequence[str]) -> list[str]:
    """The media ids of the direct uploads whose staging objects the event says were created,
    once each, in order. ``prefixes``: where the gateway's keys live in the bucket (the media
    prefix and the quarantine's), an empty one last."""
    found: dict[str, None] = {}
    for full in created_keys(body):
        key = relative_key(full, prefixes)
        media_id, staging = parse_key(key) if key is not None else (None, False)
        if media_id is not None and staging:
            found[media_id] = None
    return list(found)


def store_prefixes(*prefixes: str) -> tuple[str, ...]:
    """``prefixes`` as ``arrived_uploads`` reads them: no slashes around, the empty one last."""
    stripped = [prefix.strip("/") for prefix in prefixes]
    return tuple(sorted(stripped, key=lambda prefix: not prefix))


@dataclass(frozen=True)
class EventReceiver:
    """Bucket notifications pushed to the gateway (a Ceph RGW topic's HTTP push): an event with
    arrivals goes to the processing queue as it came, as S3 sends one to SQS, and the worker
    completes the uploads; with processing off (no worker runs) they are completed here."""

    direct: DirectUploadService | None
    queue: Queue | None  # the processing queue; None when processing is off
    prefixes: tuple[str, ...]

    def receive(self, body: Any) -> list[str]:
        """The arrivals the event names (none: nothing was done); raises ``MalformedEvent``."""
        arrived = arrived_uploads(body, self.prefixes)
        if not arrived or self.direct is None:
            return []
        if self.queue is not None:
            self.queue.send(body)
        else:
            for media_id in arrived:
                self.direct.complete_from_event(media_id)
        return arrived
