"""SQLite record store (the embedded default).

WAL mode and a busy timeout make it safe for several gunicorn workers and threads: each thread
keeps its own connection, writers queue on SQLite's lock instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from gateway import errors
from gateway.media.lifecycle import VISIBLE, Status
from gateway.media.records import (
    IdempotentAnswer,
    MediaRecord,
    Page,
    SavedResponse,
    UsageCount,
    UsageDeltas,
    checked_update,
    decode_cursor,
    encode_cursor,
    held_of,
    merge_deltas,
    usage_deltas,
)
from gateway.media.records.quota import HELD, Held, QuotaLimits, check
from gateway.sqlite_db import Connections, write_transaction

T = TypeVar("T")
_HELD_SQL = ", ".join(f"'{status.value}'" for status in sorted(HELD))
_VISIBLE_SQL = ", ".join(f"'{status.value}'" for status in sorted(VISIBLE))

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS media (
    media_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    project_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at TEXT NOT NULL,
    s3_key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    expires_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS media_visible
    ON media (tenant, project_id, created_at, media_id) WHERE status IN ({_VISIBLE_SQL});
CREATE INDEX IF NOT EXISTS media_pending ON media (expires_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS media_stored ON media (created_at) WHERE status = 'stored';
CREATE INDEX IF NOT EXISTS media_pending_by_owner ON media (tenant, owner)
    WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    project_id TEXT NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_by_scope ON reservations (tenant, project_id);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    status INTEGER,
    body TEXT,
    fingerprint TEXT,
    PRIMARY KEY (scope, key)
);
"""


# Created once with the counts of the records already there (a store older than the counters).
USAGE_SCHEMA = """
CREATE TABLE usage (
    tenant TEXT NOT NULL,
    project_id TEXT NOT NULL,
    file_type TEXT NOT NULL,
    status TEXT NOT NULL,
    files INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (tenant, project_id, file_type, status)
)
"""
USAGE_BACKFILL = """
INSERT INTO usage (tenant, project_id, file_type, status, files, bytes)
SELECT tenant, project_id, json_extract(body, '$.file_type'), status, COUNT(*),
       COALESCE(SUM(json_extract(body, '$.size')), 0)
FROM media GROUP BY tenant, project_id, json_extract(body, '$.file_type'), status
"""


def _apply_usage(
    conn: sqlite3.Connection, tenant: str, project_id: str, deltas: UsageDeltas
) -> None:
    conn.executemany(
        "INSERT INTO usage (tenant, project_id, file_type, status, files, bytes)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, project_id, file_type, status)"
        " DO UPDATE SET files = files + excluded.files, bytes = bytes + excluded.bytes",
        [(tenant, project_id, ft, st, files, size) for (ft, st), (files, size) in deltas.items()],
    )


