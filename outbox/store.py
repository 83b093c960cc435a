"""The outbox on disk: ``outbox.db`` (SQLite, WAL) and ``files/<item>/`` (the queued copies).

An item moves ``queuing -> queued -> uploading -> stored -> done``. ``uploading`` means an
attempt is running (a live process holds the item's lease); an attempt that fails, or is
interrupted, leaves it ``waiting`` for its next attempt (``next_attempt_at``); ``failed`` keeps
the last error until ``retry`` puts it back. Every change is one transaction, so a process killed
at any point leaves the item in its last committed state: ``queuing`` items of a dead process
(its copy was never confirmed to the user) are removed when the outbox is next opened, and
``uploading`` items of a dead process become ``waiting``; the next sync resumes them. Who holds an
item is a ``lease.Holder`` (PID, start time, boot id, PID namespace), never a bare PID.

The database is never repaired or recreated behind the user's back: a damaged or locked file is
an error that names it, a full disk is ``NoSpaceLeft``, and nothing is half-written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from outbox.chain import StepSpec, check, named
from outbox.errors import (
    DiskFull,
    InvalidItem,
    NoSpaceLeft,
    NoSuchItem,
    OutboxDamaged,
    OutboxFull,
    OutboxLocked,
)
from outbox.lease import LEASE_TTL, Holder, current

SCHEMA_VERSION = 3
COPY_BLOCK = 1024 * 1024
MAX_SAFE_NAME = 80
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class State(StrEnum):
    QUEUING = "queuing"  # being copied in by a push; not yet the user's
    QUEUED = "queued"  # never tried yet
    UPLOADING = "uploading"  # an attempt is running now (a live process holds the lease)
    WAITING = "waiting"  # an attempt failed or was interrupted; the next is at next_attempt_at
    STORED = "stored"  # every file stored; follow-up steps remain
    DONE = "done"
    FAILED = "failed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUING: frozenset({State.QUEUED}),
    State.QUEUED: frozenset({State.UPLOADING, State.FAILED}),
    # uploading -> uploading: a dead holder's attempt taken over
    State.UPLOADING: frozenset({State.UPLOADING, State.WAITING, State.STORED, State.FAILED}),
    State.WAITING: frozenset({State.UPLOADING, State.FAILED}),
    State.STORED: frozenset({State.DONE, State.FAILED}),
    State.FAILED: frozenset({State.QUEUED, State.STORED}),
    State.DONE: frozenset(),
}
UNFINISHED = (State.QUEUED, State.UPLOADING, State.WAITING, State.STORED)


class Transport(StrEnum):
    FORM = "form"  # all of an item's small files in one POST /api/upload with its key
    TUS = "tus"  # each big file resumably over /api/tus/


@dataclass
class FileEntry:
    position: int
    name: str
    path: Path
    size: int
    sha256: str
    transport: Transport
    tus_url: str | None = None
    sent: int = 0
    record: dict[str, Any] | None = None
    generation: int = 0  # bumped each time its tus upload was gone and a new one started


@dataclass
class StepEntry:
    position: int
    spec: StepSpec
    answer_status: int | None = None
    captured: dict[str, Any] | None = None  # what its answer gave (``spec.capture``)
    answer: str | None = None  # the answer that failed the item, kept

    @property
    def done(self) -> bool:
        return self.answer_status is not None


@dataclass
class Item:
    id: str
    project: str
    fields: list[tuple[str, str]]
    idempotency_key: str
    state: State
    attempts: int
    next_attempt_at: float
    last_error: str | None
    unreachable: bool
    created_at: float
    updated_at: float
    first_sent_at: float | None = None  # when its form POST first went (its key's age)
    holder: Holder | None = None
    lease_renewed_at: float | None = None
    files: list[FileEntry] = field(default_factory=list)
    steps: list[StepEntry] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def captured(self) -> dict[str, dict[str, Any]]:
        """What its done steps captured, by step name."""
        return {s.spec.name: s.captured or {} for s in self.steps if s.done}


@dataclass(frozen=True)
class Incoming:
    """One file for ``push``: the path to copy and the name the gateway is told."""

    path: Path
    name: str


@dataclass(frozen=True)
class StateCount:
    items: int
    files: int
    bytes: int


@dataclass(frozen=True)
class Stats:
    by_state: dict[State, StateCount]
    oldest_unfinished_at: float | None
    outbox_bytes: int
    max_bytes: int | None
    disk_free: int


_SCHEMA = """
CREATE TABLE items (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    fields TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    unreachable INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    lease TEXT,
    lease_renewed_at REAL,
    first_sent_at REAL
);
CREATE INDEX items_due ON items (state, next_attempt_at);
CREATE TABLE files (
    item_id TEXT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    transport TEXT NOT NULL,
    tus_url TEXT,
    sent INTEGER NOT NULL DEFAULT 0,
    record TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (item_id, position)
);
CREATE TABLE steps (
    item_id TEXT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    spec TEXT NOT NULL,
    answer_status INTEGER,
    captured TEXT,
    answer TEXT,
    PRIMARY KEY (item_id, position)
);
"""
# Version 1 held a bare PID (worker_pid): its claims are dropped (as those of a dead process).
_MIGRATE_FROM_1 = """
ALTER TABLE items ADD COLUMN lease TEXT;
ALTER TABLE items ADD COLUMN lease_renewed_at REAL;
ALTER TABLE items ADD COLUMN first_sent_at REAL;
ALTER TABLE files ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
UPDATE items SET state = 'waiting' WHERE state = 'uploading';
ALTER TABLE items DROP COLUMN worker_pid
"""
# Version 2 had steps after the upload only, without captures.
_MIGRATE_FROM_2 = """
ALTER TABLE steps ADD COLUMN captured TEXT;
ALTER TABLE steps ADD COLUMN answer TEXT
"""
_MIGRATIONS = {1: _MIGRATE_FROM_1, 2: _MIGRATE_FROM_2}


def _no_space(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _safe_name(name: str) -> str:
    cleaned = SAFE_NAME.sub("_", name).strip("._") or "file"
    return cleaned[-MAX_SAFE_NAME:]


def _copy_and_hash(
    source: Path, target: Path, on_block: Callable[[], None] = lambda: None
) -> tuple[int, str]:
    """Copy ``source`` to ``target`` (fsynced), hashing what was written, in one pass."""
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as src, target.open("xb") as dst:
        while block := src.read(COPY_BLOCK):
            digest.update(block)
            dst.write(block)
            size += len(block)
            on_block()
        dst.flush()
        os.fsync(dst.fileno())
    return size, digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_json(spec: StepSpec) -> str:
    return json.dumps(
        {"method": spec.method, "url": spec.url, "body": spec.body, "headers": spec.headers,
         "name": spec.name, "capture": spec.capture, "before": spec.before}
    )  # fmt: skip


def _step_from_json(text: str, position: int) -> StepSpec:
    raw = json.loads(text)
    return StepSpec(
        method=raw["method"],
        url=raw["url"],
        body=raw["body"],
        headers=tuple((k, v) for k, v in raw["headers"]),
        # (a version 2 outbox's steps: unnamed, after the upload, capturing nothing)
        name=raw.get("name") or f"step{position}",
        capture=tuple((k, v) for k, v in raw.get("capture", ())),
        before=bool(raw.get("before", False)),
    )


class Outbox:
    """One outbox directory. Thread-safe: one connection, one lock, short transactions."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int | None = None,
        disk_reserve: int = 64 * 1024 * 1024,
        lock_timeout: float = 5.0,
        lease_ttl: float = LEASE_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.db_path = root / "outbox.db"
        self.files_dir = root / "files"
        self.max_bytes = max_bytes
        self.disk_reserve = disk_reserve
        self.clock = clock
        self.lease_ttl = lease_ttl
        self._lock = threading.Lock()
        with self._errors():
            root.mkdir(parents=True, exist_ok=True)
            self.files_dir.mkdir(exist_ok=True)
            self._conn = sqlite3.connect(
                self.db_path, timeout=lock_timeout, isolation_level=None, check_same_thread=False
            )
        try:
            with self._errors():
                self._prepare(lock_timeout)
        except BaseException:
            self._conn.close()
            raise

    # -- opening -------------------------------------------------------------------------------

    def _prepare(self, lock_timeout: float) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout={int(lock_timeout * 1000)}")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise OutboxDamaged(str(self.db_path), check)
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise OutboxDamaged(str(self.db_path), "cannot use write-ahead logging")
            with self._transaction():
                if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version in _MIGRATIONS:
            with self._transaction():
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                while version in _MIGRATIONS:
                    for statement in _MIGRATIONS[version].split(";"):
                        conn.execute(statement)
                    version += 1
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise OutboxDamaged(str(self.db_path), f"unknown schema version {version}")
        conn.execute("PRAGMA synchronous=FULL")
        self._forget_abandoned_pushes()
        self._recover_interrupted()

    def _running(self, lease: str | None, renewed_at: float | None) -> bool:
        """Whether the lease's holder may still be working (``lease.Holder.running``)."""
        if lease is None:
            return False
        holder = Holder.from_text(lease)
        return holder.running(renewed_at=renewed_at or 0.0, now=self.clock(), ttl=self.lease_ttl)

    def _stale(self, state: State) -> list[tuple[str, str | None]]:
        rows = self._conn.execute(
            "SELECT id, lease, lease_renewed_at FROM items WHERE state = ?", (state,)
        ).fetchall()
        return [(item_id, lease) for item_id, lease, at in rows if not self._running(lease, at)]

    def _forget_abandoned_pushes(self) -> None:
        for item_id, lease in self._stale(State.QUEUING):
            with self._transaction():
                gone = self._conn.execute(
                    "DELETE FROM items WHERE id = ? AND state = ? AND lease IS ?",
                    (item_id, State.QUEUING, lease),
                ).rowcount
            if gone == 1:  # else its push ended meanwhile: the copies are the user's item now
                shutil.rmtree(self.files_dir / item_id, ignore_errors=True)

    def _recover_interrupted(self) -> None:
        """An attempt whose process is gone is no longer ``uploading``: it waits, due now."""
        for item_id, lease in self._stale(State.UPLOADING):
            holder = Holder.from_text(lease) if lease else None
            who = f"process {holder.pid} on {holder.host}" if holder else "a process"
            with self._transaction():
                self._conn.execute(
                    "UPDATE items SET state = ?, lease = NULL, lease_renewed_at = NULL,"
                    " last_error = ?, updated_at = ? WHERE id = ? AND state = ? AND lease IS ?",
                    (State.WAITING, f"interrupted: {who} stopped during an attempt",
                     self.clock(), item_id, State.UPLOADING, lease),
                )  # fmt: skip

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            if _no_space(exc):
                raise NoSpaceLeft(str(self.root), str(exc)) from exc
            if isinstance(exc, sqlite3.OperationalError) and (
                "locked" in str(exc) or "busy" in str(exc)
            ):
                raise OutboxLocked(str(self.db_path)) from exc
            if isinstance(exc, sqlite3.DatabaseError):
                raise OutboxDamaged(str(self.db_path), str(exc)) from exc
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the write lock from its start (``BEGIN IMMEDIATE``)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(), self._transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._conn

    # -- push ----------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COALESCE(SUM(size), 0) FROM files").fetchone()[0])

    def push(
        self,
        files: Sequence[Incoming],
        *,
        project: str,
        fields: Sequence[tuple[str, str]] = (),
        steps: Sequence[StepSpec] = (),
        tus_threshold: int,
    ) -> Item:
        """Copy ``files`` in and queue them as one item; the item exists only once it is whole.

        ``steps`` run in their order, those marked ``before`` first; ``fields`` may name their
        captures. A chain that could not run (``chain.check``) is refused before anything."""
        if not files:
            raise InvalidItem("nothing to push: give at least one file")
        steps = named(steps)
        check(steps, files=len(files), fields=fields)
        sizes = []
        for incoming in files:
            if not incoming.path.is_file():
                raise InvalidItem(f"{incoming.path} is not a readable file")
            sizes.append(incoming.path.stat().st_size)
        self._check_space(sum(sizes))
        item_id = uuid.uuid4().hex
        now = self.clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO items (id, project, fields, idempotency_key, state, next_attempt_at,"
                " lease, lease_renewed_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    project,
                    json.dumps(list(fields)),
                    f"outbox-{item_id}",
                    State.QUEUING,
                    now,
                    current().text(),
                    now,
                    now,
                    now,
                ),
            )
        item_dir = self.files_dir / item_id
        renewed = [now]

        def renew_while_copying() -> None:  # a long copy must not look abandoned elsewhere
            if self.clock() - renewed[0] > self.lease_ttl / 4:
                renewed[0] = self.clock()
                self.renew([item_id])

        try:
            with self._errors():
                item_dir.mkdir()
                copied = []
                for position, incoming in enumerate(files):
                    target = item_dir / f"{position}-{_safe_name(incoming.name)}"
                    size, sha256 = _copy_and_hash(incoming.path, target, renew_while_copying)
                    transport = Transport.TUS if size > tus_threshold else Transport.FORM
                    copied.append((position, incoming.name, target, size, sha256, transport))
                _fsync_dir(item_dir)
                _fsync_dir(self.files_dir)
            with self._write() as conn:
                conn.executemany(
                    "INSERT INTO files (item_id, position, name, path, size, sha256, transport)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (item_id, pos, name, str(path.relative_to(self.root)), size, sha, tr)
                        for pos, name, path, size, sha, tr in copied
                    ],
                )
                conn.executemany(
                    "INSERT INTO steps (item_id, position, spec) VALUES (?, ?, ?)",
                    [(item_id, pos, _step_json(spec)) for pos, spec in enumerate(steps)],
                )
                self._set_state(
                    conn, item_id, State.QUEUING, State.QUEUED, lease=None, lease_renewed_at=None
                )
        except BaseException:
            # The copies go first: on a full disk, deleting the row needs the space they held.
            # Should the delete fail all the same, the next open forgets this dead push.
            shutil.rmtree(item_dir, ignore_errors=True)
            with (
                contextlib.suppress(OutboxLocked, OutboxDamaged, NoSpaceLeft),
                self._write() as conn,
            ):
                conn.execute("DELETE FROM items WHERE id = ?", (item_id,))
            raise
        return self.get(item_id)

    def _check_space(self, needed: int) -> None:
        if self.max_bytes is not None:
            used = self.used_bytes()
            if used + needed > self.max_bytes:
                raise OutboxFull(needed, used, self.max_bytes)
        free = shutil.disk_usage(self.root).free
        if free - needed < self.disk_reserve:
            raise DiskFull(needed, free, self.disk_reserve)

    # -- reading -------------------------------------------------------------------------------

    def _load(self, conn: sqlite3.Connection, rows: list[Any]) -> list[Item]:
        items = []
        for row in rows:
            item = Item(
                id=row[0],
                project=row[1],
                fields=[(k, v) for k, v in json.loads(row[2])],
                idempotency_key=row[3],
                state=State(row[4]),
                attempts=row[5],
                next_attempt_at=row[6],
                last_error=row[7],
                unreachable=bool(row[8]),
                created_at=row[9],
                updated_at=row[10],
                first_sent_at=row[11],
                holder=Holder.from_text(row[12]) if row[12] else None,
                lease_renewed_at=row[13],
            )
            for f in conn.execute(
                "SELECT position, name, path, size, sha256, transport, tus_url, sent, record,"
                " generation FROM files WHERE item_id = ? ORDER BY position",
                (item.id,),
            ):
                item.files.append(
                    FileEntry(
                        position=f[0],
                        name=f[1],
                        path=self.root / f[2],
                        size=f[3],
                        sha256=f[4],
                        transport=Transport(f[5]),
                        tus_url=f[6],
                        sent=f[7],
                        record=json.loads(f[8]) if f[8] else None,
                        generation=f[9],
                    )
                )
            for s in conn.execute(
                "SELECT position, spec, answer_status, captured, answer FROM steps"
                " WHERE item_id = ? ORDER BY position",
                (item.id,),
            ):
                item.steps.append(
                    StepEntry(
                        s[0], _step_from_json(s[1], s[0]), s[2],
                        json.loads(s[3]) if s[3] is not None else None, s[4],
                    )
                )  # fmt: skip
            items.append(item)
        return items

    _COLUMNS = (
        "id, project, fields, idempotency_key, state, attempts, next_attempt_at, last_error,"
        " unreachable, created_at, updated_at, first_sent_at, lease, lease_renewed_at"
    )

    def get(self, item_id: str) -> Item:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {self._COLUMNS} FROM items WHERE id = ?",  # noqa: S608 (constant)
                (item_id,),
            ).fetchall()
            items = self._load(conn, rows)
        if not items:
            raise NoSuchItem(item_id)
        return items[0]

    def find(self, prefix: str) -> Item:
        """An item by its id or an unambiguous prefix of it (as git takes commits)."""
        with self._read() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM items WHERE id LIKE ? ESCAPE '\\' AND state != ?",
                    (
                        prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",
                        State.QUEUING,
                    ),
                )
            ]
        if len(ids) != 1:
            raise NoSuchItem(prefix if not ids else f"{prefix} (ambiguous: {len(ids)} match)")
        return self.get(ids[0])

    def items(self, states: Sequence[State] | None = None) -> list[Item]:
        wanted = tuple(states) if states is not None else tuple(s for s in State if s != "queuing")
        marks = ", ".join("?" for _ in wanted)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {self._COLUMNS} FROM items WHERE state IN ({marks})"  # noqa: S608
                " ORDER BY created_at, id",
                wanted,
            ).fetchall()
            return self._load(conn, rows)

    def due(self, now: float) -> list[Item]:
        """Unfinished items whose next attempt is due and that no live process is working on."""
        marks = ", ".join("?" for _ in UNFINISHED)
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {self._COLUMNS} FROM items"  # noqa: S608 (constant)
                f" WHERE state IN ({marks}) AND next_attempt_at <= ? ORDER BY created_at, id",
                (*UNFINISHED, now),
            ).fetchall()
            free = [r for r in rows if not self._running(r[12], r[13])]
            return self._load(conn, free)

    def running(self, item: Item) -> bool:
        """Whether a live process is working on ``item`` (as last read)."""
        return item.holder is not None and item.holder.running(
            renewed_at=item.lease_renewed_at or 0.0, now=self.clock(), ttl=self.lease_ttl
        )

    def next_attempt_at(self) -> float | None:
        marks = ", ".join("?" for _ in UNFINISHED)
        with self._read() as conn:
            value = conn.execute(
                f"SELECT MIN(next_attempt_at) FROM items WHERE state IN ({marks})",  # noqa: S608
                UNFINISHED,
            ).fetchone()[0]
        return None if value is None else float(value)

    def has_unreachable(self) -> bool:
        marks = ", ".join("?" for _ in UNFINISHED)
        with self._read() as conn:
            return (
                conn.execute(
                    f"SELECT 1 FROM items WHERE unreachable = 1 AND state IN ({marks})"  # noqa: S608
                    " LIMIT 1",
                    UNFINISHED,
                ).fetchone()
                is not None
            )

    # -- sync's changes ------------------------------------------------------------------------

    def _set_state(
        self,
        conn: sqlite3.Connection,
        item_id: str,
        old: State,
        new: State,
        **columns: Any,
    ) -> None:
        if new not in TRANSITIONS[old]:
            raise ValueError(f"an item cannot go from {old} to {new}")
        sets = ", ".join(f"{name} = ?" for name in ("state", "updated_at", *columns))
        changed = conn.execute(
            f"UPDATE items SET {sets} WHERE id = ? AND state = ?",  # noqa: S608 (column names)
            (new, self.clock(), *columns.values(), item_id, old),
        ).rowcount
        if changed != 1:
            raise ValueError(f"item {item_id} is no longer {old}")

    def claim(self, item: Item) -> bool:
        """Take ``item`` for this process (compare-and-set on its state and lease); False if a
        live process holds it. A stale lease (its holder no longer runs) is taken over."""
        me = current().text()
        with self._write() as conn:
            row = conn.execute(
                "SELECT lease, lease_renewed_at, state, attempts FROM items WHERE id = ?",
                (item.id,),
            ).fetchone()
            if row is None or (row[2], row[3]) != (item.state, item.attempts):
                return False  # changed since it was read (another process worked on it)
            lease, renewed_at = row[0], row[1]
            if lease is not None and lease != me and self._running(lease, renewed_at):
                return False
            conn.execute(
                "UPDATE items SET lease = ?, lease_renewed_at = ? WHERE id = ?",
                (me, self.clock(), item.id),
            )
            if item.state in (State.QUEUED, State.WAITING, State.UPLOADING):
                self._set_state(conn, item.id, item.state, State.UPLOADING)
                item.state = State.UPLOADING
            item.holder, item.lease_renewed_at = current(), self.clock()
            return True

    def renew(self, item_ids: Sequence[str]) -> None:
        """This process still works on these items (see ``lease``)."""
        with self._write() as conn:
            conn.executemany(
                "UPDATE items SET lease_renewed_at = ? WHERE id = ? AND lease = ?",
                [(self.clock(), item_id, current().text()) for item_id in item_ids],
            )

    def release(self, item: Item) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE items SET lease = NULL, lease_renewed_at = NULL WHERE id = ? AND lease = ?",
                (item.id, current().text()),
            )
        item.holder = item.lease_renewed_at = None

    def sending(self, item: Item) -> None:
        """The item's form POST is about to go: the first time, its key's age starts now."""
        with self._write() as conn:
            conn.execute(
                "UPDATE items SET first_sent_at = COALESCE(first_sent_at, ?) WHERE id = ?",
                (self.clock(), item.id),
            )
            item.first_sent_at = conn.execute(
                "SELECT first_sent_at FROM items WHERE id = ?", (item.id,)
            ).fetchone()[0]

    def restart_file(self, item: Item, entry: FileEntry) -> None:
        """Its tus upload is gone: forget it; the next upload gets a new creation key."""
        with self._write() as conn:
            conn.execute(
                "UPDATE files SET tus_url = NULL, sent = 0, generation = generation + 1"
                " WHERE item_id = ? AND position = ?",
                (item.id, entry.position),
            )
        entry.tus_url, entry.sent, entry.generation = None, 0, entry.generation + 1

    def set_tus_url(self, item: Item, entry: FileEntry, url: str | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE files SET tus_url = ?, sent = 0 WHERE item_id = ? AND position = ?",
                (url, item.id, entry.position),
            )
        entry.tus_url = url
        entry.sent = 0

    def set_sent(self, item: Item, entry: FileEntry, sent: int) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE files SET sent = ? WHERE item_id = ? AND position = ?",
                (sent, item.id, entry.position),
            )
        entry.sent = sent

    def file_stored(self, item: Item, entries: Sequence[tuple[FileEntry, dict[str, Any]]]) -> None:
        with self._write() as conn:
            for entry, record in entries:
                conn.execute(
                    "UPDATE files SET record = ?, sent = size WHERE item_id = ? AND position = ?",
                    (json.dumps(record), item.id, entry.position),
                )
        for entry, record in entries:
            entry.record = record
            entry.sent = entry.size

    def mark_stored(self, item: Item) -> None:
        with self._write() as conn:
            self._set_state(conn, item.id, State.UPLOADING, State.STORED)
        item.state = State.STORED

    def step_done(
        self, item: Item, step: StepEntry, status: int, captured: dict[str, Any] | None = None
    ) -> None:
        """The step succeeded: its status and its captures, in one transaction (a step done
        is never sent again, so what it captured must never be missing)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE steps SET answer_status = ?, captured = ?, answer = NULL"
                " WHERE item_id = ? AND position = ?",
                (status, json.dumps(captured or {}), item.id, step.position),
            )
        step.answer_status, step.captured, step.answer = status, captured or {}, None

    def mark_done(self, item: Item) -> None:
        with self._write() as conn:
            self._set_state(conn, item.id, State.STORED, State.DONE, last_error=None, unreachable=0)
        item.state = State.DONE

    def schedule_retry(
        self, item: Item, *, delay: float, error: str, unreachable: bool, counts: bool = True
    ) -> None:
        """The attempt ended without finishing: the next is due in ``delay`` seconds. An item
        whose files were not all stored goes ``waiting``; ``counts``: a failed attempt (an
        interruption by the user is not one)."""
        now = self.clock()
        with self._write() as conn:
            if item.state == State.UPLOADING:
                self._set_state(conn, item.id, State.UPLOADING, State.WAITING)
            conn.execute(
                "UPDATE items SET attempts = attempts + ?, next_attempt_at = ?, last_error = ?,"
                " unreachable = ?, updated_at = ? WHERE id = ?",
                (int(counts), now + delay, error, int(unreachable), now, item.id),
            )
        if item.state == State.UPLOADING:
            item.state = State.WAITING
        item.attempts += int(counts)
        item.next_attempt_at = now + delay
        item.last_error = error

    def mark_failed(
        self, item: Item, error: str, *, step: StepEntry | None = None, answer: str | None = None
    ) -> None:
        """Failed for good; ``step``: the step whose ``answer`` refused it (kept with it)."""
        with self._write() as conn:
            if step is not None:
                conn.execute(
                    "UPDATE steps SET answer = ? WHERE item_id = ? AND position = ?",
                    (answer, item.id, step.position),
                )
            self._set_state(
                conn,
                item.id,
                item.state,
                State.FAILED,
                last_error=error,
                unreachable=0,
                attempts=item.attempts + 1,
            )
        item.state = State.FAILED
        if step is not None:
            step.answer = answer

    def wake_unreachable(self) -> int:
        """The gateway answers again: what waited for it is due now."""
        marks = ", ".join("?" for _ in UNFINISHED)
        with self._write() as conn:
            return conn.execute(
                f"UPDATE items SET next_attempt_at = ? WHERE unreachable = 1"  # noqa: S608
                f" AND state IN ({marks})",
                (self.clock(), *UNFINISHED),
            ).rowcount

    # -- the user's commands -------------------------------------------------------------------

    def retry(self, item: Item) -> Item:
        """A failed item goes back to the queue (or to its steps, if its files were stored)."""
        if item.state != State.FAILED:
            raise InvalidItem(f"item {item.id} is {item.state}, not failed")
        back = State.STORED if all(f.record for f in item.files) else State.QUEUED
        with self._write() as conn:
            self._set_state(
                conn, item.id, State.FAILED, back, attempts=0, next_attempt_at=self.clock()
            )
        return self.get(item.id)

    def purge_done(self) -> tuple[int, int]:
        """Forget done items and delete their copies: (items, bytes)."""
        done = self.items([State.DONE])
        for item in done:
            with self._write() as conn:
                conn.execute("DELETE FROM items WHERE id = ? AND state = ?", (item.id, State.DONE))
            shutil.rmtree(self.files_dir / item.id, ignore_errors=True)
        return len(done), sum(item.size for item in done)

    def stats(self) -> Stats:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT i.state, COUNT(DISTINCT i.id), COUNT(f.position), COALESCE(SUM(f.size), 0)"
                " FROM items i LEFT JOIN files f ON f.item_id = i.id"
                " WHERE i.state != ? GROUP BY i.state",
                (State.QUEUING,),
            ).fetchall()
            marks = ", ".join("?" for _ in UNFINISHED)
            oldest = conn.execute(
                f"SELECT MIN(created_at) FROM items WHERE state IN ({marks})",  # noqa: S608
                UNFINISHED,
            ).fetchone()[0]
            used = conn.execute("SELECT COALESCE(SUM(size), 0) FROM files").fetchone()[0]
        by_state: dict[State, StateCount] = {
            s: StateCount(0, 0, 0) for s in State if s != State.QUEUING
        }
        for state, items, files, size in rows:
            by_state[State(state)] = StateCount(items, files, size)
        return Stats(
            by_state=by_state,
            oldest_unfinished_at=oldest,
            outbox_bytes=int(used),
            max_bytes=self.max_bytes,
            disk_free=shutil.disk_usage(self.root).free,
        )
