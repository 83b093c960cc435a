"""Where the bytes of a part wait until the part is whole: memory for a fast upload, a file in
the node's staging directory for a slow one, within the node's memory budget.

Why: S3 wants parts of 5 MiB or more, and an upload that arrives at a phone's pace fills one in
tens of seconds. Held in memory, 200 such uploads held 2.3 GiB (10.6-12.4 MiB each: their part
buffers and 1 MiB read buffers; docs/benchmarks.md). On disk they hold a file each and nearly no
memory; the kernel's page cache keeps the recent bytes, and keeps them outside the heap, where
memory pressure can write them out instead of killing the worker. A fast upload fills a part in
a second or less: writing it to disk and reading it back would only cost CPU, so it keeps the
in-memory path measured before (docs/design.md, "Slow uploads").

``PartFiller`` decides per part. A writer's first bytes go into a probe
(``PROBE_BYTES``); when they come at least as fast as ``fast_rate`` the part is filled in a
part buffer, else in a staged file. Each next part is decided by how fast the part before it
filled, and a part in memory that falls behind that pace (``BEHIND`` bytes short of it) moves
to disk. A part buffer is only taken while the
``MemoryBudget`` has room for it; otherwise the part is staged whatever its pace.

The staging budget (``Staging.max_bytes``) is soft: past it, new slow parts stay in memory if the
memory budget has room, else they are staged anyway (a full disk is a clean 507; an exhausted
memory is an OOM kill). A write that fails for lack of space raises ``InsufficientStorage``
(507) and the writer's abort removes its files.

Staged files are named ``<pid>-<process start time>-<random>.part``: the sweeper
(gateway/uploads/sweeper.py) removes those whose process is gone (a worker killed with SIGKILL
leaves them), and never a live process's, even one whose PID was reused.

Every call that may block on the disk (creating, writing, reading back a staged file; the
checksums of the bytes written go along) runs through ``Staging.blocking`` (``OffLoop``): in
the gevent worker, where every upload of a worker process is a greenlet of one thread, a write
the kernel holds (dirty-page throttling once a gigabyte or so is staged: 0.5-0.6 s measured)
otherwise stopped every upload of that worker, and the part uploads' socket timeouts then
fired late, all at once (docs/design.md, "Slow uploads").
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar, cast

from crc32c import crc32c

from gateway import errors
from gateway.metrics import BODY_MEMORY_PEAK, BODY_READ_WAITS, STAGED_BYTES
from gateway.storage.buffers import PartBuffers
from gateway.storage.integrity import MD5, Sums, sums, sums_of

log = logging.getLogger(__name__)
T = TypeVar("T")
KiB = 1024
UNLIMITED = 1 << 62
# A writer's first bytes, held to learn its pace. A slow client's backlog in the socket (the
# gateway's own lag under load) can make it look fast; the pace rule below corrects that within
# a fraction of a second, so the probe stays small (a 1 MiB probe held 1 MiB per upload on a
# saturated node and did not tell them apart any better).
PROBE_BYTES = 256 * KiB
BEHIND = 1024 * KiB  # a part in memory this far behind the fast pace moves to disk
READ_BLOCK = 256 * KiB  # a staged part is read back for its upload in blocks of this size
SUFFIX = ".part"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class MemoryBudget:
    """The bytes one worker process holds for bodies in flight: read buffers and parts.

    Reads wait for room (``reserve_read``): the socket is then simply not read, TCP's window
    closes and the client pauses; nothing is refused. Parts never wait (``try_part``): a part
    that does not fit is staged on disk instead. Parts may take at most ``limit - read_share``,
    so reads always have ``read_share`` among themselves; a read never asks for more than that
    (``read_cap``), and a reader waiting holds no read bytes (it gave back its last read before
    asking again). Hence no reader waits on another that waits: whoever holds read bytes is
    working on them and gives them back soon.
    """

    def __init__(self, limit: int, *, read_share: int | None = None) -> None:
        self.limit = limit
        self.read_share = max(1, limit // 4 if read_share is None else min(read_share, limit))
        self.held = 0
        self.parts = 0
        self.peak = 0
        self.waits = 0  # reads that had to wait for room (back-pressure applied)
        self._room = threading.Condition()

    @property
    def read_cap(self) -> int:
        return self.read_share

    def reserve_read(self, size: int, *, timeout: float | None = None) -> int:
        """Wait until ``size`` bytes (at most ``read_cap``) fit; the bytes granted. A timeout
        (the body's own deadline) ends the wait with what fits then (at least one byte)."""
        size = max(1, min(size, self.read_cap))
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._room:
            if self.held + size > self.limit:
                self.waits += 1
                BODY_READ_WAITS.inc()
            while self.held + size > self.limit:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    size = max(1, self.limit - self.held)
                    break
                self._room.wait(left)
            self._take(size)
        return size

    def try_part(self, size: int) -> bool:
        """Take ``size`` bytes for a part if parts may hold that much more now."""
        with self._room:
            if self.parts + size > self.limit - self.read_share or self.held + size > self.limit:
                return False
            self.parts += size
            self._take(size)
        return True

    def _take(self, size: int) -> None:
        self.held += size
        if self.held > self.peak:
            self.peak = self.held
            if self.limit < UNLIMITED:
                BODY_MEMORY_PEAK.set(self.peak)

    def release(self, size: int, *, part: bool = False) -> None:
        if size <= 0:
            return
        with self._room:
            self.held -= size
            if part:
                self.parts -= size
            self._room.notify_all()


def unlimited() -> MemoryBudget:
    return MemoryBudget(UNLIMITED, read_share=UNLIMITED // 4)


# -- process identity (for the sweeper) ------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the
    PID it names one process for good (a reused PID has another start time). None: no such
    process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return "?"
    return raw[raw.rindex(b")") + 2 :].split()[19].decode()


def process_tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_start_time(pid) or '0'}"


def owner_alive(name: str) -> bool | None:
    """Whether the process that staged the file ``name`` still runs; None: not a staged name."""
    if not name.endswith(SUFFIX):
        return None
    pid, _, rest = name.partition("-")
    started, _, _ = rest.partition("-")
    if not pid.isdigit() or not started:
        return None
    now = _start_time(int(pid))
    return now is not None and now in ("?", started)


# -- blocking calls -------------------------------------------------------------------------------
class Blocking(Protocol):
    def __call__(self, fn: Callable[..., T], /, *args: Any) -> T: ...


class OffLoop:
    """Runs a call that may block (file I/O) where it stops no one else: on one of gevent's
    native threads (its hub's thread pool) when this process's threads are greenlets, i.e. in
    gunicorn's gevent worker; in place anywhere else (a thread of its own already, as under
    gthread or in the tests). The caller's greenlet waits for the result; the others run.

    ``native``: None decides by whether gevent has patched ``threading`` (checked at the first
    call, after gunicorn's worker has patched it); True or False forces the choice (tests)."""

    def __init__(self, native: bool | None = None) -> None:
        self._native = native

    @property
    def native(self) -> bool:
        if self._native is None:
            self._native = _gevent_threads()
        return self._native

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> T:
        if not self.native:
            return fn(*args)
        import gevent

        return cast(T, gevent.get_hub().threadpool.apply(fn, args))


def _gevent_threads() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("threading"))