def _create_usage(conn: sqlite3.Connection) -> None:
    exists = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'"
    if conn.execute(exists).fetchone() is not None:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute(exists).fetchone() is None:  # another process may have been first
            conn.execute(USAGE_SCHEMA)
            conn.execute(USAGE_BACKFILL)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteRecordStore:
    def __init__(
        self,
        path: str,
        *,
        limits: QuotaLimits = QuotaLimits(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.limits = limits
        self.clock = clock
        self._schema_ready = False
        self._connections = Connections(path, self._ensure_schema)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        if not self._schema_ready:
            conn.executescript(SCHEMA)
            _create_usage(conn)
            self._schema_ready = True

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            with self._connections.use() as conn:
                return fn(conn)
        except sqlite3.Error as exc:
            raise errors.RecordStoreError() from exc  # the cause is logged, never sent

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._run(lambda conn: write_transaction(conn, fn))

    def create_schema(self) -> None:
        def create(conn: sqlite3.Connection) -> None:
            conn.executescript(SCHEMA)
            _create_usage(conn)

        self._run(create)

    def check(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1 FROM media LIMIT 1").fetchall())

    @staticmethod
    def _row(r: MediaRecord) -> tuple[Any, ...]:
        return (
            r.media_id,
            r.tenant,
            r.project_id,
            r.owner,
            r.created_at,
            r.s3_key,
            r.status.value,
            r.version,
            r.expires_at,
            json.dumps(r.to_dict()),
        )

    # -- quotas -----------------------------------------------------------------------------------
    def _held(self, conn: sqlite3.Connection, tenant: str, project_id: str | None) -> Held:
        """What a project (or, with None, the whole tenant) holds now: records and live
        reservations, read inside the write transaction that is about to add to it."""
        scope, args = " WHERE tenant = ?", [tenant]
        if project_id is not None:
            scope += " AND project_id = ?"
            args.append(project_id)
        files, size = conn.execute(
            "SELECT COALESCE(SUM(files), 0), COALESCE(SUM(bytes), 0) FROM usage"  # noqa: S608
            f"{scope} AND status IN ({_HELD_SQL})",
            args,
        ).fetchone()
        r_files, r_size = conn.execute(
            "SELECT COALESCE(SUM(files), 0), COALESCE(SUM(bytes), 0) FROM reservations"  # noqa: S608
            f"{scope} AND expires_at > ?",
            [*args, self.clock()],
        ).fetchone()
        return Held(files + r_files, size + r_size)

    def _check_quota(
        self, conn: sqlite3.Connection, tenant: str, project_id: str, grew: Held
    ) -> None:
        if self.limits.active and grew.grows:
            check(
                self.limits,
                project=self._held(conn, tenant, project_id),
                tenant=self._held(conn, tenant, None),
                project_id=project_id,
            )

    def _reserved(self, conn: sqlite3.Connection, reservation: str) -> tuple[str, str, Held]:
        row = conn.execute(
            "SELECT tenant, project_id, files, bytes FROM reservations WHERE reservation_id = ?",
            (reservation,),
        ).fetchone()
        return ("", "", Held()) if row is None else (row[0], row[1], Held(row[2], row[3]))

    def reserve(
        self, reservation: str, *, tenant: str, project_id: str, files: int, bytes: int,
        expires_at: float,
    ) -> None:  # fmt: skip
        if not self.limits.active:
            return

        def add(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO reservations (reservation_id, tenant, project_id, files, bytes,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (reservation_id) DO UPDATE"
                " SET files = files + excluded.files, bytes = bytes + excluded.bytes,"
                " expires_at = excluded.expires_at",
                (reservation, tenant, project_id, files, bytes, expires_at),
            )
            self._check_quota(conn, tenant, project_id, Held(files, bytes))

        self._transaction(add)

    def end_reservation(self, reservation: str) -> None:
        self._run(
            lambda conn: conn.execute(
                "DELETE FROM reservations WHERE reservation_id = ?", (reservation,)
            )
        )

    def recount_ledgers(self) -> list[tuple[str, str, Held]]:
        return []  # quotas are checked against the counters and reservations in one transaction

    def end_expired_reservations(self, *, now: float, limit: int) -> int:
        return int(
            self._run(
                lambda conn: (
                    conn.execute(
                        "DELETE FROM reservations WHERE reservation_id IN (SELECT reservation_id"
                        " FROM reservations WHERE expires_at <= ? LIMIT ?)",
                        (now, limit),
                    ).rowcount
                )
            )
        )

    # -- records -------------------------------------------------------------------------------
    def create_many(
        self,
        records: Sequence[MediaRecord],
        *,
        answer: IdempotentAnswer | None = None,
        reservation: str | None = None,
        replacing: Sequence[MediaRecord] = (),
    ) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            for old in replacing:
                gone = conn.execute(
                    "DELETE FROM media WHERE media_id = ? AND version = ?",
                    (old.media_id, old.version),
                )
                if gone.rowcount != 1:
                    raise errors.RecordChanged()
            conn.executemany(
                "INSERT INTO media (media_id, tenant, project_id, owner, created_at, s3_key,"
                " status, version, expires_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [self._row(r) for r in records],
            )
            released = ("", "", Held())
            if reservation is not None:
                released = self._reserved(conn, reservation)
                conn.execute("DELETE FROM reservations WHERE reservation_id = ?", (reservation,))
            for (tenant, project_id), deltas in merge_deltas(records, replacing).items():
                _apply_usage(conn, tenant, project_id, deltas)
                grew = held_of(deltas)
                if released[:2] == (tenant, project_id):
                    grew = grew + -released[2]
                self._check_quota(conn, tenant, project_id, grew)
            if answer is not None:
                response = answer.response
                conn.execute(
                    "UPDATE idempotency SET status = ?, body = ?, fingerprint = ?, expires_at = ?"
                    " WHERE scope = ? AND key = ?",
                    (
                        response.status,
                        json.dumps(response.body),
                        response.fingerprint,
                        answer.expires_at,
                        answer.scope,
                        answer.key,
                    ),
                )

        try:
            self._transaction(insert)
        except errors.RecordStoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise errors.RecordExists() from exc.__cause__
            raise

    def get(self, media_id: str) -> MediaRecord:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT body FROM media WHERE media_id = ?", (media_id,)
            ).fetchone()
        )
        if row is None:
            raise errors.MediaNotFound()
        return MediaRecord.from_dict(json.loads(row[0]))

    def list_media(
        self,
        *,
        tenant: str,
        project_id: str,
        cursor: str | None,
        limit: int,
        status: Status | None = None,
    ) -> Page:
        # _VISIBLE_SQL comes from the Status enum, never from input.
        sql = (
            "SELECT body FROM media WHERE tenant = ? AND project_id = ?"  # noqa: S608
            f" AND status IN ({_VISIBLE_SQL})"
        )
        args: list[Any] = [tenant, project_id]
        if status is not None:
            sql += " AND status = ?"
            args.append(status.value)
        if cursor:
            created_at, media_id = decode_cursor(cursor)
            sql += " AND (created_at, media_id) < (?, ?)"
            args += [created_at, media_id]
        sql += " ORDER BY created_at DESC, media_id DESC LIMIT ?"
        args.append(limit + 1)
        rows = self._run(lambda conn: conn.execute(sql, args).fetchall())
        items = [MediaRecord.from_dict(json.loads(row[0])) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor(items[-1].created_at, items[-1].media_id)
        return Page(items, next_cursor)

    def delete(self, media_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT body FROM media WHERE media_id = ?", (media_id,)).fetchone()
            if row is None:
                return
            old = MediaRecord.from_dict(json.loads(row[0]))
            conn.execute("DELETE FROM media WHERE media_id = ?", (media_id,))
            _apply_usage(conn, old.tenant, old.project_id, usage_deltas(old, None))

        self._transaction(delete)

    def update(self, record: MediaRecord, *, expected: MediaRecord) -> MediaRecord | None:
        new = checked_update(expected, record)

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE media SET status = ?, version = ?, expires_at = ?, body = ?"
                " WHERE media_id = ? AND version = ?",
                (
                    new.status.value,
                    new.version,
                    new.expires_at,
                    json.dumps(new.to_dict()),
                    new.media_id,
                    expected.version,
                ),
            )
            if cursor.rowcount != 1:
                return False
            # ``expected`` is what was stored: the version matched.
            deltas = usage_deltas(expected, new)
            _apply_usage(conn, new.tenant, new.project_id, deltas)
            self._check_quota(conn, new.tenant, new.project_id, held_of(deltas))
            return True

        return new if self._transaction(update) else None

    def usage(self, *, tenant: str, project_id: str) -> list[UsageCount]:
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT file_type, status, files, bytes FROM usage WHERE tenant = ?"
                " AND project_id = ? AND files != 0 ORDER BY file_type, status",
                (tenant, project_id),
            ).fetchall()
        )
        return [UsageCount(ft, Status(st), files, size) for ft, st, files, size in rows]

    def expired_pending(self, *, now: str, limit: int) -> list[MediaRecord]:
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT body FROM media WHERE status = 'pending' AND expires_at < ?"
                " ORDER BY expires_at LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [MediaRecord.from_dict(json.loads(row[0])) for row in rows]

    def stalled(self, *, created_before: str, limit: int) -> list[MediaRecord]:
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT body FROM media WHERE status = 'stored' AND created_at < ?"
                " ORDER BY created_at LIMIT ?",
                (created_before, limit),
            ).fetchall()
        )
        return [MediaRecord.from_dict(json.loads(row[0])) for row in rows]

    def count_pending(self, *, tenant: str, owner: str, at_most: int) -> int:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM media WHERE status = 'pending' AND tenant = ?"
                " AND owner = ? LIMIT ?)",
                (tenant, owner, at_most + 1),
            ).fetchone()
        )
        return int(row[0])

    # -- idempotency -------------------------------------------------------------------------
    def claim(
        self, scope: str, key: str, *, now: float, lock_timeout: float, ttl: float
    ) -> SavedResponse | None:
        def claim(conn: sqlite3.Connection) -> SavedResponse | None:
            row = conn.execute(
                "SELECT claimed_at, expires_at, status, body, fingerprint FROM idempotency"
                " WHERE scope = ? AND key = ?",
                (scope, key),
            ).fetchone()
            if row is not None and row[1] > now:
                claimed_at, _, status, body, fingerprint = row
                if status is not None:
                    return SavedResponse(status, json.loads(body), fingerprint)
                if claimed_at + lock_timeout >= now:
                    raise errors.IdempotencyInProgress()
            conn.execute(
                "INSERT OR REPLACE INTO idempotency (scope, key, claimed_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (scope, key, now, now + ttl),
            )
            return None

        return self._transaction(claim)

    def release(self, scope: str, key: str) -> None:
        self._run(
            lambda conn: conn.execute(
                "DELETE FROM idempotency WHERE scope = ? AND key = ? AND status IS NULL",
                (scope, key),
            )
        )
