"""SQLite record store (the embedded default).

WAL mode and a busy timeout make it safe for several gunicorn workers and threads: each thread
keeps its own connection, writers queue on SQLite's lock instead of failing.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Sequence

from ..errors import Conflict, RecordExists, RecordNotFound, RecordStoreError
from . import MediaRecord, Page, SavedResponse, decode_cursor, encode_cursor

SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    media_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    project_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    s3_key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS media_by_project
    ON media (tenant, project_id, status, created_at, media_id);
CREATE INDEX IF NOT EXISTS media_pending ON media (expires_at) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    status INTEGER,
    body TEXT,
    PRIMARY KEY (scope, key)
);
"""


class SqliteRecordStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._schema_ready = False

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
        if not self._schema_ready:
            conn.executescript(SCHEMA)
            self._schema_ready = True
        return conn

    def _run(self, fn):
        try:
            return fn(self._connect())
        except sqlite3.Error as exc:
            raise RecordStoreError() from exc  # the cause is logged, never sent

    def create_schema(self) -> None:
        self._run(lambda conn: conn.executescript(SCHEMA))

    def check(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1 FROM media LIMIT 1").fetchall())

    def create_many(self, records: Sequence[MediaRecord]) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO media (media_id, tenant, project_id, created_at, s3_key,"
                    " status, expires_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r.media_id, r.tenant, r.project_id, r.created_at, r.s3_key, r.status,
                      r.expires_at, json.dumps(r.to_dict())) for r in records])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        try:
            self._run(insert)
        except RecordStoreError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise RecordExists() from exc.__cause__
            raise

    def get(self, media_id: str) -> MediaRecord:
        row = self._run(lambda conn: conn.execute(
            "SELECT body FROM media WHERE media_id = ?", (media_id,)).fetchone())
        if row is None:
            raise RecordNotFound()
        return MediaRecord.from_dict(json.loads(row[0]))

    def list(self, *, tenant: str, project_id: str, cursor: str | None, limit: int) -> Page:
        sql = "SELECT body FROM media WHERE tenant = ? AND project_id = ? AND status = 'stored'"
        args: list = [tenant, project_id]
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
        self._run(lambda conn: conn.execute("DELETE FROM media WHERE media_id = ?", (media_id,)))

    def replace(self, record: MediaRecord, *, expected_status: str) -> bool:
        cursor = self._run(lambda conn: conn.execute(
            "UPDATE media SET status = ?, expires_at = ?, body = ? WHERE media_id = ? AND status = ?",
            (record.status, record.expires_at, json.dumps(record.to_dict()), record.media_id,
             expected_status)))
        return cursor.rowcount == 1

    def expired_pending(self, *, now: str, limit: int) -> list[MediaRecord]:
        rows = self._run(lambda conn: conn.execute(
            "SELECT body FROM media WHERE status = 'pending' AND expires_at < ?"
            " ORDER BY expires_at LIMIT ?", (now, limit)).fetchall())
        return [MediaRecord.from_dict(json.loads(row[0])) for row in rows]

    # -- idempotency -------------------------------------------------------------------------
    def claim(self, scope: str, key: str, *, now: float, lock_timeout: float,
              ttl: float) -> SavedResponse | None:
        def claim(conn: sqlite3.Connection) -> SavedResponse | None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT claimed_at, expires_at, status, body FROM idempotency"
                    " WHERE scope = ? AND key = ?", (scope, key)).fetchone()
                if row is not None and row[1] > now:
                    claimed_at, _, status, body = row
                    if status is not None:
                        conn.execute("COMMIT")
                        return SavedResponse(status, json.loads(body))
                    if claimed_at + lock_timeout >= now:
                        conn.execute("COMMIT")
                        raise Conflict("A request with this Idempotency-Key is still running.",
                                       code="idempotency_in_progress")
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (scope, key, claimed_at, expires_at)"
                    " VALUES (?, ?, ?, ?)", (scope, key, now, now + ttl))
                conn.execute("COMMIT")
                return None
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        return self._run(claim)

    def save(self, scope: str, key: str, response: SavedResponse, *, now: float,
             ttl: float) -> None:
        self._run(lambda conn: conn.execute(
            "UPDATE idempotency SET status = ?, body = ?, expires_at = ?"
            " WHERE scope = ? AND key = ?",
            (response.status, json.dumps(response.body), now + ttl, scope, key)))

    def release(self, scope: str, key: str) -> None:
        self._run(lambda conn: conn.execute(
            "DELETE FROM idempotency WHERE scope = ? AND key = ? AND status IS NULL",
            (scope, key)))
