"""The SQLite lease queue (the embedded default); see gateway/queue/__init__.py."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.queue import Message, QueueStats
from gateway.sqlite_db import Connections, write_transaction

T = TypeVar("T")
POLL_SECONDS = 0.2

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue_messages (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS queue_visible ON queue_messages (visible_at);
CREATE TABLE IF NOT EXISTS queue_dead (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    died_at REAL NOT NULL,
    receive_count INTEGER NOT NULL
);
"""


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


class SqliteQueue:
    def __init__(
        self, path: str, *, max_receives: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.max_receives = max_receives
        self.clock = clock
        self._connections = Connections(path, _create_schema)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._connections.use() as conn:
            return write_transaction(conn, fn)

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._connections.use() as conn:
            return conn.execute(sql, args).fetchall()

    def create(self) -> None:
        with self._connections.use() as conn:
            _create_schema(conn)

    def send(self, body: dict[str, Any], *, delay: float = 0) -> None:
        now = self.clock()
        self._execute(
            "INSERT INTO queue_messages (id, body, sent_at, visible_at) VALUES (?, ?, ?, ?)",
            (uuid.uuid4().hex, json.dumps(body), now, now + delay),
        )

    def _take(self, limit: int, visibility: float) -> list[Message]:
        def take(conn: sqlite3.Connection) -> list[Message]:
            now = self.clock()
            # A message received max_receives times without being deleted is dead: move it.
            conn.execute(
                "INSERT INTO queue_dead (id, body, sent_at, died_at, receive_count)"
                " SELECT id, body, sent_at, ?, receive_count FROM queue_messages"
                " WHERE visible_at <= ? AND receive_count >= ?",
                (now, now, self.max_receives),
            )
            conn.execute(
                "DELETE FROM queue_messages WHERE visible_at <= ? AND receive_count >= ?",
                (now, self.max_receives),
            )
            rows = conn.execute(
                "UPDATE queue_messages SET visible_at = ?, receive_count = receive_count + 1,"
                " receipt = lower(hex(randomblob(16)))"
                " WHERE id IN (SELECT id FROM queue_messages WHERE visible_at <= ?"
                " ORDER BY visible_at LIMIT ?)"
                " RETURNING id, body, receipt, receive_count, sent_at",
                (now + visibility, now, limit),
            ).fetchall()
            return [
                Message(
                    id=r[0], body=json.loads(r[1]), receipt=r[2], receive_count=r[3], sent_at=r[4]
                )
                for r in sorted(rows, key=lambda r: r[4])
            ]

        return self._transaction(take)

    def receive(self, *, max_messages: int, wait: float, visibility: float) -> list[Message]:
        deadline = time.monotonic() + wait
        while True:
            messages = self._take(max_messages, visibility)
            if messages or time.monotonic() >= deadline:
                return messages
            time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def delete(self, message: Message) -> None:
        # Only the current lease may delete: a delivery whose lease ran out (and was taken by
        # another worker) must not delete the message from under it.
        self._execute(
            "DELETE FROM queue_messages WHERE id = ? AND receipt = ?", (message.id, message.receipt)
        )

    def retry_later(self, message: Message, *, delay: float) -> None:
        self._execute(
            "UPDATE queue_messages SET visible_at = ? WHERE id = ? AND receipt = ?",
            (self.clock() + delay, message.id, message.receipt),
        )

    def stats(self) -> QueueStats:
        now = self.clock()
        [(visible, in_flight, oldest)] = self._execute(
            "SELECT SUM(visible_at <= ?), SUM(visible_at > ? AND receive_count > 0),"
            " MIN(CASE WHEN visible_at <= ? THEN sent_at END) FROM queue_messages",
            (now, now, now),
        )
        [(dead,)] = self._execute("SELECT COUNT(*) FROM queue_dead")
        return QueueStats(
            visible=int(visible or 0),
            in_flight=int(in_flight or 0),
            dead=int(dead),
            oldest_age=None if oldest is None else now - oldest,
        )

    def dead_letters(self, *, limit: int) -> list[Message]:
        rows = self._execute(
            "SELECT id, body, receive_count, sent_at FROM queue_dead ORDER BY died_at LIMIT ?",
            (limit,),
        )
        return [
            Message(id=r[0], body=json.loads(r[1]), receipt="", receive_count=r[2], sent_at=r[3])
            for r in rows
        ]

    def redrive(self, *, limit: int) -> int:
        def move(conn: sqlite3.Connection) -> int:
            now = self.clock()
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM queue_dead ORDER BY died_at LIMIT ?", (limit,)
                ).fetchall()
            ]
            for message_id in ids:
                conn.execute(
                    "INSERT INTO queue_messages (id, body, sent_at, visible_at)"
                    " SELECT id, body, sent_at, ? FROM queue_dead WHERE id = ?",
                    (now, message_id),
                )
                conn.execute("DELETE FROM queue_dead WHERE id = ?", (message_id,))
            return len(ids)

        return self._transaction(move)
