"""A local directory as the object store (the embedded default).

Bytes go to a hidden temporary file beside the final path and are renamed into place on
commit, so a reader never sees a partial file under a key.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from gateway.errors import StorageError, StorageUnavailable
from gateway.storage import ObjectInfo, PendingUpload, StoredObject
from gateway.storage.keys import media_id_of_key

TEMP_PREFIX = ".partial-"
READ_CHUNK = 1024 * 1024


class LocalObjectWriter:
    def __init__(self, final_path: Path, key: str) -> None:
        self.key = key
        self.bytes_written = 0
        self._final = final_path
        self._temp = final_path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex[:16]}-{final_path.name}")
        self._file = open(self._temp, "xb")  # noqa: SIM115 - open until commit() or abort()
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise StorageError(f"Could not store the file: {exc.strerror}") from exc
        self.bytes_written += len(data)

    def spill(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            raise StorageError(f"Could not store the file: {exc.strerror}") from exc

    def commit(self, *, sha256: str) -> StoredObject:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._temp, self._final)
        except OSError as exc:
            self.abort()
            raise StorageError(f"Could not store the file: {exc.strerror}") from exc
        self._done = True
        return StoredObject(self.key, self.bytes_written)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.close()  # may fail (disk full flushing): the file goes regardless
        except OSError:
            pass
        finally:
            self._temp.unlink(missing_ok=True)


class LocalObjectStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    def open_writer(
        self,
        key: str,
        *,
        content_type: str,
        metadata: dict[str, str],
        content_disposition: str = "",
    ) -> LocalObjectWriter:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return LocalObjectWriter(path, key)
        except OSError as exc:
            raise StorageError(f"Could not store the file: {exc.strerror}") from exc

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"Could not delete the file: {exc.strerror}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def full_key(self, key: str) -> str:
        return key

    def read(self, key: str) -> Iterator[bytes]:
        try:
            with open(self._path(key), "rb") as source:
                while chunk := source.read(READ_CHUNK):
                    yield chunk
        except OSError as exc:
            raise StorageError(f"Could not read the file: {exc.strerror}") from exc

    def path_of(self, key: str) -> Path:
        return self._path(key)

    def is_servable(self, key: str) -> bool:
        if TEMP_PREFIX in key or media_id_of_key(key) is None:
            return False
        try:
            return self._path(key).is_file()
        except ValueError:
            return False

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise StorageUnavailable("The media directory is not writable.")
        except OSError as exc:
            raise StorageUnavailable(f"The media directory is unusable: {exc.strerror}") from exc

    def direct_url(self, key: str) -> str | None:
        return None

    def _walk(self) -> Iterator[tuple[Path, os.stat_result]]:
        if not self.root.is_dir():
            return
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    yield path, path.stat()
                except FileNotFoundError:
                    continue

    def pending_uploads(self) -> Iterator[PendingUpload]:
        for path, stat in self._walk():
            if path.name.startswith(TEMP_PREFIX):
                final_name = path.name[len(TEMP_PREFIX) + 17 :]  # drop ".partial-<16 hex>-"
                yield PendingUpload(
                    key=path.with_name(final_name).relative_to(self.root).as_posix(),
                    upload_id=path.relative_to(self.root).as_posix(),
                    started=datetime.fromtimestamp(stat.st_mtime, UTC),
                )

    def abort_pending(self, upload: PendingUpload) -> None:
        self._path(upload.upload_id).unlink(missing_ok=True)

    def objects(self) -> Iterator[ObjectInfo]:
        for path, stat in self._walk():
            if not path.name.startswith(TEMP_PREFIX):
                yield ObjectInfo(
                    key=path.relative_to(self.root).as_posix(),
                    size=stat.st_size,
                    modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                )


class LocalQuarantine:
    """A second directory, never served (not under the media root nginx and /media/ serve);
    releasing renames the file into the media directory, withholding renames it back."""

    def __init__(self, public: LocalObjectStore, quarantine: LocalObjectStore) -> None:
        self.public = public
        self.store = quarantine

    def release(self, key: str) -> None:
        held, target = self.store.path_of(key), self.public.path_of(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(held, target)
        except FileNotFoundError:
            if not target.is_file():
                raise StorageError("The quarantined file is gone.") from None
        except OSError as exc:
            raise StorageError(f"Could not release the file: {exc.strerror}") from exc

    def withhold(self, key: str) -> None:
        public, held = self.public.path_of(key), self.store.path_of(key)
        try:
            held.parent.mkdir(parents=True, exist_ok=True)
            os.replace(public, held)
        except FileNotFoundError:
            return  # withheld already (a redelivered job), or gone: nothing is served
        except OSError as exc:
            raise StorageError(f"Could not withhold the file: {exc.strerror}") from exc