# -- parts -----------------------------------------------------------------------------------------
class StagedReader:
    """A staged file read back for its upload: blocks of ``READ_BLOCK`` read through
    ``blocking`` into one buffer of the reader's, handed out in the sizes asked for (the HTTP
    client asks 16 KiB at a time: one thread handoff per block, not per 16 KiB). The buffer is
    allocated here, on the loop's thread: blocks allocated by the pool's threads came from
    their own malloc arenas, which kept 0.4 MiB of resident memory per upload in flight
    (200 slow uploads, bench/slow.py)."""

    def __init__(self, file: io.FileIO, blocking: Blocking) -> None:
        self._file = file
        self._blocking = blocking
        self._buffer = bytearray(READ_BLOCK)
        self._filled = 0
        self._at = 0

    def read(self, size: int = -1) -> bytes:
        if self._at >= self._filled:
            with memoryview(self._buffer) as view:
                self._filled = self._blocking(self._file.readinto, view) or 0
            self._at = 0
        end = self._filled if size < 0 else min(self._filled, self._at + size)
        data = bytes(memoryview(self._buffer)[self._at : end])
        self._at = end
        return data

    def close(self) -> None:
        self._buffer = bytearray()
        self._file.close()


class FileBody:
    """A staged part as a request body: opened again for each attempt (a retry starts over)."""

    def __init__(self, path: Path, size: int, blocking: Blocking | None = None) -> None:
        self.path = path
        self.size = size
        self._blocking = blocking or OffLoop(native=False)

    def __len__(self) -> int:
        return self.size

    def open(self) -> StagedReader:
        return StagedReader(self._blocking(io.FileIO, self.path, "rb"), self._blocking)


