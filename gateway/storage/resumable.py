"""Resumable (tus) uploads in storage, shaped like an upload, as tusd's stores are: a writer takes
the bytes that follow the upload's offset and commits them into a new stored state; the last
commit makes the object; finished partial uploads are joined into one; termination removes all.

The tus protocol (gateway/uploads/tus.py) sees none of what follows: how bytes become parts, what
the part size and numbering are, where the bytes past the last whole part wait, how partials are
joined. It keeps the returned ``Stored`` state in its record (a compare-and-set), so any gateway
node goes on from it.

One layout for both stores (tusd's s3store layout): the object is a multipart upload with
parts of a fixed size aligned to offsets (the part at index i holds bytes [i·size, (i+1)·size));
bytes past the last whole part wait in one small tail object until the next write completes a
part. On S3 the parts are S3's (``S3Chunks``); locally they are files (``LocalChunks``), joined at
the end. Part numbers come from the writer's lease ``generation`` (``part_number``), so a write
from a lease that ran out lands beside the next holders' parts instead of on them; every write
to storage first calls the writer's ``guard`` (the lease check).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.config import S3_MAX_PARTS, S3_MIN_PART_SIZE, MiB
from gateway.storage.buffers import PartBuffers
from gateway.storage.chunks import ChunkStore, chunk_key

log = logging.getLogger(__name__)
LEASE_SLOTS = 8
SPARE_BUFFERS = 4  # free part buffers a process keeps per part size
MAX_PARTS = S3_MAX_PARTS // LEASE_SLOTS  # each lease writes its own part numbers


def part_number(index: int, generation: int) -> int:
    """The part number of the part at ``index`` (0-based, by offset) written under lease
    ``generation``: ascending with the index, as completion needs, and distinct for eight leases
    in a row, so a write from a lease that ran out lands beside its successors' parts."""
    return index * LEASE_SLOTS + generation % LEASE_SLOTS + 1


