"""The resumable store's pieces that need no server: the writer's parts, tail and object on a
chunk store that records what it is sent (any split of the bytes, the type learnt late, buffers
reused), and what a final upload's type is sniffed from (a partial's first bytes)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.storage.resumable import (
    SPARE_BUFFERS,
    CommittedPart,
    ResumableUploads,
    ResumableWriter,
    Stored,
    Target,
    part_number,
)

PART = 16
TARGET = Target(key="k", content_type="image/png", content_disposition="inline", metadata={})


class Chunks:
    """A chunk store keeping copies of what it is sent (the writer reuses its buffers)."""

    def __init__(self, pieces: list[bytes] | None = None) -> None:
        self.pieces = pieces or []
        self.keys: list[str] = []
        self.served = 0
        self.objects: dict[str, bytes] = {}
        self.parts: dict[int, bytes] = {}
        self.calls: list[str] = []

    def read(self, key: str):
        self.keys.append(key)
        for piece in self.pieces:
            self.served += 1
            yield piece

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def put(self, key: str, data) -> None:
        self.calls.append(f"put {key}")
        self.objects[key] = bytes(data)

    def start(self, key: str, **_: object) -> str:
        self.calls.append("start")
        return "up-1"

    def upload_part(self, key: str, upload_id: str, number: int, data) -> str:
        self.calls.append(f"part {number}")
        self.parts[number] = bytes(data)
        return f"etag-{number}"

    def complete(self, key: str, upload_id: str, parts) -> None:
        self.calls.append("complete")
        self.objects[key] = b"".join(self.parts[number] for number, _ in parts)

    def put_object(self, key: str, data, **_: object) -> None:
        self.calls.append("put_object")
        self.objects[key] = bytes(data)

    def delete(self, key: str) -> None:
        self.calls.append(f"delete {key}")

    def abort(self, key: str, upload_id: str) -> None:
        self.calls.append("abort")


def writer(uploads: ResumableUploads, stored: Stored = Stored(), target=TARGET) -> ResumableWriter:
    return ResumableWriter(
        uploads, "m1", stored, part_size=PART, generation=0, guard=lambda: None, target=target
    )


def write_split(w: ResumableWriter, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        w.write(bytearray(data[start:cut]))
        start = max(start, cut)


@given(st.binary(min_size=1, max_size=100), st.lists(st.integers(0, 100), max_size=8))
def test_any_split_of_the_bytes_is_stored_exactly_in_whole_parts(data, cuts):
    chunks = Chunks()
    uploads = ResumableUploads(chunks)
    w = writer(uploads)
    write_split(w, data, cuts)
    stored = w.commit(final=True, version=2)
    assert chunks.objects["k"] == data
    whole, rest = divmod(len(data), PART)
    if whole == 0:  # shorter than a part: one object, no multipart upload
        assert chunks.calls == ["put_object"] and stored.parts == ()
    else:
        sizes = [PART] * whole + ([rest] if rest else [])
        assert [p.size for p in stored.parts] == sizes
        assert [p.number for p in stored.parts] == [part_number(i, 0) for i in range(len(sizes))]
        assert chunks.calls == ["start", *(f"part {p.number}" for p in stored.parts), "complete"]
    assert (stored.tail_key, stored.tail_size, w.buffered) == ("", 0, 0)


@given(st.binary(min_size=1, max_size=60), st.lists(st.integers(0, 60), max_size=6))
def test_a_request_leaves_its_tail_and_the_next_one_goes_on_from_it(data, cuts):
    chunks = Chunks()
    uploads = ResumableUploads(chunks)
    first = writer(uploads)
    write_split(first, data, cuts)
    stored = first.commit(final=False, version=3)
    whole, rest = divmod(len(data), PART)
    assert [p.size for p in stored.parts] == [PART] * whole
    assert stored.tail_size == rest
    assert stored.tail_key == ("" if not rest else ".tus/m1/pending-3")
    if rest:
        assert chunks.objects[stored.tail_key] == data[whole * PART :]
    second = writer(uploads, stored)
    assert second.buffered == rest
    second.write(b"!" * 5)
    second.commit(final=True, version=4)
    assert chunks.objects["k"] == data + b"!" * 5


def test_before_the_type_is_known_nothing_is_sent_and_the_head_is_the_first_bytes():
    chunks = Chunks()
    w = writer(ResumableUploads(chunks), target=None)
    data = bytes(range(50))
    w.write(data)  # three whole parts and two bytes, held
    assert chunks.calls == [] and w.buffered == 50
    assert w.head(20) == data[:20] and w.head(4) == data[:4]
    with pytest.raises(ValueError, match="target is needed"):
        w.commit(final=True, version=2)
    w.target = TARGET
    w.write(b"")
    assert chunks.calls == ["start", "part 1", "part 9", "part 17"]
    w.commit(final=True, version=2)
    assert chunks.objects["k"] == data


def test_the_head_of_an_upload_with_parts_is_empty_and_of_a_short_one_its_bytes():
    chunks = Chunks()
    w = writer(ResumableUploads(chunks), Stored(parts=(CommittedPart(1, "e", PART),)), None)
    w.write(b"abc")
    assert w.head(8) == b""
    short = writer(ResumableUploads(chunks), target=None)
    assert short.head(8) == b""
    short.write(b"abc")
    assert short.head(8) == b"abc" and short.head(2) == b"ab"


def test_part_buffers_are_reused_and_given_back_by_commit_and_discard():
    chunks = Chunks()
    uploads = ResumableUploads(chunks)
    pool = uploads.buffers(PART)
    assert uploads.buffers(PART) is pool and uploads.buffers(2 * PART) is not pool
    taken: list[bytearray] = []
    take = pool.take
    pool.take = lambda: taken.append(take()) or taken[-1]  # type: ignore[method-assign]
    w = writer(uploads)
    w.write(b"a" * (PART * 3 + 1))  # each part sent at once: one buffer for all four
    assert len(taken) == 4 and len({id(b) for b in taken}) == 1 and pool._free == []
    w.commit(final=False, version=2)  # the tail's buffer goes back
    assert pool._free == [taken[0]]
    again = writer(uploads, target=None)
    again.write(b"b" * (PART * 2))  # held (no target): the spare one and a new one
    assert pool._free == [] and len(taken) == 6 and taken[4] is taken[0]
    again.discard()
    assert [id(b) for b in pool._free] == [id(taken[0]), id(taken[5])]
    for _ in range(SPARE_BUFFERS + 2):
        pool.give(bytearray(PART))
    assert len(pool._free) == SPARE_BUFFERS  # the pool keeps a few, no more


def test_a_partials_head_is_its_first_pieces_up_to_the_size_and_no_more_is_read():
    chunks = Chunks([b"abc", b"def", b"ghi", b"jkl"])
    uploads = ResumableUploads(chunks)
    assert uploads.partial_head("m1", 5) == b"abcdef"  # whole pieces, at least the size
    assert chunks.keys == [ResumableUploads.partial_key("m1")] and chunks.served == 2
    exact = Chunks([b"abc", b"def", b"ghi"])
    assert ResumableUploads(exact).partial_head("m1", 6) == b"abcdef" and exact.served == 2


def test_a_partial_shorter_than_the_size_is_read_whole():
    chunks = Chunks([b"ab", b"c"])
    assert ResumableUploads(chunks).partial_head("m1", 100) == b"abc"
    assert chunks.served == 2