Body = bytes | bytearray | FileBody


class Part(Protocol):
    size: int  # bytes in the part so far

    def write(self, data: memoryview) -> None: ...

    def body(self) -> Body:
        """Its bytes to send (a full buffer as it is, a staged file, a short part copied)."""

    def sums(self, mode: str, *, with_crc32c: bool = True) -> Sums:
        """The checksums its request carries (gateway/storage/integrity.py)."""

    def read(self) -> bytes:
        """All its bytes, in memory (small files, tus tails and sniffing only)."""

    def release(self) -> None:
        """Memory back to the pool and the budget, or the file removed; idempotent."""


class MemoryPart:
    def __init__(self, buffers: PartBuffers, budget: MemoryBudget, *, counted: bool) -> None:
        self._buffer: bytearray | None = buffers.take()
        self._buffers = buffers
        self._budget = budget
        self._counted = counted
        self.size = 0

    @property
    def buffer(self) -> bytearray:
        assert self._buffer is not None, "released"
        return self._buffer

    def write(self, data: memoryview) -> None:
        self.buffer[self.size : self.size + len(data)] = data
        self.size += len(data)

    def body(self) -> Body:
        if self.size == len(self.buffer):
            return self.buffer  # sent as it is (botocore does not copy a bytearray)
        return self.read()

    def sums(self, mode: str, *, with_crc32c: bool = True) -> Sums:
        with memoryview(self.buffer)[: self.size] as view:
            return sums(view, mode, with_crc32c=with_crc32c)

    def read(self) -> bytes:
        return bytes(memoryview(self.buffer)[: self.size])

    def release(self) -> None:
        if self._buffer is None:
            return
        self._buffers.give(self._buffer)
        self._buffer = None
        if self._counted:
            self._budget.release(self._buffers.size, part=True)


