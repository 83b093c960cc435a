"""The part layer under resumable uploads (gateway/storage/resumable.py): small chunk objects and
the parts of a multipart object, behind one protocol, on S3 and on a local directory. Only
``resumable`` calls it; the tus protocol sees upload-shaped calls there, never these.

S3 (as tusd's s3store): the final object is an S3 multipart upload; bytes past the last whole
part wait in a small chunk object (S3 parts other than the last must be at least 5 MiB), so no
upload state lives on one gateway node. Local: parts are files under ``<root>/.tus/`` (a dot
directory: never served), joined on completion. Keys given here are store keys (the S3 store
adds its prefix).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from gateway.errors import StorageError
from gateway.storage.keys import media_id_of_key
from gateway.storage.local import LocalObjectStore

CHUNK_DIR = ".tus"


def chunk_key(media_id: str, name: str) -> str:
    return f"{CHUNK_DIR}/{media_id}/{name}"


def chunk_owner(key: str) -> str | None:
    """The media id whose upload a chunk-area key belongs to; None outside the chunk area."""
    head, _, rest = key.partition("/")
    owner, slash, _ = rest.partition("/")
    return owner if head == CHUNK_DIR and slash and owner else None


class ChunkStore(Protocol):
    def put(self, key: str, data: bytes | bytearray) -> None: ...

    def get(self, key: str) -> bytes: ...

    def read(self, key: str) -> Iterator[bytes]: ...

    def delete(self, key: str) -> None: ...

    def start(
        self, key: str, *, content_type: str, metadata: dict[str, str], content_disposition: str
    ) -> str:
        """Begin the final object; its upload id."""

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | bytearray) -> str:
        """Store part ``number`` (overwriting an earlier try); its ETag. ``data`` is the caller's
        reused buffer: stored before this returns, never kept."""

    def copy_part(self, key: str, upload_id: str, number: int, source: str) -> str:
        """Part ``number`` from a whole object of this store (server-side where possible)."""

    def complete(self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]) -> None: ...

    def abort(self, key: str, upload_id: str) -> None:
        """Idempotent."""

    def put_object(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: dict[str, str],
        content_disposition: str,
    ) -> None: ...


class LocalChunks:
    """Parts as files in ``<root>/.tus/<media id>/parts-<upload id>/`` (in the upload's own
    chunk folder, so the sweeper knows whose they are); completion joins them."""

    def __init__(self, store: LocalObjectStore) -> None:
        self.store = store

    def put(self, key: str, data: bytes | bytearray) -> None:
        writer = self.store.open_writer(key, content_type="", metadata={})
        writer.write(memoryview(data))
        writer.commit(sha256="")

    def get(self, key: str) -> bytes:
        return b"".join(self.read(key))

    def read(self, key: str) -> Iterator[bytes]:
        return self.store.read(key)

    def delete(self, key: str) -> None:
        self.store.delete(key)
        if chunk_owner(key) is not None:
            self._prune(self.store.path_of(key).parent)

    @staticmethod
    def _prune(folder: Path) -> None:
        """Remove an upload's folder once nothing of it is left (never one still in use)."""
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (other chunks, or parts), or gone already

    @staticmethod
    def _parts_dir(key: str, upload_id: str) -> str:
        owner = chunk_owner(key) or media_id_of_key(key)
        if owner is None:
            raise ValueError(f"not an upload's key: {key!r}")
        return chunk_key(owner, f"parts-{upload_id}")

    def start(
        self, key: str, *, content_type: str, metadata: dict[str, str], content_disposition: str
    ) -> str:
        return uuid.uuid4().hex

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes | bytearray) -> str:
        self.put(f"{self._parts_dir(key, upload_id)}/{number:05d}", data)
        return f"local-{number}-{len(data)}"

    def copy_part(self, key: str, upload_id: str, number: int, source: str) -> str:
        target = self.store.path_of(f"{self._parts_dir(key, upload_id)}/{number:05d}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.store.path_of(source), target)
        except OSError as exc:
            raise StorageError(f"Could not copy a part: {exc.strerror}") from exc
        return f"local-{number}"

    def complete(self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]) -> None:
        writer = self.store.open_writer(key, content_type="", metadata={})
        try:
            for number, _ in parts:
                for chunk in self.store.read(f"{self._parts_dir(key, upload_id)}/{number:05d}"):
                    writer.write(chunk)
            writer.commit(sha256="")
        except BaseException:
            writer.abort()
            raise
        self.abort(key, upload_id)

    def abort(self, key: str, upload_id: str) -> None:
        folder = self.store.path_of(f"{self._parts_dir(key, upload_id)}/x").parent
        shutil.rmtree(folder, ignore_errors=True)
        self._prune(folder.parent)

    def put_object(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: dict[str, str],
        content_disposition: str,
    ) -> None:
        self.put(key, data)
