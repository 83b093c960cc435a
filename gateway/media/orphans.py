"""A durable journal of objects that a rollback could not delete.

Local to the gateway host and independent of both stores (either may be the thing that
failed). Appends are line-atomic under an exclusive lock, so several workers can share it;
the ``sweep`` command deletes what it lists and rewrites it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO


class OrphanJournal:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self, mode: str) -> Iterator[IO[str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, mode) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def add(self, key: str, reason: str) -> None:
        line = json.dumps({"key": key, "reason": reason, "at": datetime.now(UTC).isoformat()})
        with self._locked("a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def list_keys(self) -> list[str]:
        if not self.path.exists():
            return []
        with self._locked("r") as handle:
            return [json.loads(line)["key"] for line in handle if line.strip()]

    def forget(self, keys: set[str]) -> None:
        if not self.path.exists():
            return
        with self._locked("r+") as handle:
            kept = [line for line in handle if line.strip() and json.loads(line)["key"] not in keys]
            handle.seek(0)
            handle.truncate()
            handle.writelines(kept)
            handle.flush()
            os.fsync(handle.fileno())