class BytesPart:
    """A short part already copied out (a file smaller than the probe)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)

    def write(self, data: memoryview) -> None:
        raise TypeError("a BytesPart is complete")

    def body(self) -> Body:
        return self._data

    def sums(self, mode: str, *, with_crc32c: bool = True) -> Sums:
        return sums(self._data, mode, with_crc32c=with_crc32c)

    def read(self) -> bytes:
        return self._data

    def release(self) -> None:
        self._data = b""


class StagedPart:
    """A part in a file of the staging directory; its checksums computed as the bytes arrive
    (its CRC32C, and its MD5 when the store's integrity mode sends Content-MD5)."""

    def __init__(self, staging: Staging) -> None:
        self._staging = staging
        self.path = staging.new_path()
        self.size = 0
        self._crc = 0
        self._md5 = hashlib.md5(usedforsecurity=False) if staging.integrity == MD5 else None
        self._file: IO[bytes] | None = None
        self._released = False
        try:
            self._file = staging.blocking(staging.opener, self.path)
        except OSError as exc:
            self.release()
            raise _translate(exc) from None

    def write(self, data: memoryview) -> None:
        assert self._file is not None and not self._released
        try:
            self._staging.blocking(self._write, self._file, data)
        except OSError as exc:
            raise _translate(exc) from None
        self.size += len(data)
        self._staging.add(len(data))

    def _write(self, file: IO[bytes], data: memoryview) -> None:
        """Off the loop (``Staging.blocking``): the bytes to the file, and their checksums."""
        written = 0
        while written < len(data):
            # a raw file may take fewer bytes than it is given
            written += file.write(data[written:]) or 0
        self._crc = crc32c(data, self._crc)
        if self._md5 is not None:
            self._md5.update(data)

    def _closed(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as exc:
                raise _translate(exc) from None

    def body(self) -> Body:
        self._closed()
        return FileBody(self.path, self.size, self._staging.blocking)

    def sums(self, mode: str, *, with_crc32c: bool = True) -> Sums:
        if mode == MD5 and self._md5 is None:
            # staged for another mode than the store's (not how open_storage builds them)
            return sums(self.read(), mode, with_crc32c=with_crc32c)
        return sums_of(
            int(self._crc) if with_crc32c else None,
            self._md5.digest() if mode == MD5 and self._md5 is not None else None,
        )

    def read(self) -> bytes:
        self._closed()
        return self._staging.blocking(self.path.read_bytes)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            self._closed()
        except errors.GatewayError:
            pass
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            log.warning("could not remove staged part %s; the sweeper will", self.path)
        self._staging.add(-self.size)


def _translate(exc: OSError) -> errors.GatewayError:
    if exc.errno in NO_SPACE:
        return errors.InsufficientStorage()
    return errors.StorageError("The staging directory failed; nothing was kept.")


def _open_exclusive(path: Path) -> IO[bytes]:
    return open(path, "xb", buffering=0)


class Staging:
    """The node's staging directory: parts of slow uploads, one file each, counted against a
    soft byte budget (per worker process, like the memory budget)."""

    def __init__(
        self,
        directory: Path | str,
        max_bytes: int,
        *,
        opener: Callable[[Path], IO[bytes]] = _open_exclusive,
        integrity: str = MD5,
        blocking: Blocking | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        # the S3 stores' GATEWAY_S3_INTEGRITY: with md5, each staged part's MD5 is kept as it fills
        self.integrity = integrity
        self.blocking: Blocking = blocking or OffLoop()  # where the file calls run
        self.opener = opener
        self.bytes = 0
        self._lock = threading.Lock()
        self._made = False

    def new_path(self) -> Path:
        if not self._made:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._made = True
        return self.directory / f"{process_tag()}-{secrets.token_hex(8)}{SUFFIX}"

    def add(self, size: int) -> None:
        with self._lock:
            self.bytes += size
        STAGED_BYTES.inc(size)

    @property
    def over_budget(self) -> bool:
        return self.bytes >= self.max_bytes

    def files(self) -> Iterator[Path]:
        if self.directory.is_dir():
            yield from sorted(self.directory.iterdir())

    def orphans(self) -> Iterator[Path]:
        """Staged files whose process is gone (a killed worker's)."""
        for path in self.files():
            if owner_alive(path.name) is False:
                yield path


class PartSpace:
    """What a writer fills parts from: the pool of part buffers, the budget, the staging
    directory (None: every part in memory, as before) and the pace that counts as fast."""

    def __init__(
        self,
        budget: MemoryBudget,
        staging: Staging | None,
        *,
        fast_rate: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.staging = staging
        self.fast_rate = fast_rate
        self.clock = clock
        self._pools: dict[int, PartBuffers] = {}
        self._lock = threading.Lock()

    def buffers(self, size: int, keep: int) -> PartBuffers:
        with self._lock:
            pool = self._pools.get(size)
            if pool is None:
                pool = self._pools[size] = PartBuffers(size, keep=keep)
            return pool

    def memory_part(self, pool: PartBuffers) -> MemoryPart | None:
        if not self.budget.try_part(pool.size):
            return None
        return MemoryPart(pool, self.budget, counted=True)

    def part(self, pool: PartBuffers, *, fast: bool) -> Part:
        staging = self.staging
        if staging is None:
            if self.budget.try_part(pool.size):
                return MemoryPart(pool, self.budget, counted=True)
            return MemoryPart(pool, self.budget, counted=False)  # nowhere else to go
        if fast or staging.over_budget:
            part = self.memory_part(pool)
            if part is not None:
                return part
        return StagedPart(staging)


class PartFiller:
    """Arriving bytes cut into parts of ``part_size``; ``write`` returns the parts it filled
    (the caller sends them, then releases each). See the module's docstring for the choice of
    memory or disk."""

    def __init__(self, space: PartSpace, pool: PartBuffers) -> None:
        self.space = space
        self.pool = pool
        self.part_size = pool.size
        self.current: Part | None = None
        self._started = 0.0  # when the current part (or the probe) took its first byte
        self._fast: bool | None = None  # the pace of the part before: None while probing
        self._probe: bytearray | None = None
        self._probe_counted = False

    @property
    def filled(self) -> int:
        """Bytes past the last whole part."""
        if self._probe is not None:
            return len(self._probe)
        return self.current.size if self.current is not None else 0

    def _fill_time(self) -> float:
        return self.part_size / self.space.fast_rate if self.space.fast_rate else float("inf")

    def write(self, data: bytes | bytearray | memoryview) -> list[Part]:
        full: list[Part] = []
        view = memoryview(data)
        if self._fast is None and self.space.staging is not None and self.space.fast_rate:
            view = self._probing(view)
        while view:
            if self.current is None:
                self.current = self.space.part(self.pool, fast=self._fast is not False)
                self._started = self.space.clock()
            elif isinstance(self.current, MemoryPart) and self._stalled():
                self._to_disk()
            part = self.current
            taken = min(self.part_size - part.size, len(view))
            part.write(view[:taken])
            view = view[taken:]
            if part.size == self.part_size:
                elapsed = self.space.clock() - self._started
                self._fast = elapsed <= self._fill_time()
                full.append(part)
                self.current = None
        return full

    def _stalled(self) -> bool:
        """The part in memory fills slower than ``fast_rate``: ``BEHIND`` bytes short of that
        pace (a slow client taken for fast by its backlog is found within about 0.3 s)."""
        if self.space.staging is None or not self.space.fast_rate or self.current is None:
            return False
        elapsed = self.space.clock() - self._started
        return elapsed * self.space.fast_rate > self.current.size + BEHIND

    def _probing(self, view: memoryview) -> memoryview:
        """Hold the first bytes until their pace is known; the bytes not held.

        Decided by time: a write that comes once the window (``PROBE_BYTES`` at ``fast_rate``)
        has passed finds the upload slow before any of its bytes are held, so a slow upload's
        probe holds at most what arrived within the window, and only until its next write.
        ``PROBE_BYTES`` arriving within the window make it fast."""
        now = self.space.clock()
        if self._probe is None:
            self._probe, self._started = bytearray(), now
            self._probe_counted = self.space.budget.try_part(PROBE_BYTES)
            if not self._probe_counted:
                self._fast = False  # no room in memory even for the probe: to disk
                self._probe = None
                return view
        elif now - self._started > PROBE_BYTES / self.space.fast_rate:
            self._decide(fast=False)
            return view
        probe = self._probe
        taken = min(PROBE_BYTES - len(probe), len(view))
        probe += view[:taken]
        if len(probe) < PROBE_BYTES:
            return view[taken:]  # all of it taken
        self._decide(fast=True)
        return view[taken:]

    def _decide(self, *, fast: bool) -> None:
        """The probe's bytes become the first part's first bytes, in memory or on disk."""
        assert self._probe is not None
        self._fast = fast
        self.current = self.space.part(self.pool, fast=fast)  # its pace counted from the probe's
        self.current.write(memoryview(self._probe))
        self._release_probe()

    def _release_probe(self) -> None:
        self._probe = None
        if self._probe_counted:
            self._probe_counted = False
            self.space.budget.release(PROBE_BYTES, part=True)

    def _to_disk(self) -> None:
        assert self.space.staging is not None and self.current is not None
        staged = StagedPart(self.space.staging)
        old = self.current
        try:
            assert isinstance(old, MemoryPart)
            with memoryview(old.buffer)[: old.size] as held:
                staged.write(held)
        except BaseException:
            staged.release()
            raise
        old.release()
        self.current = staged
        self._fast = False

    def take(self) -> Part | None:
        """The part being filled (shorter than a part), detached: the caller releases it."""
        if self._probe is not None:
            held = BytesPart(bytes(self._probe))
            self._release_probe()
            return held
        part, self.current = self.current, None
        return part

    def head(self, size: int) -> bytes:
        """The first ``size`` bytes of the part being filled."""
        if self._probe is not None:
            return bytes(self._probe[:size])
        if self.current is None:
            return b""
        if isinstance(self.current, MemoryPart):
            return bytes(memoryview(self.current.buffer)[: min(size, self.current.size)])
        return self.current.read()[:size]

    def discard(self) -> None:
        self._release_probe()
        if self.current is not None:
            part, self.current = self.current, None
            part.release()
