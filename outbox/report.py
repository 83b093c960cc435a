"""What a sync tells its user: progress bars on a terminal (rich), lines otherwise, or JSON lines.

JSON lines (``--json``), one object per line, each with ``event`` and ``item``:
``started``; ``progress`` (``file``, ``name``, ``sent``, ``total``; at most one per percent);
``stored`` (``files``: the gateway's records); ``done``; ``retry`` (``waitSeconds``,
``error``: the item is ``waiting``); ``interrupted`` (``error``: stopped by Ctrl-C, due again at
once); ``failed`` (``error``); and, with no ``item``, ``waiting`` (``waitSeconds``) and
``offline`` (the gateway cannot be reached: the sync ends).
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from outbox.store import FileEntry, Item, StepEntry


class Reporter(Protocol):
    def item_started(self, item: Item) -> None: ...
    def progress(self, item: Item, entry: FileEntry, sent: int) -> None: ...
    def item_stored(self, item: Item) -> None: ...
    def step_done(self, item: Item, step: StepEntry) -> None: ...
    def item_done(self, item: Item) -> None: ...
    def retry(self, item: Item, delay: float, error: str) -> None: ...
    def interrupted(self, item: Item, error: str) -> None: ...
    def failed(self, item: Item, error: str) -> None: ...
    def waiting(self, seconds: float) -> None: ...
    def offline(self) -> None: ...
    def close(self) -> None: ...


class JsonLines:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._percent: dict[tuple[str, int], int] = {}

    def _emit(self, event: str, **fields: Any) -> None:
        with self._lock:
            self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            self.stream.flush()

    def item_started(self, item: Item) -> None:
        self._emit("started", item=item.id, state=item.state, attempts=item.attempts)

    def progress(self, item: Item, entry: FileEntry, sent: int) -> None:
        percent = 100 if entry.size == 0 else sent * 100 // entry.size
        key = (item.id, entry.position)
        if self._percent.get(key) == percent:
            return
        self._percent[key] = percent
        self._emit(
            "progress", item=item.id, file=entry.position, name=entry.name, sent=sent,
            total=entry.size,
        )  # fmt: skip

    def item_stored(self, item: Item) -> None:
        self._emit("stored", item=item.id, files=[f.record for f in item.files])

    def step_done(self, item: Item, step: StepEntry) -> None:
        self._emit("step", item=item.id, step=step.spec.name, status=step.answer_status,
                   captured=step.captured)  # fmt: skip

    def item_done(self, item: Item) -> None:
        self._emit("done", item=item.id)

    def retry(self, item: Item, delay: float, error: str) -> None:
        self._emit("retry", item=item.id, waitSeconds=round(delay, 3), error=error)

    def interrupted(self, item: Item, error: str) -> None:
        self._emit("interrupted", item=item.id, error=error)

    def failed(self, item: Item, error: str) -> None:
        self._emit("failed", item=item.id, error=error)

    def waiting(self, seconds: float) -> None:
        self._emit("waiting", waitSeconds=round(seconds, 3))

    def offline(self) -> None:
        self._emit("offline")

    def close(self) -> None:
        pass


class Terminal:
    """A bar per file and one for everything on a terminal; plain lines when not a terminal."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.bars = self.console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.bars,
        )
        self._overall = self._progress.add_task("all", total=0)
        self._tasks: dict[tuple[str, int], TaskID] = {}
        self._sent: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._progress.start()

    def _say(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def item_started(self, item: Item) -> None:
        with self._lock:
            for entry in item.files:
                key = (item.id, entry.position)
                if key not in self._tasks:
                    self._tasks[key] = self._progress.add_task(
                        f"{item.id[:8]} {entry.name[:32]}", total=entry.size, completed=0
                    )
                    self._sent[key] = 0
                    total = self._progress.tasks[self._overall].total or 0
                    self._progress.update(self._overall, total=total + entry.size)

    def progress(self, item: Item, entry: FileEntry, sent: int) -> None:
        key = (item.id, entry.position)
        with self._lock:
            if key not in self._tasks:
                return
            delta = sent - self._sent[key]
            self._sent[key] = sent
            self._progress.update(self._tasks[key], completed=sent)
            self._progress.advance(self._overall, delta)

    def item_stored(self, item: Item) -> None:
        urls = ", ".join(str((f.record or {}).get("url")) for f in item.files)
        self._say(f"stored {item.id[:8]}: {urls}")

    def step_done(self, item: Item, step: StepEntry) -> None:
        self._say(f"step   {item.id[:8]} {step.spec.name}: {step.answer_status}")

    def item_done(self, item: Item) -> None:
        self._say(f"done   {item.id[:8]}")

    def retry(self, item: Item, delay: float, error: str) -> None:
        self._say(f"retry  {item.id[:8]} in {delay:.1f} s: {error}")

    def interrupted(self, item: Item, error: str) -> None:
        self._say(f"paused {item.id[:8]}: {error}")

    def failed(self, item: Item, error: str) -> None:
        self._say(f"FAILED {item.id[:8]}: {error}")

    def waiting(self, seconds: float) -> None:
        self._say(f"next attempt in {seconds:.1f} s")

    def offline(self) -> None:
        self._say("the gateway cannot be reached: stopping (sync again, or sync --watch)")

    def close(self) -> None:
        self._progress.stop()
