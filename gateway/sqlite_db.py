"""The embedded SQLite files (records, queue): one way to open them and one write transaction.

WAL lets readers go on while one process writes; ``BEGIN IMMEDIATE`` takes the write lock at the
start, so two processes never both read and then fail to upgrade (no SQLITE_BUSY mid-transaction);
``busy_timeout`` makes the other writers wait for it instead of failing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def open_connection(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class Connections:
    """The open connections to one file; each is used by one caller at a time and kept for the
    next. Not ``threading.local``: under gevent that is per greenlet, so every request would
    open a connection (and run its PRAGMAs and schema) and leave it to the garbage collector."""

    def __init__(self, path: str, on_open: Callable[[sqlite3.Connection], None]) -> None:
        self.path = path
        self._on_open = on_open
        self._idle: deque[sqlite3.Connection] = deque()  # append/pop are atomic

    @contextlib.contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = open_connection(self.path)
            self._on_open(conn)
        try:
            yield conn
        finally:
            self._idle.append(conn)


def write_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """``fn`` in one transaction holding the write lock: committed, or rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
        return result
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
