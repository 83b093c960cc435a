"""Presigned uploads straight to the store, and what the store then holds: the capability direct
uploads are built on (gateway/uploads/direct.py). Only the S3 store has it
(gateway/storage/s3_direct.py); ``Storage.direct`` is None elsewhere.

Keys are the gateway's own (the store adds its prefix); ``full_key`` is what a client sees.
Every call that reads one version of an object takes its ETag (``if_match``) and raises
``UploadChanged`` when that version is gone; other failures are ``StorageError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.storage import ObjectHead, PartInfo


@dataclass(frozen=True)
class PresignedRequest:
    url: str
    headers: Mapping[str, str]  # what the client must send with it (they are signed)


@dataclass(frozen=True)
class PresignedPost:
    url: str
    fields: Mapping[str, str]  # the form's fields, before the file


@dataclass(frozen=True)
class PartUrl:
    number: int
    size: int  # the part's exact length, which the URL is bound to
    url: str


class Presigner(Protocol):
    """What direct uploads call: permission handed out, then what the store really received."""

    def full_key(self, key: str) -> str: ...

    def relative_key(self, full_key: str) -> str | None:
        """The gateway's key of a bucket key (None: outside the store's prefix)."""

    def presign_put(
        self, key: str, *, content_type: str, size: int, sha256_b64: str | None, expires_in: int
    ) -> PresignedRequest:
        """A PUT bound to the type, the length and (when given) the SHA-256."""

    def presign_post(
        self, key: str, *, content_type: str, size: int, expires_in: int
    ) -> PresignedPost:
        """A form POST policy bound to the type and the exact length."""

    def presign(
        self, operation: str, key: str, *, expires_in: int, method: str, **params: Any
    ) -> str:
        """A URL for one S3 operation (``upload_part``, ``list_parts``, ...) on ``key``."""

    def presign_parts(
        self, key: str, upload_id: str, parts: list[tuple[int, int]], expires_in: int
    ) -> list[PartUrl]:
        """One UploadPart URL per (number, size)."""

    def start_multipart(
        self, key: str, *, content_type: str, content_disposition: str, metadata: dict[str, str]
    ) -> str:
        """A new multipart upload's id."""

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo] | None:
        """The parts received, or None when the multipart upload no longer exists."""

    def complete_multipart(self, key: str, upload_id: str, parts: list[PartInfo]) -> None: ...

    def multipart_uploads(self, key: str) -> list[str]:
        """The ids of the multipart uploads the store holds for exactly ``key``."""

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Idempotent: an upload that no longer exists is aborted."""

    def head(self, key: str) -> ObjectHead | None: ...

    def reported_sha256(self, key: str, *, if_match: str | None = None) -> str | None:
        """The SHA-256 (hex) the store keeps for the whole object, or None."""

    def read_head(self, key: str, size: int, *, if_match: str | None = None) -> bytes:
        """The first ``size`` bytes."""

    def sha256(self, key: str, *, if_match: str | None = None) -> str:
        """The object's SHA-256 (hex), read through."""

    def copy(
        self,
        source: str,
        target: str,
        *,
        if_match: str,
        content_type: str,
        content_disposition: str,
        metadata: dict[str, str],
    ) -> None:
        """Server-side copy of that version of ``source``, with only these headers."""

    def delete(self, key: str) -> None: ...


class DirectStore(Presigner, Protocol):
    """The store behind direct uploads as provisioning sees it (gateway/services.py)."""

    @property
    def bucket(self) -> str: ...

    def allow_browsers(self, origins: tuple[str, ...]) -> None:
        """CORS: pages on these origins may send the presigned requests themselves."""

    def notify(self, queue_arn: str) -> None:
        """Events of single uploads landing on their staging keys go to the queue."""