def part_size_for(size: int, *, at_least: int) -> int:
    """A part size (whole MiB, at least ``at_least``) that fits ``size`` in ``MAX_PARTS``."""
    needed = -(-size // MAX_PARTS)
    return max(at_least, -(-needed // MiB) * MiB)


@dataclass(frozen=True)
class CommittedPart:
    """A part the store holds for good: its number in the final object, ETag and size."""

    number: int
    etag: str
    size: int


@dataclass(frozen=True)
class Stored:
    """What storage holds of an upload so far: its parts, the tail past them, and the multipart
    upload the parts belong to (offset = the parts + the tail)."""

    parts: tuple[CommittedPart, ...] = ()
    tail_key: str = ""
    tail_size: int = 0
    upload_id: str = ""

    @property
    def committed(self) -> int:
        return sum(p.size for p in self.parts)


@dataclass(frozen=True)
class Target:
    """Where the finished object goes and how it is served."""

    key: str
    content_type: str
    content_disposition: str
    metadata: dict[str, str]


class ResumableWriter:
    """One request's bytes, from an upload's stored state to the next. ``write`` as they arrive
    (whole parts go to storage once a target is known); ``commit`` the request's end; ``discard``
    what was written for a commit that did not happen.

    The bytes past the last part are copied once, into part buffers reused across requests
    (gateway/storage/buffers.py), and a full one goes to storage as it is."""

    def __init__(
        self,
        uploads: ResumableUploads,
        media_id: str,
        stored: Stored,
        *,
        part_size: int,
        generation: int,
        guard: Callable[[], None],
        target: Target | None,
    ) -> None:
        self._chunks = uploads.chunks
        self.media_id = media_id
        self.before = stored
        self.part_size = part_size
        self.generation = generation
        self.guard = guard
        self.target = target  # None until the type is known: nothing is written to parts
        self._parts = list(stored.parts)
        self._upload_id = stored.upload_id
        self._buffers = uploads.buffers(part_size)
        self._full: list[bytearray] = []  # whole parts not sent yet (the target is not known)
        self._part: bytearray | None = None  # the part being filled
        self._fill = 0
        self._new_tail = ""
        if stored.tail_size:
            guard()
            self.write(self._chunks.get(stored.tail_key))

    def head(self, size: int) -> bytes:
        """The upload's first ``size`` bytes while no part is written (what the type is sniffed
        from); b"" once parts exist."""
        head = bytearray()
        for view in [] if self._parts else self._views():
            head += view[: size - len(head)]
        return bytes(head)

    @property
    def buffered(self) -> int:
        return len(self._full) * self.part_size + self._fill

    def write(self, data: bytes | bytearray) -> None:
        size, view, start = self.part_size, memoryview(data), 0
        while start < len(view):
            if self._part is None:
                self._part, self._fill = self._buffers.take(), 0
            taken = min(size - self._fill, len(view) - start)
            self._part[self._fill : self._fill + taken] = view[start : start + taken]
            self._fill += taken
            start += taken
            if self._fill == size:  # sent at once (its buffer reused) once the target is known
                self._full.append(self._part)
                self._part, self._fill = None, 0
                self._flush(final=False)
        self._flush(final=False)  # parts held until the target was known

    def _flush(self, *, final: bool) -> None:
        if self.target is None:
            return
        while self._full or (final and self._fill and (self._parts or self._upload_id)):
            self.guard()
            if not self._upload_id:
                self._upload_id = self._chunks.start(
                    self.target.key,
                    content_type=self.target.content_type,
                    metadata=self.target.metadata,
                    content_disposition=self.target.content_disposition,
                )
                self.guard()
            short = not self._full  # the last part, shorter than the others
            data: bytes | bytearray = self._held() if short else self._full[0]
            number = part_number(len(self._parts), self.generation)
            etag = self._chunks.upload_part(self.target.key, self._upload_id, number, data)
            self._parts.append(CommittedPart(number, etag, len(data)))
            if short:
                self._give_back()
            else:
                self._buffers.give(self._full.pop(0))

    def _views(self) -> list[memoryview]:
        """The bytes past the parts, in order, in their buffers."""
        views = [memoryview(buffer) for buffer in self._full]
        if self._part is not None:
            views.append(memoryview(self._part)[: self._fill])
        return views

    def _held(self) -> bytes:
        """The bytes past the parts, copied (their buffers go back)."""
        return b"".join(self._views())

    def _give_back(self) -> None:
        for buffer in [*self._full, self._part]:
            if buffer is not None:
                self._buffers.give(buffer)
        self._full, self._part, self._fill = [], None, 0

    def commit(self, *, final: bool, version: int) -> Stored:
        """Write what the request leaves: the whole object (``final``) or the tail, in an object
        named for the record ``version`` the commit will write (never one a concurrent writer
        could share). The state to record; ``release`` the old one once it is recorded."""
        if final and self.target is None:
            raise ValueError("the object's target is needed to finish it")
        self._flush(final=final)
        self.guard()
        if final:
            assert self.target is not None
            if self._parts:
                self._chunks.complete(
                    self.target.key, self._upload_id, [(p.number, p.etag) for p in self._parts]
                )
            else:
                self._chunks.put_object(
                    self.target.key,
                    self._held(),
                    content_type=self.target.content_type,
                    metadata=self.target.metadata,
                    content_disposition=self.target.content_disposition,
                )
        held = self.buffered if not final else 0
        if held:
            self._new_tail = chunk_key(self.media_id, f"pending-{version}")
            self._chunks.put(self._new_tail, self._held())
        self._give_back()
        return Stored(
            parts=tuple(self._parts),
            tail_key=self._new_tail,
            tail_size=held,
            upload_id=self._upload_id,
        )

    def release(self) -> None:
        """After the new state is recorded: the tail it no longer needs."""
        old = self.before.tail_key
        if old and old != self._new_tail:
            _quietly(self._chunks.delete, old)

    def discard(self) -> None:
        """The commit did not happen: what this writer made that no state records (its tail
        object, a multipart upload it started)."""
        self._give_back()
        if self._new_tail:
            _quietly(self._chunks.delete, self._new_tail)
        if self._upload_id and self._upload_id != self.before.upload_id and self.target:
            _quietly(self._chunks.abort, self.target.key, self._upload_id)


class ResumableUploads:
    """The store of resumable uploads over a part store (S3's or the local one)."""

    def __init__(self, chunks: ChunkStore) -> None:
        self.chunks = chunks
        self._buffers: dict[int, PartBuffers] = {}

    def buffers(self, part_size: int) -> PartBuffers:
        """The part buffers of one part size (an upload's part size is fixed at its creation)."""
        pool = self._buffers.get(part_size)
        if pool is None:
            pool = self._buffers.setdefault(part_size, PartBuffers(part_size, keep=SPARE_BUFFERS))
        return pool

    @staticmethod
    def partial_key(media_id: str) -> str:
        """Where a partial upload's bytes wait for its final upload (never served)."""
        return chunk_key(media_id, "whole")

    def read_partial(self, media_id: str) -> Iterator[bytes]:
        return self.chunks.read(self.partial_key(media_id))

    def partial_head(self, media_id: str, size: int) -> bytes:
        """A partial upload's first bytes, at least ``size`` of them if it has that many (what
        its final upload's type is sniffed from); read no further."""
        head = bytearray()
        for chunk in self.read_partial(media_id):
            head += chunk
            if len(head) >= size:
                break
        return bytes(head)

    def concatenate(
        self, target: Target, partials: list[tuple[str, int]], part_size: int
    ) -> Stored:
        """The finished partial uploads (media id, length), in order, as one object: part copies
        when every partial but the last is a valid part, else re-chunked through memory. Nothing
        is left of a join that fails."""
        upload_id = self.chunks.start(
            target.key,
            content_type=target.content_type,
            metadata=target.metadata,
            content_disposition=target.content_disposition,
        )
        try:
            parts = self._join(target.key, upload_id, partials, part_size)
            self.chunks.complete(target.key, upload_id, [(p.number, p.etag) for p in parts])
        except BaseException:
            _quietly(self.chunks.abort, target.key, upload_id)
            raise
        return Stored(parts=tuple(parts), upload_id=upload_id)

    def _join(
        self, key: str, upload_id: str, partials: list[tuple[str, int]], size: int
    ) -> list[CommittedPart]:
        parts: list[CommittedPart] = []
        if all(length >= S3_MIN_PART_SIZE for _, length in partials[:-1]):
            for number, (media_id, length) in enumerate(partials, start=1):
                etag = self.chunks.copy_part(key, upload_id, number, self.partial_key(media_id))
                parts.append(CommittedPart(number, etag, length))
            return parts
        buffer = bytearray()

        def part(data: bytes) -> None:
            number = len(parts) + 1
            parts.append(
                CommittedPart(
                    number, self.chunks.upload_part(key, upload_id, number, data), len(data)
                )
            )

        for media_id, _ in partials:
            for chunk in self.read_partial(media_id):
                buffer += chunk
                while len(buffer) >= size:
                    part(bytes(buffer[:size]))
                    del buffer[:size]
        if buffer or not parts:
            part(bytes(buffer))
        return parts

    def remove_partials(self, media_ids: list[str]) -> None:
        """After a final upload is recorded: its partials' bytes."""
        for media_id in media_ids:
            _quietly(self.chunks.delete, self.partial_key(media_id))

    def delete_object(self, key: str) -> None:
        _quietly(self.chunks.delete, key)

    def terminate(self, media_id: str, object_key: str, stored: Stored) -> None:
        """Everything an unfinished upload holds: its multipart upload, tail and partial object
        (raises the store's error: the caller leaves the rest to the sweeper)."""
        if stored.upload_id:
            self.chunks.abort(object_key, stored.upload_id)
        if stored.tail_key:
            self.chunks.delete(stored.tail_key)
        self.chunks.delete(self.partial_key(media_id))


def _quietly(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception:
        log.warning("a tus storage clean-up step failed; the sweeper will", exc_info=True)
